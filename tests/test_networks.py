"""Denoising networks and the model wrapper (vdm/networks, vdm/model.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.configs import cifar10, default, swirl2d, swirl2d_colab
from vdm.model import VDM, apply_form, count_params


def test_cifar10_parameter_count_matches_the_paper():
    """n_embd 128, n_layer 32, attention only in the middle: the paper's ≈30.6M parameters."""
    c = cifar10.get_config()
    model = VDM.from_config(c, num_classes=10)
    params = jax.eval_shape(lambda k: model.init(k, (32, 32, 3)), jax.random.key(0))
    n = count_params(params["net"])
    assert 30.5e6 < n < 30.7e6, n


def _small(network="unet", **model):
    c = default.get_config()
    c.model.network = network
    c.model.n_embd, c.model.n_layer, c.schedule.n_features = 8, 1, 8
    c.model.scan_blocks = "false"  # the unrolled parameter names on every backend
    c.model.update(model)
    return c


@pytest.mark.parametrize("shape", [(6, 10, 2), (5, 5, 4), (8, 8, 1)])
def test_unet_any_size_and_channels_starts_at_base_measure(shape):
    model = VDM.from_config(_small())
    params = model.init(jax.random.key(0), shape)
    z = jax.random.normal(jax.random.key(1), (3, *shape))
    eps_hat = model.eps_hat_fn(params)(z, jnp.linspace(-5, 5, 3))
    assert eps_hat.shape == z.shape
    np.testing.assert_allclose(eps_hat, z)  # zero-initialised output + skip: ε̂ = z


def test_unet_without_skip_starts_at_zero_and_attention_everywhere_runs():
    model = VDM.from_config(_small(base_measure_skip=False, with_attention=True))
    params = model.init(jax.random.key(0), (4, 4, 3))
    z = jnp.ones((2, 4, 4, 3))
    out = model.network.apply(
        {"params": apply_form(model.network, params["net"])}, z, jnp.zeros((2,))
    )
    np.testing.assert_allclose(out, 0.0)
    n_attn = sum("AttnBlock" in k for k in params["net"])
    assert n_attn == 1 + 1 + 2  # after each of n_layer down, n_layer + 1 up, and the middle


def test_mlp_for_2d_data_and_class_conditioning():
    c = swirl2d.get_config("smoke")
    c.model.network, c.model.n_embd, c.model.fourier_octaves = "mlp", 16, 2
    c.model.class_conditional = True
    model = VDM.from_config(c, num_classes=3)
    params = model.init(jax.random.key(0), (2,))
    assert params["net"]["Conditioning_0"]["label_embed"]["embedding"].shape == (4, 16)
    z = jax.random.normal(jax.random.key(1), (5, 2))
    label = jnp.array([0, 1, 2, 3, 3])  # 3 = the null label
    out = model.eps_hat_fn(params, label=label)(z, jnp.zeros((5,)))
    assert out.shape == (5, 2) and jnp.all(jnp.isfinite(out))


def _eps_reference(head, z, out, gamma):
    """ε from a network output, from the definitions alone (float64 numpy, not vdm.core.diffusion):
    z = α x + σ ε with α² = sigmoid(−γ), σ² = sigmoid(γ); v = α ε − σ x; score = −ε / σ."""
    z, out = np.asarray(z, np.float64), np.asarray(out, np.float64)
    g = np.asarray(gamma, np.float64).reshape(-1, *([1] * (z.ndim - 1)))
    alpha, sigma = np.sqrt(1 / (1 + np.exp(g))), np.sqrt(1 / (1 + np.exp(-g)))
    if head == "x0":
        return (z - alpha * out) / sigma
    if head == "v":
        return sigma * z + alpha * out
    return -sigma * out


@pytest.mark.parametrize("head", ["x0", "v", "score"])
def test_model_converts_every_head_to_eps(head):
    model = VDM.from_config(_small(head=head, base_measure_skip=False))
    params = model.init(jax.random.key(0), (4, 4, 1))
    params = jax.tree.map(lambda p: p + 0.01, params)  # a non-trivial output
    z, gamma = jax.random.normal(jax.random.key(1), (2, 4, 4, 1)), jnp.array([-3.0, 2.0])
    raw = model.network.apply({"params": apply_form(model.network, params["net"])}, z, gamma)
    assert float(jnp.std(raw)) > 1e-3  # the check below would be empty for a zero output
    np.testing.assert_allclose(
        model.eps_hat_fn(params)(z, gamma),
        _eps_reference(head, z, raw, gamma),
        rtol=2e-5,
        atol=2e-6,
    )


def test_network_rejects_wrong_rank():
    model = VDM.from_config(_small())
    with pytest.raises(ValueError, match=r"ScoreUNet expects images \(batch, H, W, C\)"):
        model.init(jax.random.key(0), (2,))


@pytest.mark.parametrize("schedule", ["fixed_linear", "cosine", "learned_scalar", "learned_net"])
def test_model_runs_with_every_schedule(schedule):
    c = _small(dropout=0.0)
    c.schedule.name = schedule
    model = VDM.from_config(c)
    params = model.init(jax.random.key(0), (4, 4, 1))
    batch = {"image": jnp.zeros((2, 4, 4, 1), jnp.int32)}
    terms = model.vlb_terms(params, jax.random.key(1), batch)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in terms.values())
    g0, g1 = model.endpoints(params)
    np.testing.assert_allclose([g0, g1], [c.schedule.gamma_min, c.schedule.gamma_max], rtol=1e-5)


