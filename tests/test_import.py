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
from vdm.importers.flax_msgpack import find_checkpoint, read_tree
from vdm.importers.workdir import import_checkpoint
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
