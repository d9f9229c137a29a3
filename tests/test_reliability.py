"""No run loses a good checkpoint; every user mistake is one clear line (issue: reliability).

The table-driven test runs each mistake through the CLI in a subprocess and checks: exit code
≠ 0, no traceback, a last line that names the field or file, and that nothing already written
(checkpoints, metrics lines, config.json) was lost or changed.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from vdm import health, metrics_writer, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=configs/digits.py:smoke"


def vdm_main(*args, config=SMOKE):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "vdm.main", config, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def snapshot(run_dir) -> dict:
    """A digest of everything a run wrote that must survive a failed command."""
    out = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, run_dir)
            if rel.startswith(("tb", "samples")) or name == ".lock":
                continue
            with open(path, "rb") as f:
                out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 6-step digits smoke run (checkpoints 2, 4, 6), copied per test."""
    d = tmp_path_factory.mktemp("finished")
    proc = vdm_main(f"--workdir={d}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


@pytest.fixture
def run_dir(finished, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(finished, d)
    return d


def assert_one_clear_line(proc, *needles):
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    for n in needles:
        assert n in last, (n, last)
    return last


# ---- The table of user mistakes. ----


def test_config_typo_suggests_the_field(run_dir):
    before = snapshot(run_dir)
    proc = vdm_main(f"--workdir={run_dir}", "--config.training.nmu_steps=5")
    assert_one_clear_line(proc, "training.nmu_steps", "num_steps")
    assert snapshot(run_dir) == before


def test_changed_model_shape_is_refused_before_anything_is_written(run_dir):
    before = snapshot(run_dir)
    proc = vdm_main(f"--workdir={run_dir}", "--config.model.n_embd=16")
    assert_one_clear_line(proc, "model.n_embd", "8 → 16", "--reset")
    assert snapshot(run_dir) == before


def test_safe_change_is_allowed_and_kept_in_the_history(run_dir):
    proc = vdm_main(f"--workdir={run_dir}", "--config.training.num_steps=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(run_dir / "config.json"))["training"]["num_steps"] == 8
    history = [json.loads(ln) for ln in open(run_dir / "config_history.jsonl")]
    assert history[-1]["step"] == 6
    assert history[-1]["changes"]["training.num_steps"] == [6, 8]
    steps = [r["step"] for r in map(json.loads, open(run_dir / "metrics.jsonl"))]
    assert [s for s in steps if s <= 6] == [2, 4, 6, 6]  # train rows and the eval row kept


def test_reset_moves_the_old_run_aside_and_starts_afresh(run_dir):
    before = snapshot(run_dir)
    proc = vdm_main(f"--workdir={run_dir}", "--config.model.n_embd=16", "--reset")
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = [d for d in os.listdir(run_dir) if d.startswith("reset_")]
    assert len(kept) == 1
    moved = snapshot(run_dir / kept[0])
    assert {k: v for k, v in before.items() if k in moved} == moved and moved
    assert json.load(open(run_dir / "config.json"))["model"]["n_embd"] == 16


def test_workdir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me")
    assert_one_clear_line(vdm_main(f"--workdir={f}"), str(f), "is a file")
    assert f.read_text() == "keep me"


def test_workdir_not_writable(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: use a path under a file instead
        d = tmp_path / "afile" / "run"
        (tmp_path / "afile").write_text("")
        assert_one_clear_line(vdm_main(f"--workdir={d}"), str(d))
        return
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    assert_one_clear_line(vdm_main(f"--workdir={d}"), str(d), "not writable")


def test_missing_checkpoint_step(run_dir):
    proc = vdm_main(f"--workdir={run_dir}", "--mode=eval", f"--checkpoint={run_dir}/checkpoints/5")
    assert_one_clear_line(proc, "step 5", "2, 4, 6")


def test_tfds_dataset_not_prepared_offline(tmp_path):
    proc = vdm_main(
        f"--workdir={tmp_path / 'c'}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        config="--config=configs/cifar10.py:smoke",
    )
    assert_one_clear_line(proc, "cifar10", "data.download=True")


def test_sampler_option_the_sampler_does_not_take(run_dir):
    proc = vdm_main(f"--workdir={run_dir}", "--mode=sample", "--config.sample.eta=0.5")
    assert_one_clear_line(proc, "sample.eta=0.5", "sample.sampler='ancestral'", "steps")
    from vdm import samplers

    with pytest.raises(ValueError, match=r"sampler 'ancestral' takes no option 'eta'"):
        samplers.sample("ancestral", None, None, None, (1, 2), steps=2, eta=0.5)


def test_second_run_on_a_locked_workdir_stops_at_once(run_dir):
    before = snapshot(run_dir)
    with workdir.Lock(str(run_dir)):
        proc = vdm_main(f"--workdir={run_dir}", "--config.training.num_steps=8")
        assert_one_clear_line(proc, "in use by a training run", f"pid {os.getpid()}")
        # eval reads without the training lock
        ok = vdm_main(f"--workdir={run_dir}", "--mode=eval")
        assert ok.returncode == 0, ok.stderr[-3000:]
    assert {k: v for k, v in snapshot(run_dir).items() if not k.startswith("eval_step_")} == before


# ---- Divergence: a healthy step, and no good checkpoint rotated out. ----


def test_health_of_a_step():
    good = dict(bpd=2.0, params_finite=1.0, grad_norm=3.0, gamma_0=-6.0, gamma_1=4.0)
    assert health.problems(good) == []
    assert "non-finite loss" in health.problems(dict(good, bpd=np.nan))
    assert any("impossible" in p for p in health.problems(dict(good, bpd=-5.3e9)))
    assert any("γ₀" in p for p in health.problems(dict(good, gamma_0=5.0)))
    assert "non-finite gradient norm" in health.problems(dict(good, grad_norm=np.inf))
    assert "non-finite parameters" in health.problems(dict(good, params_finite=0.0))
    assert health.problems(dict(good, bpd=-1e-5)) == []  # float rounding of ≥ 0 terms


def test_finite_divergence_stops_and_keeps_every_good_checkpoint(run_dir):
    """lr = 30 on a finished run: the bound goes hugely negative but stays finite."""
    before = snapshot(run_dir)
    proc = vdm_main(
        f"--workdir={run_dir}",
        "--config.optimizer.learning_rate=30",
        "--config.optimizer.grad_clip=0.5",
        "--config.training.num_steps=40",
        "--config.training.save_every=1",
        "--config.training.log_every=1",
    )
    last = assert_one_clear_line(proc, "diverged at step", "Last healthy checkpoint")
    assert "stopped without saving" in last
    diverged_at = int(last.split("diverged at step ")[1].split()[0])
    steps = sorted(int(d) for d in os.listdir(run_dir / "checkpoints") if d.isdigit())
    assert steps and max(steps) < diverged_at  # nothing from the diverged state was saved
    assert f"Last healthy checkpoint: step {max(steps)} " in last
    # the newest kept checkpoint is a valid model: its bound is finite and ≥ 0
    ok = vdm_main(f"--workdir={run_dir}", "--mode=eval", f"--checkpoint={run_dir}/checkpoints")
    assert ok.returncode == 0, ok.stderr[-3000:]
    result = json.load(open(run_dir / f"eval_step_{max(steps)}.json"))
    assert np.isfinite(result["bpd"]) and result["bpd"] > 0
    mngr = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"))
    for s in steps:
        assert int(mngr.restore(s)["step"]) == s
    mngr.close()
    assert before["eval_final.json"] == snapshot(run_dir)["eval_final.json"]


# ---- Restore walks back past damage. ----


def _damage(step_dir, kind):
    if kind == "empty_step":
        return
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    if kind == "truncated_array":
        # Every OCDBT data file: orbax leaves some superseded B-tree nodes and chunks on disk
        # that nothing references, so damaging one chosen file may harm nothing at all.
        for target in (f for f in files if f"{os.sep}d{os.sep}" in f):
            with open(target, "r+b") as f:
                f.truncate(os.path.getsize(target) // 3)
    elif kind == "garbage_metadata":
        for f in files:
            if os.path.basename(f) == "_METADATA":
                with open(f, "w") as fh:
                    fh.write("{not json")
    elif kind == "missing_manifest":
        for f in files:
            if os.path.basename(f) == "manifest.ocdbt":
                os.remove(f)


@pytest.mark.parametrize(
    "kind", ["truncated_array", "garbage_metadata", "missing_manifest", "empty_step"]
)
def test_restore_walks_back_past_a_damaged_latest_checkpoint(run_dir, kind):
    ckpts = run_dir / "checkpoints"
    if kind == "empty_step":
        (ckpts / "8").mkdir()
        bad = 8
    else:
        _damage(str(ckpts / "6"), kind)
        bad = 6
    proc = vdm_main(f"--workdir={run_dir}", "--mode=eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    warn = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: checkpoint")]
    assert len(warn) == 1 and f"step {bad}" in warn[0], proc.stderr[-2000:]
    assert os.path.isdir(ckpts / "corrupt" / str(bad))  # moved aside, never deleted
    assert os.path.exists(run_dir / f"eval_step_{4 if bad == 6 else 6}.json")


def test_no_readable_checkpoint_is_one_line_and_the_last_one_stays(run_dir):
    for s in (2, 4, 6):
        _damage(str(run_dir / "checkpoints" / str(s)), "garbage_metadata")
    proc = vdm_main(f"--workdir={run_dir}", "--mode=eval")
    assert_one_clear_line(proc, "no readable checkpoint", "step 2", "left in place")
    assert sorted(os.listdir(run_dir / "checkpoints" / "corrupt")) == ["4", "6"]
    assert os.path.isdir(run_dir / "checkpoints" / "2")  # never the last one moved aside


# ---- metrics.jsonl survives crashes and resumes. ----


def test_metrics_file_drops_a_partial_line_and_rows_after_the_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "split": "train", "bpd": 1.0} for s in (2, 4, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "spl')
    assert [r["step"] for r in metrics_writer.read_rows(str(path))] == [2, 4, 6]
    w = metrics_writer.MetricWriter(str(tmp_path), resume_step=4)
    w.write(6, {"bpd": 0.5})
    w.close()
    got = metrics_writer.read_rows(str(path))
    assert [r["step"] for r in got] == [2, 4, 6] and got[-1]["bpd"] == 0.5
