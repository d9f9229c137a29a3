"""The platform that computed ε̂: recorded in a .vdmz header and compared before decoding.

Bits-back decoding recomputes the encoder's ε̂(z_i; γ_i) at every step and needs the same
float32 bits; so do the host's float64 chain and constriction's quantised models. Any of
these can change them: the backend and device, the jax / jaxlib / numpy / constriction
versions, the XLA flags in effect (fusions, algorithms, optimisation passes; the ones that
only dump or profile, or belong to another backend, are left out), jax's matmul precision and
x64 mode; on CPU the instruction set (XLA compiles for it, and YNNPACK and numpy pick their
kernels by it at run time), XLA:CPU's thread count and numpy's SIMD dispatch (all three
measured to change the bits: vdm/compress/portable.py), and the C library (libm).
A file whose `NUMERIC` fields differ from the decoder's is refused before decoding.
The `INFORMATIONAL` ones may or may not change ε̂, so a difference there is one warning line
(decoding checks each chunk's CRC-32 and writes nothing if it goes wrong): the CPU model;
Python; and the `VDM_XLA_CPU_DEFAULTS` setting (vdm/runtime.py), whose effect is already in
the XLA flags it leaves in XLA_FLAGS. A field only one side records (a file written before
the field existed) is informational too.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

import jax
import jax.extend

from vdm import runtime
from vdm.compress import cpu, portable

NUMERIC = (
    "backend",
    "platform_version",
    "device_kind",
    "machine",
    "jax",
    "jaxlib",
    "numpy",
    "constriction",
    "xla_flags",
    "jax_matmul_precision",
    "jax_enable_x64",
    "cpu_isa",
    "cpu_threads",
    "numpy_simd",
    "libc",
    "portable",
)
INFORMATIONAL = ("vdm_xla_cpu_defaults", "cpu", "python")

# Flags of one backend, which the others ignore.
_BACKEND_FLAGS = {"cpu": "xla_cpu_", "gpu": "xla_gpu_"}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def numeric_xla_flags(xla_flags: str, backend: str) -> list[str]:
    """The entries of an XLA_FLAGS value that can change this backend's numbers, sorted; of a
    flag given twice, the last (as XLA reads them); a bare `--flag` reads `--flag=true`."""
    flags = {}
    for entry in xla_flags.split():
        name, eq, value = entry.lstrip("-").partition("=")
        flags[name] = value if eq else "true"
    other = tuple(p for b, p in _BACKEND_FLAGS.items() if b != backend)
    keep = {k: v for k, v in flags.items() if not k.startswith(portable.INERT_FLAGS + other)}
    return [f"--{k}={v}" for k, v in sorted(keep.items())]


def current(environ=os.environ) -> dict:
    """The fingerprint of the platform this process computes ε̂ on (jax's default device)."""
    backend = jax.default_backend()
    cpu_defaults = cpu_isa = cpu_threads = None
    pinned = portable.in_effect(environ)
    if backend == "cpu":
        host = cpu.host_isa()
        capped = host in cpu.ISA_LEVELS and cpu.ISA_LEVELS.index(host) >= cpu.ISA_LEVELS.index(
            portable.ISA
        )
        cpu_isa = portable.ISA if pinned and capped else host  # below AVX2: the CPU's own
        cpu_threads = len(os.sched_getaffinity(0))  # XLA:CPU's thread pool size
        opted_out = environ.get(runtime.OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off")
        cpu_defaults = "off" if opted_out else "on"
    return {
        "backend": backend,
        "platform_version": " ".join(jax.extend.backend.get_backend().platform_version.split()),
        "device_kind": jax.devices()[0].device_kind,
        "machine": platform.machine(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "numpy": _version("numpy"),
        "constriction": _version("constriction"),
        "xla_flags": numeric_xla_flags(environ.get("XLA_FLAGS", ""), backend),
        "jax_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "cpu_isa": cpu_isa,
        "cpu_threads": cpu_threads,
        "numpy_simd": cpu.numpy_simd(),
        "libc": " ".join(platform.libc_ver()).strip() or None,
        "portable": pinned,
        "vdm_xla_cpu_defaults": cpu_defaults,
        "cpu": cpu.model(),
        "python": platform.python_version(),
    }


# How a difference is named in the refusal's line.
_NAMES = {
    "cpu_isa": "CPU instruction set",
    "cpu_threads": "XLA:CPU threads",
    "numpy_simd": "numpy SIMD kernels",
    "portable": "compress.portable",
}


def _describe(key: str, recorded, here) -> str:
    if key == "xla_flags" and isinstance(recorded, list) and isinstance(here, list):
        only_file = " ".join(f for f in recorded if f not in here) or "none"
        only_here = " ".join(f for f in here if f not in recorded) or "none"
        return f"XLA flags {only_file} in the file, {only_here} here"
    return f"{_NAMES.get(key, key)} {_show(recorded)} in the file, {_show(here)} here"


def _show(value) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def differences(recorded: dict, here: dict) -> tuple[list[str], list[str]]:
    """(numeric, informational): one phrase per field that differs between two fingerprints;
    a field only one of them has (another vdm's record) is informational."""
    numeric, info = [], []
    for key in dict.fromkeys([*recorded, *here]):
        if recorded.get(key) == here.get(key):
            continue
        known = key in recorded and key in here
        (numeric if key in NUMERIC and known else info).append(
            _describe(key, recorded.get(key), here.get(key))
        )
    return numeric, info
