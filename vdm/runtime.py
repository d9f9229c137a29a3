"""XLA:CPU runtime defaults, applied when `vdm` is imported, before JAX starts its backends.

The jaxlib this project pins (0.10) hands convolutions on CPU to YNNPACK by default; on the
ScoreUNet that path runs a 3×3 convolution's forward and backward 2–3× slower than XLA's own
(Eigen) convolution, and the whole train step 1.2–2.1× slower (digits 1.2×, Fashion-MNIST
1.7×, the CIFAR ScoreUNet 2.1×; `python experiments/bench_train.py`, run with and without the
flag). So `vdm` removes convolutions from XLA:CPU's YNNPACK fusions; everything else keeps
XLA's defaults. XLA reads `XLA_FLAGS` once, when the first backend starts, so the flag takes
effect only if `vdm` is imported before any JAX computation runs (the entry points, tests,
notebooks and benchmarks all do). Accelerator backends ignore `xla_cpu_*` flags.

Opt out with `VDM_XLA_CPU_DEFAULTS=0`; a value the user already gives the same flag in
`XLA_FLAGS` wins. An unknown flag makes XLA abort, so the flag is set only for the jaxlib
versions it was measured on (`MEASURED_JAXLIB`).
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
    the flags added ({} when opted out, on another jaxlib, or once a backend has started)."""
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return {}
    version = _jaxlib_version()
    if version is None or not MEASURED_JAXLIB[0] <= version < MEASURED_JAXLIB[1]:
        return {}
    if _backends_started():
        return {}
    current = environ.get("XLA_FLAGS", "")
    added = {k: v for k, v in CPU_FLAGS.items() if f"--{k}=" not in current}
    if added:
        extra = " ".join(f"--{k}={v}" for k, v in added.items())
        environ["XLA_FLAGS"] = f"{current} {extra}".strip()
    return added
