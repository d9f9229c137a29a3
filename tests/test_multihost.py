"""Multi-host for real: 2 processes × 1 CPU device (jax.distributed, gloo collectives) against
1 process × 2 devices, through the CLI: same parameters, eval bpd and samples; checkpoints of
either restore in the other."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=configs/digits.py:smoke"
FLAGS = os.environ.get("XLA_FLAGS", "")  # the suite's own (tests/conftest.py), kept


def _env(devices: int) -> dict:
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{FLAGS} --xla_force_host_platform_device_count={devices}".strip(),
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_process(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "vdm.main", SMOKE, *args],
        cwd=ROOT,
        env=_env(2),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def two_processes(*args):
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vdm.main",
                SMOKE,
                *args,
                f"--coordinator=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],  # fmt: skip
            cwd=ROOT,
            env=_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return outs


def params_at(workdir, step):
    """The saved state, resharded onto this test process's devices (as `Run.restore` does)."""
    from vdm import session
    from vdm.configs import digits

    return session.Run(digits.get_config("smoke"), str(workdir)).restore(step=step)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    single, multi = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("multi")
    one_process(f"--workdir={single}")
    two_processes(f"--workdir={multi}")
    return single, multi


def test_two_hosts_train_like_two_local_devices(runs):
    single, multi = runs
    a, b = params_at(single, 6), params_at(multi, 6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    ea = json.load(open(single / "eval_final.json"))
    eb = json.load(open(multi / "eval_final.json"))
    np.testing.assert_allclose(ea["bpd"], eb["bpd"], rtol=1e-5)
    assert ea["n"] == eb["n"]
    sa = np.load(single / "samples" / "step_00000006.npz")["samples"]
    sb = np.load(multi / "samples" / "step_00000006.npz")["samples"]
    np.testing.assert_array_equal(sa, sb)
    # only process 0 wrote: one metrics row per log step, one sample file per eval
    steps = [json.loads(ln)["step"] for ln in open(multi / "metrics.jsonl")]
    assert steps == [2, 4, 6, 6]
    assert sorted(os.listdir(multi / "samples")) == ["step_00000006.npz", "step_00000006.png"]


def test_checkpoints_restore_across_process_counts(runs):
    single, multi = runs
    one_process(f"--workdir={multi}", "--mode=eval")
    two_processes(f"--workdir={single}", "--mode=eval")
    ea = json.load(open(multi / "eval_step_6.json"))
    eb = json.load(open(single / "eval_step_6.json"))
    np.testing.assert_allclose(ea["bpd"], eb["bpd"], rtol=1e-5)
