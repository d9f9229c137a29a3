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


def _launch(*args):
    """Two processes of the CLI, one CPU device each, joined by jax.distributed."""
    port = _free_port()
    return [
        subprocess.Popen(
            [sys.executable, "-m", "vdm.main", SMOKE, *args, f"--coordinator=127.0.0.1:{port}"]
            + ["--num_processes=2", f"--process_id={i}"],
            cwd=ROOT,
            env=_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def two_processes(*args):
    procs = _launch(*args)
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return outs


def params_at(workdir, step):
    """The saved state, resharded onto this test process's devices (as `Run.restore` does)."""
    from vdm.configs import digits
    from vdm.run import session

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


def test_two_hosts_walk_back_to_the_same_step_past_a_damaged_one(runs, tmp_path):
    """Step 6's array files are truncated: every process fails to read it, both restore step 4
    (they agree on each step they try), and process 0 moves step 6 aside."""
    import shutil

    _, multi = runs
    d = tmp_path / "multi"
    shutil.copytree(multi, d, ignore=shutil.ignore_patterns("eval_step_*.json"))
    step_dir = d / "checkpoints" / "6"
    for root, _, files in os.walk(step_dir):
        for f in files:
            if f"{os.sep}d" in root and root.endswith(f"{os.sep}d"):
                path = os.path.join(root, f)
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 3)
    outs = two_processes(f"--workdir={d}")  # training: the finished run resumes from step 4
    assert all("Traceback" not in err for _, err in outs)
    warnings = [ln for _, err in outs for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "step 6" in warnings[0]  # process 0 says it, once
    assert "restored step 4" in warnings[0]
    assert os.path.isdir(d / "checkpoints" / "corrupt" / "6")
    assert all("starting at step 4" in out for out, _ in outs[:1])
    assert json.load(open(d / "eval_final.json"))["step"] == 6


def test_two_hosts_stop_at_the_same_step_when_one_is_signalled(tmp_path):
    """SIGTERM reaches process 1 only: both stop at the step they agree on, save it together
    and exit 143."""
    import signal
    import time

    from vdm.run import metrics as metrics_writer

    d = tmp_path / "run"
    procs = _launch(
        f"--workdir={d}",
        "--config.training.num_steps=100000",
        "--config.training.log_every=20",
        "--config.training.save_every=100000",
        "--config.training.eval_every=100000",
    )
    deadline = time.time() + 300
    while not metrics_writer.read_rows(str(d / "metrics.jsonl")):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 143, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    last = outs[0][1].strip().splitlines()[-1]
    assert "; saved; rerun the same command to resume" in last, last
    step = int(last.split("preempted at step ")[1].split()[0])
    assert f"preempted at step {step} " in outs[1][1].strip().splitlines()[-1]
    assert [int(s) for s in os.listdir(d / "checkpoints") if s.isdigit()] == [step]
