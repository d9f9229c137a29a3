"""`compress.portable`: a .vdmz file that decodes on any x86-64 CPU with AVX2, not only on the
kind of machine that wrote it.

Decoding recomputes the encoder's float32 ε̂ and float64 chain bit for bit. On CPU these bits
depend on more than the software versions (measured on this project's machines; the figures
and commands are in docs/compression.md):
- the instruction set XLA:CPU compiles its fusions for (AVX-512 and AVX give other ε̂ bits);
- XLA:CPU's thread count: a convolution with few outputs (the ScoreUNet's last) is split along
  its inner dimension over the threads, so 1 and 2 cores sum in another order;
- libraries that pick their kernels from the CPU at run time, ignoring XLA's flags: YNNPACK
  (XLA:CPU's fusions) and numpy (float64 exp, expm1, log, tanh: AVX-512 and AVX2 kernels give
  other last bits).

`PINS` fixes each of these at a level every x86-64 CPU since 2013–15 has (x86-64-v3: AVX2,
FMA): XLA compiles for AVX2 and hands nothing to YNNPACK, numpy dispatches no AVX-512 kernel,
XLA:CPU runs one thread (the process is bound to one core), and JAX computes on the CPU (a GPU
or TPU computes ε̂ another way again). These must hold before numpy and JAX start, so the
command line re-executes itself under them (`reexec`); the file's header records that it was
written so, and its decoder pins the same way. The cost is speed: one core, and no AVX-512.
"""

from __future__ import annotations

import os
import platform
import sys

from vdm.compress import cpu

# XLA flags that only dump, profile, place files or count host devices: they change no number.
INERT_FLAGS = (
    "xla_dump_",
    "xla_gpu_dump_",
    "xla_enable_dumping",
    "xla_hlo_profile",
    "xla_force_host_platform_device_count",
    "xla_gpu_cuda_data_dir",
)
MARK = "VDM_COMPRESS_PORTABLE"  # set in the re-executed process: the pins are in effect
ISA = "AVX2"  # what XLA:CPU compiles for
XLA_PINS = ("--xla_cpu_max_isa=AVX2", "--xla_cpu_experimental_ynn_fusion_type=")


def numpy_disabled() -> str:
    """numpy's run-time dispatch targets above x86-64-v3 (AVX-512 and later), by this numpy's
    own names: "X86_V4 AVX512_ICL AVX512_SPR" for numpy 2.4, "AVX512F … AVX512_SPR" before."""
    return " ".join(f for f in cpu.numpy_dispatch() if f == "X86_V4" or f.startswith("AVX512"))


class PortableError(RuntimeError):
    """This machine or process cannot compute ε̂ the portable way; the message says why."""


def in_effect(environ=os.environ) -> bool:
    """Whether this process started under the pins (and still holds them)."""
    if environ.get(MARK) != "1":
        return False
    from vdm import runtime

    numpy_pinned = not (set(numpy_disabled().split()) & set(cpu.numpy_simd()))
    return (
        numpy_pinned  # numpy started under the pin (setting it later changes nothing)
        and runtime.STATUS != "late"  # and JAX had not started before `import vdm`
        and environ.get("XLA_FLAGS", "") == pinned_environ(environ)["XLA_FLAGS"]
        and environ.get("NPY_DISABLE_CPU_FEATURES", "") == numpy_disabled()
        and environ.get("JAX_PLATFORMS") == "cpu"
        and len(os.sched_getaffinity(0)) == 1
    )


def check_machine(isa: str | None) -> None:
    """Refuse a CPU below x86-64-v3 (or not x86-64) in one line."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise PortableError(
            f"compress.portable pins ε̂ to x86-64 with AVX2; this machine is "
            f"{platform.machine()}: code and decode without it, on one kind of machine"
        )
    if isa is None or cpu.ISA_LEVELS.index(isa) < cpu.ISA_LEVELS.index(ISA):
        raise PortableError(
            f"compress.portable needs an x86-64 CPU with AVX2 and FMA; this one has {isa}"
        )


def pinned_environ(environ=os.environ) -> dict:
    """`environ` with the pins: XLA_FLAGS holds exactly `XLA_PINS` and the user's flags that
    cannot change a number (dumps, profiles, the host device count); every other flag the
    user gave (an optimisation level, fast math) would change ε̂, so it is dropped."""
    env = dict(environ)
    inert = [f for f in env.get("XLA_FLAGS", "").split() if f.lstrip("-").startswith(INERT_FLAGS)]
    env["XLA_FLAGS"] = " ".join([*inert, *XLA_PINS])
    env["NPY_DISABLE_CPU_FEATURES"] = numpy_disabled()
    env["JAX_PLATFORMS"] = "cpu"
    env[MARK] = "1"
    # the child imports the same vdm as this process, wherever it is started from
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def reexec(argv: list[str]) -> None:
    """Replace this process by `python -m vdm.main argv…` under the pins, bound to one core
    (its first allowed one). Returns only if the pins already hold."""
    check_machine(cpu.host_isa())
    if in_effect():
        return
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[os.getpid() % len(cpus)]})  # jobs side by side: other cores
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "vdm.main", *argv], pinned_environ())
