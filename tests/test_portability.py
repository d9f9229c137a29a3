"""Where a .vdmz file decodes (vdm/compress/fingerprint.py, vdm/compress/portable.py): a file
records what changes ε̂'s bits on this kind of machine and is refused before decoding where
any of it differs; a file written with `compress.portable` decodes bit-exactly whatever this
machine lets a decoder vary (its cores, the XLA flags it was started with, numpy's kernels).
Through the command line, in subprocesses: the pins hold only from a process's start."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vdm.compress import api, container, cpu, fingerprint, portable
from vdm.compress.container import CompressError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=digits:smoke"
CPUS = sorted(os.sched_getaffinity(0))
PORTABLE_HERE = portable.ISA in cpu.ISA_LEVELS and (
    cpu.host_isa() in cpu.ISA_LEVELS
    and cpu.ISA_LEVELS.index(cpu.host_isa()) >= cpu.ISA_LEVELS.index(portable.ISA)
)


def cli(*args, env=None, cpus=None):
    """The CLI in a subprocess, with `env` added to this environment and bound to `cpus`."""
    full = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    full.pop(portable.MARK, None)
    return subprocess.run(
        [sys.executable, "-m", "vdm.main", SMOKE, *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """digits:smoke trained 6 steps (ε̂ away from the init's zero output), 12 test images."""
    root = tmp_path_factory.mktemp("portability")
    proc = cli(f"--workdir={root / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from sklearn.datasets import load_digits

    np.savez(root / "images.npz", images=load_digits().images[-12:].astype(np.uint8)[..., None])
    return root


def compress(root, name, *args, cpus=None, env=None):
    proc = cli(
        f"--workdir={root / 'run'}",
        "--mode=compress",
        f"--input={root / 'images.npz'}",
        f"--output={root / name}",
        "--config.compress.steps=40",
        "--config.compress.batch_size=4",
        *args,
        cpus=cpus,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return container.read(str(root / name))[0]


def decompress(root, name, out, cpus=None, env=None):
    return cli(
        f"--workdir={root / 'run'}",
        "--mode=decompress",
        f"--input={root / name}",
        f"--output={root / out}",
        cpus=cpus,
        env=env,
    )


def test_a_file_is_refused_before_decoding_where_its_bits_would_differ(run):
    """The threads and the instruction set XLA:CPU compiles for are in the record: another
    core count, or XLA capped at AVX2 (what an AVX2-only CPU runs), is one line before any
    decoding, naming both sides, and writes nothing."""
    refusals = [({"XLA_FLAGS": "--xla_cpu_max_isa=AVX"}, None, "--xla_cpu_max_isa=AVX here")]
    if len(CPUS) > 1:  # written on every core here, decoded on one
        refusals.append(({}, {CPUS[0]}, f"XLA:CPU threads {len(CPUS)} in the file, 1 here"))
    header = compress(run, "default.vdmz")
    assert header["platform"]["cpu_threads"] == len(CPUS) and not header["platform"]["portable"]
    for env, cpus, needle in refusals:
        proc = decompress(run, "default.vdmz", "refused.npz", cpus=cpus, env=env)
        assert proc.returncode == 1, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert "was compressed on another platform" in lines[0] and needle in lines[0], lines
        assert "compress.portable=True" in lines[0]
        assert not os.path.exists(run / "refused.npz")
    proc = decompress(run, "default.vdmz", "same.npz")  # the same platform: exact
    assert proc.returncode == 0, proc.stderr[-3000:]
    images = np.load(run / "images.npz")["images"]
    np.testing.assert_array_equal(np.load(run / "same.npz")["images"], images)


def test_a_portable_file_decodes_whatever_the_decoder_varies(run):
    """Written on every core under the user's XLA flags; decoded exactly on one core, on
    another, and under XLA flags and numpy settings that change a default file's bits. On a
    CPU below x86-64 AVX2 (or not x86), compress.portable is one line and writes nothing."""
    if not PORTABLE_HERE:
        proc = cli(
            f"--workdir={run / 'run'}",
            "--mode=compress",
            f"--input={run / 'images.npz'}",
            f"--output={run / 'p.vdmz'}",
            "--config.compress.portable=True",
        )
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "compress.portable" in proc.stderr and not os.path.exists(run / "p.vdmz")
        return
    env = {"XLA_FLAGS": "--xla_cpu_max_isa=AVX512"}  # the user's own flag: the pins replace it
    header = compress(run, "portable.vdmz", "--config.compress.portable=True", env=env)
    record = header["platform"]
    assert record["portable"] is True and record["cpu_threads"] == 1
    assert record["cpu_isa"] == "AVX2" and record["backend"] == "cpu"
    assert record["xla_flags"] == sorted(portable.XLA_PINS)
    assert "X86_V4" not in record["numpy_simd"]
    images = np.load(run / "images.npz")["images"]
    settings = [
        ({}, None),  # the test session's XLA flags (an optimisation level)
        ({}, {CPUS[-1]}),
        ({"XLA_FLAGS": "--xla_cpu_max_isa=AVX"}, None),
        ({"VDM_XLA_CPU_DEFAULTS": "0", "NPY_DISABLE_CPU_FEATURES": ""}, None),
    ]
    for i, (env, cpus) in enumerate(settings):
        proc = decompress(run, "portable.vdmz", f"back{i}.npz", cpus=cpus, env=env)
        assert proc.returncode == 0, (env, cpus, proc.stderr[-3000:])
        np.testing.assert_array_equal(np.load(run / f"back{i}.npz")["images"], images)


def test_a_portable_file_is_refused_in_a_process_without_the_pins(run, tmp_path):
    """In Python (no re-execution), coding or decoding `portable` says how to get the pins."""
    import ml_collections

    cfg = ml_collections.ConfigDict({"portable": True, "steps": 4, "latent_bits": 2})
    with pytest.raises(CompressError, match="needs this process to start under its pins"):
        api.codec_from_config(None, None, (8, 8, 1), cfg)
    header = {"format_version": 1, "platform": {**fingerprint.current(), "portable": True}}
    with pytest.raises(CompressError, match="was written with compress.portable"):
        api.check_platform(header, "x.vdmz")


# Flags of /proc/cpuinfo on a few CPUs (the instruction-set part of each line).
HASWELL = {"sse4_2", "avx", "avx2", "fma"}
SKYLAKE_X = HASWELL | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
ZEN4 = SKYLAKE_X | {"avx512_vnni", "avx512_bf16", "avx512ifma"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_int8", "amx_bf16"}


@pytest.mark.parametrize(
    "flags, level",
    [
        (HASWELL, "AVX2"),
        (HASWELL - {"fma"}, "AVX"),
        (SKYLAKE_X, "AVX512"),
        (SKYLAKE_X - {"avx512vl"}, "AVX2"),
        (ZEN4, "AVX512_BF16"),
        (SAPPHIRE_RAPIDS, "AMX"),
        ({"sse4_2"}, "SSE4_2"),
        (set(), None),
    ],
)
def test_isa_level_of_known_cpus(flags, level):
    assert cpu.isa_level(flags) == level


def test_another_instruction_set_or_core_count_is_a_numeric_difference():
    here = fingerprint.current()
    for key, other in (("cpu_isa", "AVX2"), ("cpu_threads", 64), ("numpy_simd", ["X86_V3"])):
        if here[key] == other:
            other = "another"
        numeric, info = fingerprint.differences({**here, key: other}, here)
        assert len(numeric) == 1 and not info, (key, numeric, info)
    # a file from before these fields: informational only
    older = {k: v for k, v in here.items() if k not in ("cpu_isa", "cpu_threads", "portable")}
    numeric, info = fingerprint.differences(older, here)
    assert not numeric and len(info) == 3


def test_an_empty_xla_flag_value_is_kept_as_given():
    flags = fingerprint.numeric_xla_flags(
        "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_enable_fast_math", "cpu"
    )
    assert flags == [
        "--xla_cpu_enable_fast_math=true",
        "--xla_cpu_experimental_ynn_fusion_type=",
    ]
    assert json.loads(json.dumps(flags)) == flags