def test_concat_mlp_is_the_colab_network():
    """The colab's ScoreNetwork: dense1/dense2 (512) on [z, γ̃, FF], n = 0..7 of 3 inputs."""
    c = swirl2d_colab.get_config()
    model = VDM.from_config(c)
    params = model.init(jax.random.key(0), (2,))
    net = params["net"]
    assert net["dense1"]["kernel"].shape == (3 + 2 * 8 * 3, 512)
    assert net["dense2"]["kernel"].shape == (512, 512)
    assert net["dense_out"]["kernel"].shape == (512, 2)
    assert count_params(net) == (51 * 512 + 512) + (512 * 512 + 512) + (512 * 2 + 2)
    # γ̃ ∈ [−1, 1]: the colab's ((γ − lb) / (ub − lb)) * 2 − 1, checked through its first layer.
    z = jnp.zeros((2, 2))
    gamma = jnp.array([-13.3, 5.0])
    h = jax.nn.swish(
        jnp.concatenate([z, jnp.array([[-1.0], [1.0]])], -1) @ net["dense1"]["kernel"][:3]
        + jnp.concatenate(
            [jnp.zeros((2, 24)), jnp.ones((2, 24))], -1
        )  # sin(0) = 0 for z; cos = 1; the γ̃ = ±1 features are sin/cos(2ⁿ2π·±1) = 0 / 1
        @ net["dense1"]["kernel"][3:]
        + net["dense1"]["bias"]
    )
    h = jax.nn.swish(h @ net["dense2"]["kernel"] + net["dense2"]["bias"])
    expect = h @ net["dense_out"]["kernel"] + net["dense_out"]["bias"]
    out = model.network.apply({"params": net}, z, gamma)
    np.testing.assert_allclose(out, expect, atol=2e-4)


def test_unet_conditioning_starts_at_zero_without_bias():
    """As the official ScoreUNet: cond_proj is zero-initialised and has no bias."""
    model = VDM.from_config(_small())
    params = model.init(jax.random.key(0), (4, 4, 1))
    projs = [v["cond_proj"] for k, v in params["net"].items() if k.startswith("ResnetBlock")]
    assert projs and all(set(p) == {"kernel"} for p in projs)
    assert all(float(jnp.abs(p["kernel"]).max()) == 0.0 for p in projs)


def test_attention_is_softmax_of_scaled_scores_times_values():
    """unet.attention against the definition, in float64 numpy, and against jax.nn's."""
    from vdm.networks.unet import attention

    q, k, v = (np.random.default_rng(i).normal(size=(2, 7, 4)) for i in range(3))
    s = np.einsum("bqc,bkc->bqk", q, k) / 2.0  # √c = 2
    w = np.exp(s - s.max(-1, keepdims=True))
    want = np.einsum("bqk,bkc->bqc", w / w.sum(-1, keepdims=True), v)
    args = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
    np.testing.assert_allclose(attention(*args), want, rtol=1e-5, atol=1e-6)
    ref = jax.nn.dot_product_attention(*(a[:, :, None] for a in args))[:, :, 0]
    np.testing.assert_allclose(attention(*args), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_attention,remat", [(False, False), (True, True)])
def test_scanned_blocks_give_the_unrolled_outputs_and_gradients(with_attention, remat):
    """model.scan_blocks stores the same parameter tree (checkpoints restore under either
    setting) and, from the same stored parameters, gives the same ε̂ and the same gradients;
    the converter round-trips exactly."""
    from vdm.networks.unet import stack_blocks, unstack_blocks

    kw = dict(with_attention=with_attention, remat=remat, dropout=0.0)
    scan = VDM.from_config(_small(scan_blocks="true", n_layer=3, **kw))
    flat = VDM.from_config(_small(scan_blocks="false", n_layer=3, **kw))
    assert scan.network.scan_blocks and not flat.network.scan_blocks
    shape = (6, 6, 2)
    params = flat.init(jax.random.key(0), shape)
    stored = scan.stored_params(scan.init(jax.random.key(0), shape))
    assert jax.tree.structure(stored) == jax.tree.structure(params)
    leaves, tree = jax.tree.flatten(params)  # non-zero everywhere (the init zeroes outputs)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(
        tree, [0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )
    stacked = scan.applied_params(params)["net"]
    assert stacked["down"]["res"]["cond_proj"]["kernel"].shape[0] == 3
    assert stacked["up"]["res"]["cond_proj"]["kernel"].shape[0] == 4
    back = unstack_blocks(stack_blocks(params["net"], 3, with_attention), 3, with_attention)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back, params["net"]))

    z = jax.random.normal(jax.random.key(2), (3, *shape))
    gamma = jnp.array([-6.0, 0.0, 4.0])

    def loss(p, model):  # of the stored parameters, as a checkpoint holds them
        return jnp.sum(jnp.square(model.eps_hat_fn(model.applied_params(p), train=True)(z, gamma)))

    np.testing.assert_allclose(
        scan.eps_hat_fn(scan.applied_params(params))(z, gamma),
        flat.eps_hat_fn(params)(z, gamma),
        atol=1e-5,
    )
    g_scan, g_flat = jax.grad(loss)(params, scan), jax.grad(loss)(params, flat)
    assert jax.tree.structure(g_scan) == jax.tree.structure(g_flat)
    scale = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(g_flat))
    for a, b in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g_flat), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_scan_blocks_bad_values_are_one_line():
    from vdm.networks import resolve_scan_blocks
    from vdm.run.config import ConfigError, validate

    assert resolve_scan_blocks("auto", "cpu") is False and resolve_scan_blocks("auto", "gpu")
    assert resolve_scan_blocks("True") is True and resolve_scan_blocks(False) is False
    c = _small(scan_blocks="yes")
    with pytest.raises(ConfigError, match=r"model.scan_blocks must be one of \['auto', 'true'"):
        validate(c)
    with pytest.raises(ConfigError, match="model.scan_blocks='true' is implemented for the"):
        validate(_small(network="mlp", scan_blocks="true"))
