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

from vdm.run import health, lock
from vdm.run import metrics as metrics_writer

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


def test_cifar10_archive_missing_offline(tmp_path):
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
    with lock.Lock(str(run_dir)):
        proc = vdm_main(f"--workdir={run_dir}", "--config.training.num_steps=8")
        assert_one_clear_line(proc, "in use by a training run", f"pid {os.getpid()}")
        # eval reads without the training lock
        ok = vdm_main(f"--workdir={run_dir}", "--mode=eval")
        assert ok.returncode == 0, ok.stderr[-3000:]
    after = snapshot(run_dir).items()
    assert {k: v for k, v in after if not k.startswith(("eval_step_", "eval_records"))} == before


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
    """eval reads a run that may be training: it skips the damaged step and moves nothing."""
    ckpts = run_dir / "checkpoints"
    if kind == "empty_step":
        (ckpts / "8").mkdir()
        bad = 8
    else:
        _damage(str(ckpts / "6"), kind)
        bad = 6
    before = snapshot(ckpts)
    proc = vdm_main(f"--workdir={run_dir}", "--mode=eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    warn = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: checkpoint")]
    assert len(warn) == 1 and f"step {bad}" in warn[0] and "left in place" in warn[0], warn
    assert not os.path.exists(ckpts / "corrupt") and snapshot(ckpts) == before
    assert os.path.exists(run_dir / f"eval_step_{4 if bad == 6 else 6}.json")


def test_training_moves_a_damaged_step_aside_once_an_older_one_restores(run_dir):
    ckpts = run_dir / "checkpoints"
    _damage(str(ckpts / "6"), "truncated_array")
    proc = vdm_main(f"--workdir={run_dir}")  # the finished run resumes from step 4
    assert proc.returncode == 0, proc.stderr[-3000:]
    warn = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: checkpoint")]
    assert len(warn) == 1 and "moved to" in warn[0] and "restored step 4" in warn[0], warn
    assert os.path.isdir(ckpts / "corrupt" / "6")  # moved aside, never deleted
    assert "starting at step 4" in proc.stdout


def test_no_readable_checkpoint_is_one_line_and_nothing_is_moved(run_dir):
    for s in (2, 4, 6):
        _damage(str(run_dir / "checkpoints" / str(s)), "garbage_metadata")
    before = snapshot(run_dir)
    for mode in ("eval", "train"):
        proc = vdm_main(f"--workdir={run_dir}", f"--mode={mode}")
        assert_one_clear_line(proc, "no readable checkpoint", "6, 4, 2", "nothing was moved")
        assert snapshot(run_dir) == before  # nor metrics dropped, nor config rewritten
    assert not os.path.exists(run_dir / "checkpoints" / "corrupt")


def test_a_run_whose_checkpoints_were_all_moved_aside_is_not_restarted(run_dir):
    """An older version moved every step to corrupt/: training afresh would rewrite the run's
    config.json and drop its metrics rows, so it is refused in one line."""
    ckpts = run_dir / "checkpoints"
    os.makedirs(ckpts / "corrupt")
    for s in ("2", "4", "6"):
        shutil.move(ckpts / s, ckpts / "corrupt" / s)
    before = snapshot(run_dir)
    assert_one_clear_line(vdm_main(f"--workdir={run_dir}"), "corrupt", "--reset")
    assert snapshot(run_dir) == before


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


# ---- A workdir owns its run: a config that does not fit is a mismatch, never damage. ----


