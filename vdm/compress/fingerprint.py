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
from vdm.compress import portable

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

# XLA:CPU's x86 instruction-set levels (its --xla_cpu_max_isa values), lowest first, and the
# /proc/cpuinfo flags each needs beyond the one before.
ISA_LEVELS = ("SSE4_2", "AVX", "AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX", "AMX_FP16")
_ISA_FLAGS = {
    "SSE4_2": {"sse4_2"},
    "AVX": {"avx"},
    "AVX2": {"avx2", "fma"},
    "AVX512": {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"},
    "AVX512_VNNI": {"avx512_vnni"},
    "AVX512_BF16": {"avx512_bf16"},
    "AMX": {"amx_tile", "amx_int8", "amx_bf16"},
    "AMX_FP16": {"amx_fp16"},
}

# XLA flags that only dump, profile, place files or count host devices: left out of the record.
INERT = (
    "xla_dump_",
    "xla_gpu_dump_",
    "xla_enable_dumping",
    "xla_hlo_profile",
    "xla_force_host_platform_device_count",
    "xla_gpu_cuda_data_dir",
)
# Flags of one backend, which the others ignore.
_BACKEND_FLAGS = {"cpu": "xla_cpu_", "gpu": "xla_gpu_"}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_level(cpu_flags: set[str]) -> str | None:
    """The highest of `ISA_LEVELS` whose flags (and every lower level's) a CPU has."""
    level = None
    for name in ISA_LEVELS:
        if not _ISA_FLAGS[name] <= cpu_flags:
            break
        level = name
    return level


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_isa() -> str | None:
    """This CPU's instruction-set level (x86-64), or its architecture and features elsewhere."""
    if platform.machine() in ("x86_64", "AMD64"):
        return isa_level(_cpuinfo_flags())
    return " ".join([platform.machine(), *sorted(_cpuinfo_flags())])


def _umath():
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # numpy 1.x
        from numpy.core import _multiarray_umath as umath
    return umath


def numpy_dispatch() -> list[str]:
    """The CPU features numpy's kernels dispatch on at run time (its build's targets)."""
    return list(_umath().__cpu_dispatch__)


def numpy_simd() -> list[str]:
    """numpy's run-time dispatch targets enabled here (NPY_DISABLE_CPU_FEATURES removes some)."""
    umath = _umath()
    return [f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)]


def numeric_xla_flags(xla_flags: str, backend: str) -> list[str]:
    """The entries of an XLA_FLAGS value that can change this backend's numbers, sorted; of a
    flag given twice, the last (as XLA reads them); a bare `--flag` reads `--flag=true`."""
    flags = {}
    for entry in xla_flags.split():
        name, eq, value = entry.lstrip("-").partition("=")
        flags[name] = value if eq else "true"
    other = tuple(p for b, p in _BACKEND_FLAGS.items() if b != backend)
    keep = {k: v for k, v in flags.items() if not k.startswith(INERT + other)}
    return [f"--{k}={v}" for k, v in sorted(keep.items())]


def current(environ=os.environ) -> dict:
    """The fingerprint of the platform this process computes ε̂ on (jax's default device)."""
    backend = jax.default_backend()
    cpu_defaults = cpu_isa = cpu_threads = None
    pinned = portable.in_effect(environ)
    if backend == "cpu":
        cpu_isa = portable.ISA if pinned else host_isa()
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
        "numpy_simd": numpy_simd(),
        "libc": " ".join(platform.libc_ver()).strip() or None,
        "portable": pinned,
        "vdm_xla_cpu_defaults": cpu_defaults,
        "cpu": _cpu_model(),
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
