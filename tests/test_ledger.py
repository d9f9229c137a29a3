"""Evals that survive interruption (vdm/eval/ledger.py): per-example results kept as they are
made, a stopped ELBO or PF-ODE eval continued by a rerun to the number an uninterrupted run
gives, from the library and from the command line (Ctrl-C)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vdm.configs import digits
from vdm.run.session import Run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = 7


class Stop(Exception):
    """Stands for a preemption or a crash in the middle of an eval."""


def stopping_after(fn, calls: int):
    """`fn`, which raises `Stop` on its call number `calls` + 1."""
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        if count["n"] == calls:
            raise Stop
        count["n"] += 1
        return fn(*args, **kwargs)

    return wrapped


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    c = digits.get_config("smoke")
    c.eval.batch_size = 16
    c.eval.repeats = 2
    c.eval.pf_ode_examples = 12
    c.eval.pf_ode_batch_size = 4
    c.eval.pf_ode_rtol = c.eval.pf_ode_atol = 1e-3
    r = Run(c, str(tmp_path_factory.mktemp("ledger_run")))
    return r, r.fresh_state().ema_params


def chunks(directory):
    return sorted(glob.glob(os.path.join(directory, "chunk_*.npz")))


def test_a_stopped_elbo_eval_continues_to_the_uninterrupted_number(run, tmp_path):
    r, params = run
    n_batches = -(-len(r.test_split) // r.config.eval.batch_size)
    assert n_batches >= 3
    r.workdir = str(tmp_path / "whole")
    whole = r.evaluate(params, STEP)
    assert len(chunks(whole["elbo_record"]["records"])) == 2 * n_batches  # two repeats
    assert whole["elbo_record"]["resumed_batches"] == 0

    r.workdir = str(tmp_path / "stopped")
    step_fn = r.eval_step
    r.__dict__["eval_step"] = stopping_after(step_fn, n_batches + 1)  # inside repeat 2
    with pytest.raises(Stop):
        r.evaluate(params, STEP)
    r.__dict__["eval_step"] = step_fn
    records = os.path.join(r.workdir, "eval_records")
    (directory,) = glob.glob(os.path.join(records, "elbo_step7_*"))
    assert len(chunks(directory)) == n_batches + 1
    calls = {"n": 0}

    def counted(*args):
        calls["n"] += 1
        return step_fn(*args)

    r.__dict__["eval_step"] = counted
    again = r.evaluate(params, STEP)
    r.__dict__["eval_step"] = step_fn
    assert calls["n"] == n_batches - 1  # only what the stopped run had not done
    assert again["elbo_record"]["resumed_batches"] == n_batches + 1
    for k in ("bpd", "bpd_se", "recon", "prior", "diffusion"):
        np.testing.assert_allclose(again[k], whole[k], rtol=1e-12)
    assert again["n"] == whole["n"] == 2 * len(r.test_split)

    # Without a step (the train loop's evals) nothing is kept; another seed is another eval.
    r.workdir = str(tmp_path / "none")
    r.evaluate(params)
    assert not os.path.exists(os.path.join(r.workdir, "eval_records"))


def test_a_damaged_chunk_is_computed_again_and_another_eval_never_reads_them(run, tmp_path):
    r, params = run
    r.workdir = str(tmp_path)
    first = r.evaluate(params, STEP)
    directory = first["elbo_record"]["records"]
    with open(chunks(directory)[0], "r+b") as f:
        f.truncate(40)
    again = r.evaluate(params, STEP)
    assert again["elbo_record"]["resumed_batches"] == 0  # the leading chunk was damaged
    np.testing.assert_allclose(again["bpd"], first["bpd"], rtol=1e-12)
    other = r.evaluate(params, STEP + 1)  # another checkpoint: its own records
    assert other["elbo_record"]["records"] != directory
    spec = json.load(open(os.path.join(directory, "spec.json")))
    assert spec["checkpoint_step"] == STEP and spec["batch_size"] == 16
    assert spec["estimator"] == "elbo" and len(spec["params_fingerprint"]) == 16


def test_a_stopped_pf_ode_eval_continues_to_the_uninterrupted_number(run, tmp_path):
    r, params = run
    r.workdir = str(tmp_path / "whole")
    whole = r.evaluate_pf_ode(params, STEP)
    assert len(chunks(whole["pf_ode_record"]["records"])) == 3
    r.workdir = str(tmp_path / "stopped")
    fn = r.pf_ode_step()
    key = next(iter(r._pf_ode_steps))
    r._pf_ode_steps[key] = stopping_after(fn, 2)
    with pytest.raises(Stop):
        r.evaluate_pf_ode(params, STEP)
    r._pf_ode_steps[key] = fn
    again = r.evaluate_pf_ode(params, STEP)
    assert again["pf_ode_record"]["resumed_batches"] == 2
    for k in ("pf_ode_bpd", "pf_ode_bpd_se", "pf_ode_nfe_mean", "pf_ode_nfe_max"):
        np.testing.assert_allclose(again[k], whole[k], rtol=1e-12)


def vdm_eval(workdir, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vdm.main",
            "--mode=eval",
            "--config=digits:smoke",
            f"--workdir={workdir}",
            "--config.eval.batch_size=8",
            "--config.eval.repeats=15",
            *extra,
        ],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_in_an_eval_from_the_cli_then_a_rerun_gives_the_same_number(tmp_path):
    """Train a checkpoint, evaluate it uninterrupted; evaluate it again, Ctrl-C once chunks are
    on disk (exit 130, one line), rerun: the same bpd, the stopped part read back."""
    workdir = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "vdm.main", "--config=digits:smoke", f"--workdir={workdir}"],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    out, _ = vdm_eval(workdir).communicate(timeout=600)
    whole = json.loads(open(glob.glob(str(workdir / "eval_step_*.json"))[0]).read())
    records = whole["elbo_record"]["records"]
    assert f"per-example results: {records}" in out
    os.rename(records, records + ".whole")

    proc = vdm_eval(workdir)
    deadline = time.time() + 300
    while len(chunks(records)) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    stopped = len(chunks(records))
    assert 3 <= stopped < len(chunks(records + ".whole"))

    out, err = vdm_eval(workdir).communicate(timeout=600)
    assert "batches were done by an earlier run" in out, err[-2000:]
    results = sorted(glob.glob(str(workdir / "eval_step_*.json")), key=os.path.getmtime)
    again = json.loads(open(results[-1]).read())
    assert again["elbo_record"]["resumed_batches"] >= stopped
    np.testing.assert_allclose(again["bpd"], whole["bpd"], rtol=1e-12)
    np.testing.assert_allclose(again["bpd_se"], whole["bpd_se"], rtol=1e-12)


def test_chunks_of_other_examples_are_not_resumed_and_a_failed_write_is_one_warning(
    run, tmp_path, capsys
):
    """A chunk whose indices are not the batch's is computed again; a directory that cannot
    be written costs the kept results, not the eval."""
    r, params = run
    r.workdir = str(tmp_path / "a")
    first = r.evaluate(params, STEP)
    directory = first["elbo_record"]["records"]
    path = chunks(directory)[0]
    with np.load(path) as f:
        rows = dict(f)
    rows["index"] = rows["index"] + 1
    np.savez(path, **rows)
    again = r.evaluate(params, STEP)
    assert again["elbo_record"]["resumed_batches"] == 0
    np.testing.assert_allclose(again["bpd"], first["bpd"], rtol=1e-12)
    r.workdir = str(tmp_path / "b")
    os.makedirs(r.workdir)
    with open(os.path.join(r.workdir, "eval_records"), "w") as f:  # a file where a folder goes
        f.write("not a folder")
    result = r.evaluate(params, STEP)
    assert "cannot keep eval results" in capsys.readouterr().err
    np.testing.assert_allclose(result["bpd"], first["bpd"], rtol=1e-12)
    assert "records" not in result["elbo_record"]
