"""Accelerator paths, checked on CPU: mixed precision (model.dtype) and rematerialisation
(model.remat) of the ScoreUNet (vdm/networks/unet.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import data
from vdm.configs import digits, swirl2d
from vdm.model import VDM
from vdm.run import config as config_lib
from vdm.run import session, train


def _vlb_grad(c, params, batch):
    model = VDM.from_config(c)

    def loss(p):
        terms = model.vlb_terms(p, jax.random.key(3), batch, train=True)
        return jnp.mean(sum(terms.values()))

    return jax.jit(jax.value_and_grad(loss))


def _digits_batch(n):
    c = digits.get_config()
    split = data.load_split(c.data, "train")
    return {"image": jnp.asarray(split.get(np.arange(n))["image"])}


def test_remat_gives_the_same_loss_and_gradients_and_parameter_names():
    c = digits.get_config()
    c.model.dropout = 0.1  # dropout inside the recomputed blocks must draw the same masks
    params = VDM.from_config(c).init(jax.random.key(0), (8, 8, 1))
    params = jax.tree.map(lambda p: p + 0.01 * jnp.sign(p + 1e-3), params)  # past the zero init
    batch = _digits_batch(16)
    c_remat = c.copy_and_resolve_references()
    c_remat.model.remat = True
    assert jax.tree.structure(VDM.from_config(c_remat).init(jax.random.key(0), (8, 8, 1))) == (
        jax.tree.structure(params)
    )
    (l0, g0), (l1, g1) = (_vlb_grad(cc, params, batch)(params) for cc in (c, c_remat))
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    flat0, flat1 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (g0, g1))
    assert np.linalg.norm(flat1 - flat0) < 1e-5 * np.linalg.norm(flat0)  # float32 reordering
    np.testing.assert_allclose(flat1, flat0, rtol=1e-3, atol=1e-6 * np.abs(flat0).max())


def test_remat_recomputes_the_blocks_in_the_compiled_backward_pass():
    """The optimised program holds each residual block's convolutions once more (the
    recomputation survives XLA's CSE). Whether that lowers peak memory is the backend's
    scheduler's business: XLA:CPU schedules the recomputation early and its peak does not
    fall (`experiments/benchmarks/bench_train.py --variants base,remat`); accelerators' memory-aware
    schedulers do."""
    c = digits.get_config()
    params = VDM.from_config(c).init(jax.random.key(0), (8, 8, 1))
    batch = _digits_batch(8)
    convs = {}
    for remat in (False, True):
        c.model.remat = remat
        text = _vlb_grad(c, params, batch).lower(params).compile().as_text()
        convs[remat] = text.count("convolution(")
    n_blocks = 2 * c.model.n_layer + 3  # down, middle (2), up (n_layer + 1)
    assert convs[True] - convs[False] >= n_blocks, convs


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    """The digits config trained for 150 steps of batch 32 (≈ 10 s on a quiet CPU): a model
    past the start, evaluated on the first 100 test images."""
    c = digits.get_config()
    c.training.num_steps = c.training.eval_every = c.training.save_every = 150
    c.training.batch_size = 32
    c.data.n_test = c.eval.batch_size = 100
    c.sample.n_samples, c.sample.steps = 4, 4
    workdir = str(tmp_path_factory.mktemp("digits150"))
    result = train.train_and_evaluate(c, workdir)
    assert result["bpd"] < 3.5  # well below log2(17) = 4.09: it learned something
    return c, workdir


def test_bfloat16_bpd_within_one_percent_of_float32(trained_digits):
    c, workdir = trained_digits
    run = session.Run(c, workdir)
    params = run.eval_params(run.restore())
    f32 = run.evaluate(params)
    c16 = c.copy_and_resolve_references()
    c16.model.dtype = "bfloat16"
    b16 = session.Run(c16, workdir).evaluate(params)  # same t, ε: a paired comparison
    assert abs(b16["bpd"] - f32["bpd"]) < 0.01 * f32["bpd"], (b16["bpd"], f32["bpd"])
    assert b16["bpd"] != f32["bpd"]  # the bf16 path really ran


def test_precision_options_are_for_the_unet_only():
    c = swirl2d.get_config("smoke")
    c.model.dtype = "bfloat16"
    with pytest.raises(config_lib.ConfigError, match="model.dtype='bfloat16' is implemented"):
        config_lib.validate(c)
    c = digits.get_config("smoke")
    c.model.dtype = "float16"
    with pytest.raises(config_lib.ConfigError, match=r"model.dtype must be one of \['float32'"):
        config_lib.validate(c)
