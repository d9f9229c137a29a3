"""End to end: train → checkpoint → resume in a new process → eval → sample (vdm/run/train.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vdm.configs import cifar10, digits
from vdm.model import VDM
from vdm.run import config as config_lib
from vdm.run import session, train, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--config=configs/digits.py:smoke"]


def vdm_main(*args, check=True, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "vdm.main", *SMOKE, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        **kw,
    )
    if check and proc.returncode:
        raise AssertionError(f"vdm.main failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def load_params(workdir, step):
    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    restored = mngr.restore(step)
    mngr.close()
    return restored


@pytest.fixture(scope="module")
def resumed_and_straight(tmp_path_factory):
    """Run A: 4 steps, then a new process continues to 6. Run B: 6 steps straight."""
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    vdm_main(f"--workdir={a}", "--config.training.num_steps=4")
    vdm_main(f"--workdir={a}")
    vdm_main(f"--workdir={b}")
    return a, b


def test_resumed_run_equals_uninterrupted_run_bitwise(resumed_and_straight):
    a, b = resumed_and_straight
    pa, pb = load_params(a, 6), load_params(b, 6)
    assert int(pa["step"]) == int(pb["step"]) == 6
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows = [json.loads(ln) for ln in open(os.path.join(a, "metrics.jsonl"))]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps == [2, 4, 6]  # logs continue, not duplicated
    assert {
        "bpd",
        "recon",
        "prior",
        "diffusion",
        "gamma_0",
        "gamma_1",
        "grad_norm",
        "diffusion_var",
    } <= set(rows[0])
    assert os.path.exists(os.path.join(a, "config.json"))
    assert any(f.startswith("events") for f in os.listdir(os.path.join(a, "tb")))
    assert sorted(os.listdir(os.path.join(a, "checkpoints"))) == ["2", "4", "6", "best.json"]


def test_eval_and_sample_modes(resumed_and_straight):
    a, _ = resumed_and_straight
    printed = vdm_main(
        f"--workdir={a}",
        "--mode=eval",
        "--config.eval.pf_ode=True",
        "--config.eval.pf_ode_examples=8",
        "--config.eval.repeats=2",
        "--config.eval.dequantization=truncated_normal",
    ).stdout
    result = json.load(open(os.path.join(a, "eval_step_6.json")))
    assert result["n"] == 200 and np.isfinite(result["bpd"]) and result["bpd_se"] > 0
    assert result["pf_ode_n"] == 8 and np.isfinite(result["pf_ode_bpd"])
    assert result["pf_ode_nfe_max"] > 0
    # every number says how it was made, in the JSON and the printed line
    elbo_rec, pf_rec = result["elbo_record"], result["pf_ode_record"]
    assert elbo_rec == {
        "estimator": "elbo",
        "time": "continuous",
        "repeats": 2,
        "matmul_precision": "highest",
        "dataset": "digits",
        "split": "test",
        "test_examples": 100,
        "version": elbo_rec["version"],
        "examples": 100,
        "checkpoint_step": 6,
        "records": elbo_rec["records"],  # the per-example results (vdm/eval/ledger.py)
        "resumed_batches": 0,
    }
    assert elbo_rec["records"].startswith(os.path.join(a, "eval_records", "elbo_step6_"))
    assert {
        "estimator": "pf_ode",
        "dequantization": "truncated_normal",
        "importance_samples": 1,
        "trace": "hutchinson",
        "probe": "rademacher",
        "probes": 1,
        "solver": "tsit5",
        "matmul_precision": "highest",
        "dataset": "digits",
        "split": "test",
        "n": 8,
        "checkpoint_step": 6,
    }.items() <= pf_rec.items()
    assert pf_rec["nfe_max"] == result["pf_ode_nfe_max"] and pf_rec["rtol"] > 0
    assert "truncated_normal dequantization, K = 1, Hutchinson ×1 rademacher trace" in printed
    assert "ELBO, continuous, repeats 2" in printed
    total = result["recon"] + result["prior"] + result["diffusion"]
    np.testing.assert_allclose(result["bpd"], total, rtol=1e-6)
    out = vdm_main(f"--workdir={a}", "--mode=sample", f"--checkpoint={a}/checkpoints/4")
    png = out.stdout.split("samples → ")[1].split(" and ")[0]
    assert os.path.exists(png) and png.endswith("step_00000004.png")
    x = np.load(png[:-4] + ".npz")["samples"]
    assert x.shape == (4, 8, 8, 1) and x.min() >= 0 and x.max() < 17


def test_sigkill_mid_training_resumes_and_leaves_no_corrupt_checkpoint(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        "-m",
        "vdm.main",
        *SMOKE,
        f"--workdir={tmp_path}",
        "--config.training.num_steps=100000",
        "--config.training.save_every=1",
        "--config.training.eval_every=100000",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpts = tmp_path / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [d for d in os.listdir(ckpts) if d.isdigit()] if ckpts.exists() else []
        if len(done) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
    assert steps, "no checkpoint was written before the kill"
    for s in steps:  # every finished checkpoint restores
        restored = load_params(tmp_path, s)
        assert int(restored["step"]) == s
    target = steps[-1] + 2
    vdm_main(f"--workdir={tmp_path}", f"--config.training.num_steps={target}")
    assert int(load_params(tmp_path, target)["step"]) == target


def test_two_devices_give_the_same_loss_update_samples_and_likelihood_as_one():
    script = os.path.join(ROOT, "tests", "two_devices.py")
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT,
        # the suite's own flags (tests/conftest.py) kept, two host devices added
        XLA_FLAGS=" ".join(
            [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=2"]
        ).strip(),
    )
    proc = subprocess.run(
        [sys.executable, script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n_devices"] == 2
    assert out["loss_diff"] < 1e-5 and out["param_diff"] < 1e-6, out
    # Sampling and the PF-ODE split over 2 devices: the same answers, each compiled once.
    assert out["sample_mismatch"] <= 0.01, out
    assert out["pf_ode_diff"] < 1e-3 and out["pf_ode_repeat_diff"] == 0.0, out
    for n in ("1", "2"):
        assert out["compiles"][n] == {"samplers": 1, "sampler": 1, "pf_ode": 1, "eval": 1}, out
    # Each device draws its half of the batch's noise: no draw of the whole batch's size.
    assert out["flat_draw_shapes"]["global"] == 0 and out["flat_draw_shapes"]["per_device"], out


def test_cli_bad_value_is_one_clear_line(tmp_path):
    proc = vdm_main(f"--workdir={tmp_path}", "--config.model.head=epsilon", check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: model.head must be one of ['eps', 'x0', 'v', 'score'], got 'epsilon'"
    )


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("data.name", "cifar100", r"data.name must be one of \[.*'digits'"),
        ("schedule.name", "linear", r"schedule.name must be one of \[.*'fixed_linear'"),
        (
            "model.network",
            "resnet",
            r"model.network must be one of \['concat_mlp', 'mlp', 'unet'\]",
        ),
        ("optimizer.decay", "step", r"optimizer.decay must be one of \['none', 'cosine'\]"),
        ("training.batch_size", 7, r"training.batch_size must be divisible by the number of dev"),
        ("model.n_timesteps", -1, r"model.n_timesteps must be >= 0"),
        ("optimizer.ema_decay", 1.0, r"optimizer.ema_decay must be in \[0, 1\)"),
        ("schedule.variance_min", True, r"schedule.variance_min needs continuous time"),
        ("sample.sampler", "magic", r"sample.sampler must be one of"),
    ],
)
def test_every_bad_config_value_errors_clearly(field, value, match):
    c = digits.get_config("smoke")
    section, name = field.split(".")
    c[section][name] = value
    if field == "schedule.variance_min":
        c.model.n_timesteps = 10
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c, n_devices=2)


def test_weight_decay_mask_selects_network_kernels_only():
    c = digits.get_config("smoke")
    run_model = VDM.from_config(c, 10)
    params = run_model.init(jax.random.key(0), (8, 8, 1))
    mask = train_step.weight_decay_mask(params)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    names = {jax.tree_util.keystr(p): m for p, m in flat}
    assert all(not m for k, m in names.items() if k.startswith("['schedule']"))
    assert all(m == k.endswith("['kernel']") for k, m in names.items() if k.startswith("['net']"))
    assert any(m for m in names.values()) and any("scale" in k for k in names)


def test_non_finite_loss_stops_clearly_and_keeps_last_good_checkpoint(tmp_path):
    c = digits.get_config("smoke")
    c.optimizer.learning_rate = 1e30
    c.optimizer.warmup_steps = 0
    c.training.save_every = 1
    c.training.log_every = 1
    with pytest.raises(
        train.NonFiniteLossError,
        match=r"diverged at step \d+ \((non-finite loss|γ₀ .* ≥ γ₁ .*)\); stopped without saving",
    ):
        train.train_and_evaluate(c, str(tmp_path))
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    for s in steps:
        restored = load_params(tmp_path, s)
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored))


def test_cifar10_trains_from_its_archive_with_flips(tmp_path):
    from experiments import archive_formats

    archive_formats.cifar10(tmp_path / "data", per_batch=2, n_test=8)
    c = cifar10.get_config("smoke")
    c.data.random_flip = True
    c.data.data_dir = str(tmp_path / "data")
    result = train.train_and_evaluate(c, str(tmp_path))
    assert result["step"] == 2 and result["n"] == 8 and np.isfinite(result["bpd"])
    assert os.path.exists(tmp_path / "samples" / "step_00000002.png")


@pytest.mark.parametrize("loop", ["scan", "host"])
def test_steps_per_call_equals_single_steps(loop):
    """Three steps in one call give the same state as three calls of one step, for the
    jitted scan and for the host loop; the host loop compiles one step, whatever the count."""
    from vdm import data, sharding

    c = digits.get_config("smoke")
    c.training.loop = loop
    run = session.Run(c, "/tmp/unused")
    step_fn = train_step.make_train_step(run.model, run.optimizer, c, run.n_dims, run.mesh)
    batches = [data.train_batch(run.train_split, 8, s, 0, False) for s in range(3)]
    stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    s3, m3 = step_fn(run.fresh_state(), sharding.shard_batch(stacked, run.mesh, 1), run.key)
    s1 = run.fresh_state()
    for b in batches:
        one = {k: v[None] for k, v in b.items()}
        s1, _ = step_fn(s1, sharding.shard_batch(one, run.mesh, 1), run.key)
    assert m3["bpd"].shape == (3,) and int(s3.step) == 3
    for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s3.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert step_fn._cache_size() == (1 if loop == "host" else 2)


def test_training_loop_default_and_bad_value():
    assert train_step.resolve_loop("auto") == ("host" if jax.default_backend() == "cpu" else "scan")
    c = digits.get_config("smoke")
    c.training.loop = "unrolled"
    with pytest.raises(config_lib.ConfigError, match=r"training.loop must be one of \['auto'"):
        config_lib.validate(c)


def test_scanned_blocks_checkpoint_unrolled_and_restore_under_either_setting(tmp_path):
    """A run with model.scan_blocks=true trains on stacked parameters but checkpoints them
    unrolled; the same checkpoint restores with scan_blocks=false (the same numbers, the
    optimizer's moments too) and training resumes under the other setting."""
    from vdm.networks.unet import unstack_blocks

    c = digits.get_config("smoke")
    c.model.scan_blocks = "true"
    c.training.eval_every = 100  # eval at the end only
    train.train_and_evaluate(c, str(tmp_path))
    raw = load_params(tmp_path, 6)
    assert "ResnetBlock_0" in raw["params"]["net"] and "down" not in raw["params"]["net"]
    scanned = session.Run(c, str(tmp_path)).restore()
    n_layer = c.model.n_layer
    assert scanned.params["net"]["down"]["res"]["Conv_0"]["kernel"].shape[0] == n_layer
    flat_cfg = c.copy_and_resolve_references()
    flat_cfg.model.scan_blocks = "false"
    flat = session.Run(flat_cfg, str(tmp_path)).restore()
    for a, b in ((scanned.params, flat.params), (scanned.opt_state, flat.opt_state)):
        a = train_step.stored_state(session.Run(c, str(tmp_path)).model, a)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    back = unstack_blocks(scanned.params["net"], n_layer, False)
    assert jax.tree.structure(back) == jax.tree.structure(flat.params["net"])
    flat_cfg.training.num_steps = 8
    result = train.train_and_evaluate(flat_cfg, str(tmp_path))
    assert result["step"] == 8 and np.isfinite(result["bpd"])
