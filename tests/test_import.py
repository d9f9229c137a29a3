"""Importing google-research/vdm's checkpoints (vdm/importers/), against the official model's
own numbers: `tests/fixtures/official_vdm/` was made by `tools/official_vdm_fixture.py` from
the official `model_vdm.py` (a checkpoint in clu's layout, the inputs, the official model's
draws, ε̂ and loss terms), for both official schedules."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.configs import cifar10_aug
from vdm.core import elbo
from vdm.importers import google_vdm
from vdm.importers.flax_msgpack import CheckpointImportError, find_checkpoint, read_tree
from vdm.importers.workdir import import_checkpoint, make_config
from vdm.model import VDM
from vdm.run import checkpoint, train_step
from vdm.run import workdir as workdir_lib

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "official_vdm")
CASES = ("learnable_scalar", "learnable_nnet")


def aug_config():
    """cifar10_aug's settings at the fixture's sizes (the nnet case's flags are 0 and 1)."""
    c = cifar10_aug.get_config()
    c.model.n_embd, c.model.n_layer, c.model.with_attention = 32, 1, True
    c.schedule.name, c.schedule.n_features = "learned_net_unnormalized", 1024
    c.model.flag_input = "concat"
    return c


def src(case):
    return os.path.join(FIXTURES, case, "checkpoints-0")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each case imported once: {case: (workdir, import record)}."""
    out = {}
    for case in CASES:
        workdir = str(tmp_path_factory.mktemp("imported") / case)
        config = aug_config() if case == "learnable_nnet" else None
        out[case] = (workdir, import_checkpoint(src(case), workdir, config, log=lambda _: None))
    return out


def restored(workdir):
    """The model of the workdir's config.json and the train state of its checkpoint."""
    import ml_collections

    config = ml_collections.ConfigDict(workdir_lib.read_config(workdir))
    model = VDM.from_config(
        config, 0, n_cond_flags=int(config.data.random_flip), data_shape=(8, 8, 3)
    )
    opt = train_step.make_optimizer(config.optimizer, config.training.num_steps, config.objective)
    abstract = jax.eval_shape(
        lambda k: train_step.stored_state(model, train_step.init_state(model, opt, k, (8, 8, 3))),
        jax.random.key(0),
    )
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), move_damaged=False)
    try:
        return config, model, ckpt.restore(abstract)
    finally:
        ckpt.close()


