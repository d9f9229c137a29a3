"""What this CPU and this numpy are, as far as they change a computation's bits: the
instruction-set level XLA:CPU can compile for, the model, and numpy's run-time SIMD dispatch.
Read by the .vdmz platform record (fingerprint.py) and by compress.portable (portable.py)."""

from __future__ import annotations

import platform

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


def model() -> str:
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
