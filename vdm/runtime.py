"""XLA:CPU runtime defaults, applied when `vdm` is imported, before JAX starts its backends.

The jaxlib this project pins (0.10) hands convolutions on CPU to YNNPACK by default; on the
ScoreUNet that path runs convolutions and the whole train step slower than XLA's own (Eigen)
convolution (measured with and without the flag by `experiments/benchmarks/bench_train.py`; the
figures are on docs/benchmarks.md). So `vdm` removes convolutions from XLA:CPU's YNNPACK fusions;
everything else keeps XLA's defaults. XLA reads `XLA_FLAGS` once, when the first backend starts, so
the flag takes effect only if `vdm` is imported before any JAX computation runs (the entry points,
tests, notebooks and benchmarks all do). Accelerator backends ignore `xla_cpu_*` flags.

Opt out with `VDM_XLA_CPU_DEFAULTS=0`; a value the user already gives the same flag in
`XLA_FLAGS` wins. An unknown flag makes XLA abort, so the flag is set only for the jaxlib
versions it was measured on (`MEASURED_JAXLIB`).

It is not silent: `STATUS` records what happened, the command line prints one line when the
flag was added and the computation runs on CPU (`describe`), and `import vdm` warns once when
the flag could not be added because a JAX backend had already started.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

CPU_FLAGS = {
    # Convolutions through XLA's Eigen runtime instead of YNNPACK (see the module docstring).
    "xla_cpu_experimental_ynn_fusion_type": "-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
}
MEASURED_JAXLIB = ((0, 10), (0, 11))  # [lowest, highest) jaxlib (major, minor)
OPT_OUT = "VDM_XLA_CPU_DEFAULTS"
# What apply_cpu_defaults did: "added", "user" (XLA_FLAGS already sets it), "opted_out",
# "other_jaxlib", "late" (a backend had started) or "" (not called).
STATUS = ""


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def _backends_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def apply_cpu_defaults(environ=os.environ) -> dict[str, str]:
    """Adds `CPU_FLAGS` to `environ['XLA_FLAGS']` where the user has not set them; returns
    the flags added ({} when opted out, on another jaxlib, or once a backend has started).
    For the process's own environment it records which of these happened in `STATUS`."""
    global STATUS
    added, status = _apply(environ)
    if environ is os.environ:
        STATUS = status
    return added


def _apply(environ) -> tuple[dict[str, str], str]:
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return {}, "opted_out"
    version = _jaxlib_version()
    if version is None or not MEASURED_JAXLIB[0] <= version < MEASURED_JAXLIB[1]:
        return {}, "other_jaxlib"
    current = environ.get("XLA_FLAGS", "")
    added = {k: v for k, v in CPU_FLAGS.items() if f"--{k}=" not in current}
    if not added:
        return {}, "user"
    if _backends_started():
        return {}, "late"
    extra = " ".join(f"--{k}={v}" for k, v in added.items())
    environ["XLA_FLAGS"] = f"{current} {extra}".strip()
    return added, "added"


def describe(backend: str) -> str:
    """One line saying what `import vdm` did to XLA:CPU's flags, or "" where nothing applies
    (another backend, or the user's own setting)."""
    if backend != "cpu":
        return ""
    if STATUS == "added":
        return (
            "XLA:CPU: convolutions run outside YNNPACK (set by vdm.runtime on import; "
            f"{OPT_OUT}=0 turns it off)"
        )
    if STATUS == "late":
        return (
            "XLA:CPU: vdm's runtime defaults were not applied (a JAX backend had started "
            "before `import vdm`); XLA:CPU keeps convolutions in YNNPACK"
        )
    return ""