@pytest.mark.parametrize("case", CASES)
def test_imported_model_computes_the_official_eps_hat_and_loss_terms(imported, case):
    """The imported EMA parameters give the official ε̂ and L_recon, L_prior, L_diffusion for
    the official draws (ε₀, t, ε), to float32 tolerance."""
    workdir, record = imported[case]
    ref = np.load(os.path.join(FIXTURES, case, "reference.npz"))
    config, model, state = restored(workdir)
    assert int(state.step) == int(ref["step"]) == record["official_step"]
    params = model.applied_params(state.ema_params)
    flags = None
    if config.data.random_flip:
        flags = jnp.asarray(ref["conditioning"])[:, None]
    else:
        assert not ref["conditioning"].any()  # the plain model: conditioning 0, row dropped
    gamma_fn = model.gamma_fn(params)
    g0, g1 = model.endpoints(params)
    np.testing.assert_allclose(g0, ref["gamma_0"], rtol=1e-6)
    np.testing.assert_allclose(g1, ref["gamma_1"], rtol=1e-6)
    np.testing.assert_allclose(gamma_fn(jnp.asarray(ref["t"])), ref["gamma_t"], rtol=1e-5)
    eps_hat_fn = model.eps_hat_fn(params, flags=flags)
    eps_hat = eps_hat_fn(jnp.asarray(ref["z_t"]), jnp.asarray(ref["gamma_t"]))
    scale = np.abs(ref["eps_hat"]).max()
    np.testing.assert_allclose(eps_hat, ref["eps_hat"], atol=2e-5 * scale)
    x = jnp.asarray(ref["images"].astype(np.int32))
    f = model.encoding.encode(x)
    recon = elbo.recon_loss(x, jnp.asarray(ref["eps_0"]), g0, model.encoding)
    prior = elbo.prior_loss(f, g1)
    t, eps = jnp.asarray(ref["t"]), jnp.asarray(ref["eps"])
    diff = elbo.diffusion_loss(f, t, eps, gamma_fn, eps_hat_fn)
    np.testing.assert_allclose(recon, ref["loss_recon"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(prior, ref["loss_klz"], rtol=1e-4)
    np.testing.assert_allclose(diff, ref["loss_diff"], rtol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_workdir_holds_both_trees_the_adam_moments_and_a_record(imported, case):
    workdir, record = imported[case]
    _, _, state = restored(workdir)
    tree = read_tree(find_checkpoint(src(case)))
    m = google_vdm.describe(tree["params"])
    pmap = google_vdm.parameter_map(m, keep_flag=case == "learnable_nnet")
    ema = google_vdm.convert(tree["ema_params"], pmap)
    raw = google_vdm.convert(tree["params"], pmap)
    for got, ref in ((state.ema_params, ema), (state.params, raw)):
        jax.tree.map(np.testing.assert_array_equal, got, ref)
    adam = google_vdm.adam_moments(tree["opt_state"])
    adam_state = next(
        s
        for s in jax.tree.leaves(state.opt_state, is_leaf=lambda n: hasattr(n, "mu"))
        if hasattr(s, "mu")
    )
    assert int(adam_state.count) == int(adam["count"])
    jax.tree.map(np.testing.assert_array_equal, adam_state.nu, google_vdm.convert(adam["nu"], pmap))
    with open(os.path.join(workdir, "import.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(record, default=str))
    assert saved["source"] == "google-research/vdm" and len(saved["sha256"]) == 64
    assert saved["bytes"] == os.path.getsize(find_checkpoint(src(case)))
    assert ("dense0" in saved["dropped"]) == (case == "learnable_scalar")
    assert not [p for p in os.listdir(os.path.dirname(workdir)) if ".importing-" in p]


# ---- Bad input: one line, nothing written. ----


def write_tree(path, tree):
    from flax import serialization

    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(tree))


@pytest.fixture(scope="module")
def official_tree():
    return read_tree(find_checkpoint(src("learnable_scalar")))


def test_a_directory_without_a_checkpoint_is_one_line(tmp_path):
    (tmp_path / "checkpoints-0").mkdir()
    (tmp_path / "checkpoints-0" / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\n')
    with pytest.raises(CheckpointImportError, match=r"holds no ckpt-\*\.flax file"):
        import_checkpoint(str(tmp_path / "checkpoints-0"), str(tmp_path / "run"))
    with pytest.raises(CheckpointImportError, match="no such file or directory"):
        import_checkpoint(str(tmp_path / "nowhere"), str(tmp_path / "run"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoints-0"]


@pytest.mark.parametrize("damage", ["truncated", "garbled", "trailing", "not a map"])
def test_a_damaged_file_is_one_line_and_writes_nothing(tmp_path, damage):
    blob = open(find_checkpoint(src("learnable_scalar")), "rb").read()
    bad = {
        "truncated": blob[: len(blob) // 2],
        "garbled": blob[:100] + b"\xc1" * 64 + blob[164:],  # 0xc1: never used by msgpack
        "trailing": blob + b"\x01",
        "not a map": b"\x93\x01\x02\x03",
    }[damage]
    path = tmp_path / "ckpt-3.flax"
    path.write_bytes(bad)
    expected = {
        "truncated": "is truncated: its",
        "garbled": "is damaged or not a Flax checkpoint",
        "trailing": "data after the checkpoint's map",
        "not a map": "not a Flax train state: it holds a list",
    }[damage]
    with pytest.raises(CheckpointImportError, match=expected) as e:
        import_checkpoint(str(path), str(tmp_path / "run"))
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-3.flax"]


def test_a_tree_of_another_model_names_what_differs(tmp_path, official_tree):
    import copy

    tree = copy.deepcopy(official_tree)
    tree["ema_params"]["score_model"]["dense1"]["kernel"] = np.zeros((128, 64), np.float32)
    del tree["ema_params"]["score_model"]["conv_out"]["bias"]
    tree["ema_params"]["score_model"]["extra"] = {"kernel": np.zeros(3, np.float32)}
    write_tree(tmp_path / "ckpt-1.flax", tree)
    with pytest.raises(CheckpointImportError) as e:
        import_checkpoint(str(tmp_path), str(tmp_path / "run"))
    line = str(e.value)
    assert line.startswith("ema_params do not form one google-research/vdm model")
    assert "score_model/dense1/kernel (128, 64) (expected (128, 128))" in line
    assert "missing score_model/conv_out/bias" in line
    assert "unexpected score_model/extra/kernel" in line
    not_vdm = {"step": 1, "params": {"encoder": {"w": np.zeros(2)}}, "ema_params": {}}
    write_tree(tmp_path / "ckpt-1.flax", not_vdm)
    with pytest.raises(CheckpointImportError, match=r"its params have no 'score_model'"):
        import_checkpoint(str(tmp_path), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_config_that_does_not_describe_the_checkpoint_is_one_line(tmp_path):
    c = aug_config()
    c.model.n_embd, c.schedule.name = 64, "learned_scalar"
    with pytest.raises(CheckpointImportError) as e:
        import_checkpoint(src("learnable_nnet"), str(tmp_path / "run"), c)
    assert "model.n_embd 64 (the checkpoint's 32)" in str(e.value)
    assert "schedule.name 'learned_scalar' (the checkpoint's 'learned_net_unnormalized')" in str(
        e.value
    )
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_never_overwritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(CheckpointImportError, match="already exists and is not empty"):
        import_checkpoint(src("learnable_scalar"), str(run))
    assert os.listdir(run) == ["config.json"] and (run / "config.json").read_text() == "{}"


def test_released_models_are_recognised_by_their_sizes():
    from vdm.importers.workdir import RELEASED, released_match

    for r in RELEASED:
        m = google_vdm.OfficialModel(fourier=True, channels=3, n_features=1024, **r.model)
        config, released = make_config(m)
        assert released is r
        assert config.model.n_embd == r.model["n_embd"]
        assert config.schedule.name == google_vdm.SCHEDULES[r.model["gamma_type"]]
    m = google_vdm.OfficialModel(32, 1, False, True, 3, "learnable_scalar")
    assert released_match(m) is None
    assert make_config(m)[0].data.name == "cifar10"


# ---- Every mode on an imported workdir, from the command line. ----

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vdm_main(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "vdm.main", *args],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
    )


def test_every_mode_runs_on_an_imported_workdir_from_the_cli(tmp_path):
    """import (no --config: cifar10's settings, the file's sizes) → eval (ELBO and the PF-ODE
    with truncated-normal dequantization, K = 2) → sample → compress/decompress → train on,
    all on CIFAR-10 archives in the official format (32×32; the fixture's net is convolutional)."""
    from experiments import archive_formats

    data, run = tmp_path / "data", tmp_path / "run"
    archive_formats.cifar10(data, per_batch=2, n_test=4)
    proc = vdm_main(
        "--mode=import", "--from=google-research/vdm", src("learnable_scalar"), f"--workdir={run}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "imported ScoreUNet n_embd 32, n_layer 1" in proc.stdout and "step 1234" in proc.stdout
    again = vdm_main(
        "--mode=import", "--from=google-research/vdm", src("learnable_scalar"), f"--workdir={run}"
    )
    assert again.returncode == 1 and again.stderr.strip().splitlines() == [
        f"error: --workdir={run} already exists and is not empty: an import writes a new run "
        "and never overwrites one; give a new --workdir"
    ]
    common = ("--config=cifar10:smoke", f"--workdir={run}", f"--config.data.data_dir={data}")
    proc = vdm_main(
        "--mode=eval",
        *common,
        "--config.eval.pf_ode=True",
        "--config.eval.pf_ode_examples=2",
        "--config.eval.pf_ode_batch_size=2",
        "--config.eval.dequantization=truncated_normal",
        "--config.eval.importance_samples=2",
        "--config.eval.pf_ode_trace=hutchinson",
        "--config.eval.pf_ode_probes=4",
        "--config.eval.pf_ode_solver=heun",  # loose: the fixture's perturbed net is stiff
        "--config.eval.pf_ode_rtol=0.3",
        "--config.eval.pf_ode_atol=0.3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ELBO   test bpd" in proc.stdout and "PF-ODE test bpd" in proc.stdout
    result = json.loads((run / "eval_step_1234.json").read_text())
    assert result["elbo_record"]["dataset"] == "cifar10" and np.isfinite(result["bpd"])
    assert result["pf_ode_record"]["importance_samples"] == 2
    proc = vdm_main("--mode=sample", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "samples").is_dir()
    np.savez(tmp_path / "x.npz", images=np.load(next((run / "samples").glob("*.npz")))["samples"])
    proc = vdm_main(
        "--mode=compress",
        *common,
        f"--input={tmp_path / 'x.npz'}",
        f"--output={tmp_path / 'x.vdmz'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = vdm_main(
        "--mode=decompress",
        *common,
        f"--input={tmp_path / 'x.vdmz'}",
        f"--output={tmp_path / 'y.npz'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(
        np.load(tmp_path / "y.npz")["images"], np.load(tmp_path / "x.npz")["images"]
    )
    proc = vdm_main(
        "--mode=train",
        *common,
        "--config.model.n_embd=32",
        "--config.model.n_layer=1",
        "--config.training.num_steps=1236",
        "--config.training.eval_every=100000",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(int(s) for s in os.listdir(run / "checkpoints") if s.isdigit())[-1] == 1236


def test_import_flags_are_checked_in_one_line(tmp_path):
    proc = vdm_main(
        "--mode=import",
        "--from=openai/improved-diffusion",
        src("learnable_scalar"),
        f"--workdir={tmp_path / 'r'}",
    )
    assert proc.stderr.strip().splitlines() == [
        "error: --from must be one of ['google-research/vdm'], got 'openai/improved-diffusion'"
    ]
    proc = vdm_main("--mode=import", "--from=google-research/vdm", f"--workdir={tmp_path / 'r'}")
    assert proc.stderr.strip().endswith("got 0: none")
    assert not (tmp_path / "r").exists()


# ---- From the released checkpoint's URL (a local HTTP server stands for the bucket). ----


@pytest.fixture
def bucket():
    """FIXTURES served over HTTP on 127.0.0.1, as storage.googleapis.com serves the bucket."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=FIXTURES)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_import_from_a_url_fetches_the_named_file_once(bucket, tmp_path):
    from vdm.importers import remote

    assert remote.https_url("gs://gresearch/vdm/cifar10/checkpoint-final/checkpoints-0") == (
        "https://storage.googleapis.com/gresearch/vdm/cifar10/checkpoint-final/checkpoints-0"
    )
    url = f"{bucket}/learnable_scalar/checkpoints-0"
    lines = []
    record = import_checkpoint(
        url, str(tmp_path / "a"), cache=str(tmp_path / "cache"), log=lines.append
    )
    assert record["url"] == url and any(line.startswith("fetching ") for line in lines)
    local = find_checkpoint(src("learnable_scalar"))
    assert record["sha256"] == __import__("hashlib").sha256(open(local, "rb").read()).hexdigest()
    lines.clear()
    import_checkpoint(
        url + "/ckpt-3.flax", str(tmp_path / "b"), cache=str(tmp_path / "cache"), log=lines.append
    )
    assert any(line.startswith("using ") for line in lines)  # the cache, not the network
    with pytest.raises(Exception, match=r"cannot download .*/nothing/checkpoint.*HTTP 404"):
        import_checkpoint(f"{bucket}/nothing", str(tmp_path / "c"), cache=str(tmp_path / "cache"))
    assert not (tmp_path / "c").exists()


def test_a_fetched_file_that_is_not_a_checkpoint_leaves_the_cache(bucket, tmp_path):
    bad = tmp_path / "served"
    (bad / "checkpoints-0").mkdir(parents=True)
    (bad / "checkpoints-0" / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n')
    (bad / "checkpoints-0" / "ckpt-5.flax").write_bytes(b"<html>moved</html>")
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(bad))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/checkpoints-0"
    try:
        with pytest.raises(CheckpointImportError, match="removed from the cache"):
            import_checkpoint(
                url, str(tmp_path / "run"), cache=str(tmp_path / "cache"), log=lambda _: None
            )
    finally:
        server.shutdown()
    assert not list((tmp_path / "cache").rglob("*.flax"))
    with pytest.raises(CheckpointImportError, match="without a query"):
        import_checkpoint(
            f"{bucket}/x/ckpt-1.flax?alt=media",
            str(tmp_path / "run"),
            cache=str(tmp_path / "cache"),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "served"]


def test_a_foreign_tree_with_odd_keys_or_values_is_one_line(tmp_path):
    write_tree(tmp_path / "ckpt-1.flax", {"step": [1, 2], "params": {}, "ema_params": {}})
    with pytest.raises(CheckpointImportError, match="its step .* is not an integer"):
        import_checkpoint(str(tmp_path), str(tmp_path / "run"))
    write_tree(tmp_path / "ckpt-1.flax", {"step": 1, "params": [1], "ema_params": {}})
    with pytest.raises(CheckpointImportError, match="its params is a list, not a map"):
        import_checkpoint(str(tmp_path), str(tmp_path / "run"))
    import msgpack

    odd = {"step": 1, "params": {1: 2, "a": 3}, "ema_params": {}}
    (tmp_path / "ckpt-1.flax").write_bytes(msgpack.packb(odd))
    with pytest.raises(CheckpointImportError, match=r"found \['1', 'a'\]"):
        import_checkpoint(str(tmp_path), str(tmp_path / "run"))