@pytest.fixture(scope="module")
def weighted(tmp_path_factory):
    """A finished smoke run trained with overrides that change the optimizer state's tree
    (the adaptive p(λ) keeps its histogram there)."""
    d = tmp_path_factory.mktemp("weighted")
    proc = vdm_main(
        f"--workdir={d}",
        "--config.objective.weighting=sigmoid",
        "--config.objective.noise_dist=adaptive",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


def test_sample_and_eval_take_the_runs_own_config(weighted):
    before = snapshot(weighted)
    proc = vdm_main(f"--workdir={weighted}", "--mode=sample")  # overrides not repeated
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    note = [ln for ln in proc.stderr.splitlines() if "ignored from --config" in ln]
    assert len(note) == 1 and "objective.noise_dist" in note[0], proc.stderr[-2000:]
    assert not os.path.exists(weighted / "checkpoints" / "corrupt")
    assert snapshot(weighted) == before
    # the eval section still comes from the command line
    proc = vdm_main(f"--workdir={weighted}", "--mode=eval", "--config.eval.repeats=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(weighted / "eval_step_6.json"))["n"] == 200  # 100 test images × 2


def test_resume_with_a_config_that_builds_another_tree_is_one_line(weighted, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(weighted, d)
    before = snapshot(d)
    proc = vdm_main(f"--workdir={d}", "--config.training.num_steps=8")
    last = assert_one_clear_line(proc, "objective.noise_dist 'adaptive' → 'uniform_t'", "--reset")
    assert "training.num_steps" not in last  # fields that never shape the state are not blamed
    assert "opt_state" in last  # and what differs in the tree is said
    assert snapshot(d) == before  # no checkpoint moved, no metrics row dropped
    assert not os.path.exists(d / "checkpoints" / "corrupt")


def test_a_change_that_keeps_the_tree_resumes_whatever_its_section(run_dir):
    """Decided by structure, not by a list of names: γ_min only initialises a learned γ₀."""
    proc = vdm_main(
        f"--workdir={run_dir}", "--config.schedule.gamma_min=-7", "--config.training.num_steps=8"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming with changed schedule.gamma_min, training.num_steps" in proc.stdout


def test_config_file_that_does_not_parse_is_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(arg=''):\n    return dict(a=1\n")
    assert_one_clear_line(
        vdm_main(f"--workdir={tmp_path / 'w'}", config=f"--config={bad}"), f"{bad}:2"
    )
    raises = tmp_path / "raises.py"
    raises.write_text("def get_config(arg=''):\n    return undefined_name\n")
    proc = vdm_main(f"--workdir={tmp_path / 'w'}", config=f"--config={raises}")
    assert_one_clear_line(proc, f"{raises}:2", "NameError")


# ---- Preemption and failed writes. ----


def _start_long_run(workdir):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, "-m", "vdm.main", SMOKE, f"--workdir={workdir}"]
        + ["--config.training.num_steps=100000", "--config.training.log_every=1000"]
        + ["--config.training.save_every=100000", "--config.training.eval_every=100000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_training(workdir, proc, timeout=300):
    """Until the run has logged a row (it is past compiling and training)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics_writer.read_rows(os.path.join(workdir, "metrics.jsonl")):
            return
        time.sleep(0.5)
    raise AssertionError("the run never logged: " + proc.communicate()[1][-2000:])


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_preemption_saves_the_step_in_flight_and_resumes_there(tmp_path, sig):
    import signal

    d = tmp_path / "run"
    proc = _start_long_run(d)
    _wait_for_training(d, proc)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + getattr(signal, sig), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert f"({sig}); saved; rerun the same command to resume" in last, last
    step = int(last.split("preempted at step ")[1].split()[0])
    assert step >= 1000  # at or past the first log row: no save_every was ever reached
    steps = [int(s) for s in os.listdir(d / "checkpoints") if s.isdigit()]
    assert steps == [step]
    rows = metrics_writer.read_rows(str(d / "metrics.jsonl"))
    assert rows[-1]["step"] == step and rows[-1]["split"] == "train"
    # the same command resumes from the step that was saved
    proc = vdm_main(f"--workdir={d}", f"--config.training.num_steps={step + 2}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"starting at step {step}" in proc.stdout


def vdm_main_file_size_limited(limit: int, *args):
    """The CLI with files limited to `limit` bytes (RLIMIT_FSIZE, SIGXFSZ ignored): a write
    past it fails with EFBIG, the way a full disk fails with ENOSPC."""
    limited = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "os.execv(sys.executable, [sys.executable, '-m', 'vdm.main', *sys.argv[1:]])"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="false")
    return subprocess.run(
        [sys.executable, "-c", limited, SMOKE, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_a_run_file_that_cannot_be_written_is_one_line_naming_it(run_dir):
    before = snapshot(run_dir)
    proc = vdm_main_file_size_limited(
        2_000, f"--workdir={run_dir}", "--config.training.num_steps=8"
    )
    last = assert_one_clear_line(proc, f"cannot write {run_dir}{os.sep}", ": File too large")
    assert last.split(": File")[0].endswith(("metrics.jsonl", "config.json")), last
    assert snapshot(run_dir) == before  # written to a temporary name first


def test_disk_full_during_a_save_is_one_line_and_keeps_the_earlier_checkpoints(run_dir):
    """The file-size limit stands in for a full disk: writes past it fail with EFBIG."""
    before = snapshot(run_dir / "checkpoints")
    proc = vdm_main_file_size_limited(
        40_000, f"--workdir={run_dir}", "--config.training.num_steps=8"
    )
    last = assert_one_clear_line(proc, "cannot save the checkpoint", "File too large")
    assert "checkpoints/8" in last and "earlier checkpoints are intact" in last
    assert proc.stderr.count("\n") < 20, proc.stderr[-3000:]  # no thread reports
    after = snapshot(run_dir / "checkpoints")
    assert {k: v for k, v in after.items() if k in before} == before
    ok = vdm_main(f"--workdir={run_dir}", "--mode=eval")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert os.path.exists(run_dir / "eval_step_6.json")


# ---- Keep the best, stop on a loss spike. ----


def test_the_best_eval_checkpoint_is_never_rotated_out(tmp_path):
    import jax.numpy as jnp

    from vdm.run import checkpoint

    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=2)
    bpd = {1: 3.0, 2: 1.5, 3: 2.0, 4: 2.5, 5: 2.2, 6: 1.9}
    for s, b in bpd.items():
        ckpt.save(s, {"w": jnp.full((3,), float(s))})
        ckpt.wait()
        ckpt.record_eval(s, b)
    assert ckpt.steps() == [2, 5, 6]  # the newest two, and the best (1.5 at step 2)
    ckpt.close()
    again = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=2)  # reopened
    again.save(7, {"w": jnp.full((3,), 7.0)})
    again.wait()
    assert again.steps() == [2, 6, 7]
    again.close()


def test_loss_spike_against_the_running_median():
    history = [5.6, 5.5, 5.4]
    assert health.spike(29_158.0, history, 10.0).startswith("loss spike")
    assert health.spike(8.0, history, 10.0) is None
    assert health.spike(29_158.0, history[:2], 10.0) is None  # too little history
    assert health.spike(29_158.0, history, 0.0) is None  # off
    with pytest.raises(health.DivergedError, match="diverged at step 8 .*loss spike"):
        steps = [{"bpd": np.float32(b)} for b in (5.0, 900.0)]
        health.check(steps, 6, 1, "info", history=history, spike_factor=10.0)


def test_a_finite_blow_up_on_a_finished_run_saves_nothing(run_dir):
    """lr = 30 on a finished run: the first interval's loss is thousands of times the run's
    logged median (read back from metrics.jsonl), so it stops before any save."""
    before = snapshot(run_dir / "checkpoints")
    proc = vdm_main(
        f"--workdir={run_dir}",
        "--config.optimizer.learning_rate=30",
        "--config.training.num_steps=40",
        "--config.training.save_every=1",
        "--config.training.log_every=1",
    )
    last = assert_one_clear_line(proc, "diverged at step", "stopped without saving")
    steps = sorted(int(d) for d in os.listdir(run_dir / "checkpoints") if d.isdigit())
    kept = metrics_writer.read_rows(str(run_dir / "metrics.jsonl"))
    train = [r["bpd"] for r in kept if r["split"] == "train"]
    assert max(train) < 10 * float(np.median(train[:3])), (last, train)  # no spike was logged
    after = snapshot(run_dir / "checkpoints")
    assert {k: v for k, v in before.items() if k.startswith("6/")}.items() <= after.items()
    diverged_at = int(last.split("diverged at step ")[1].split()[0])
    assert 6 in steps and max(steps) < diverged_at
    # every step saved after the finished run's was a healthy one, under 10× its median
    bpd_at = {r["step"]: r["bpd"] for r in kept if r["split"] == "train"}
    assert all(bpd_at[s] < 10 * float(np.median(train[:3])) for s in steps if s > 6), bpd_at
