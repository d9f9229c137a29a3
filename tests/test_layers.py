"""Shared network layers (vdm/networks/layers.py), pinned against the official code's values."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.configs import default
from vdm.networks import resolve_fourier_top_n
from vdm.networks.layers import (
    fourier_features,
    fourier_frequencies,
    fourier_top_n,
    timestep_embedding,
)

# google-research/vdm model_vdm.py: ScoreUNet uses Base2FourierFeatures(start=6, stop=8), whose
# frequencies are 2.**n * 2 * pi for n in range(6, 8): written out, not re-derived.
OFFICIAL_SCOREUNET_FREQS = [402.1238596594935, 804.247719318987]


def test_default_config_gives_the_official_frequencies_for_8bit_data():
    c = default.get_config()
    n_top = resolve_fourier_top_n(c.model, 256)
    freqs = fourier_frequencies(n_top, c.model.fourier_octaves)
    np.testing.assert_allclose(freqs, OFFICIAL_SCOREUNET_FREQS, rtol=1e-12)


@pytest.mark.parametrize("vocab", [2, 17, 32, 100, 256, 1024])
def test_top_feature_has_a_period_of_one_bin_for_any_vocab(vocab):
    """sin(ω f) of the top feature repeats after exactly one bin of the encoded data."""
    top = fourier_frequencies(fourier_top_n(vocab), 3)[-1]
    bin_width = 2.0 / vocab  # neighbouring bin centres (2x + 1)/V − 1
    np.testing.assert_allclose(2 * math.pi / top, bin_width, rtol=1e-12)
    # The features of neighbouring bin centres agree; half a bin apart they are opposite.
    f = jnp.array([[0.5 / vocab - 1.0]])
    same = fourier_features(f + bin_width, np.array([top])) - fourier_features(f, np.array([top]))
    half = fourier_features(f + bin_width / 2, np.array([top]))[0, 0]
    np.testing.assert_allclose(same, 0.0, atol=1e-4)
    np.testing.assert_allclose(half, -fourier_features(f, np.array([top]))[0, 0], atol=1e-4)


def test_config_override_of_the_top_exponent():
    c = default.get_config()
    c.model.fourier_top_n = 6.0  # the project's earlier, one-octave-low choice
    freqs = fourier_frequencies(resolve_fourier_top_n(c.model, 256), 2)
    np.testing.assert_allclose(freqs, [64 * math.pi, 128 * math.pi])


def test_feature_layout_matches_the_official_base2_features():
    """Channel-major, all sines then all cosines: the official `Base2FourierFeatures` layout."""
    z = np.array([[0.25, -0.5, 0.125]])
    freqs = np.array([1.0, 2.0, 4.0]) * 2 * np.pi
    w = np.tile(freqs[None, :], (1, 3))
    h = np.repeat(z, 3, axis=-1) * w
    expect = np.concatenate([np.sin(h), np.cos(h)], axis=-1)
    np.testing.assert_allclose(fourier_features(jnp.asarray(z), freqs), expect, atol=1e-5)


def test_coherence_gate_is_the_expected_feature_of_a_noisy_input():
    """E[sin(ω z) | x] = exp(−½ ω² σ²) sin(ω α x) for z = α x + σ ε: check by Monte Carlo."""
    rng = np.random.default_rng(0)
    x, alpha, sigma, omega = 0.3, 0.9, 0.02, 64 * np.pi
    z = alpha * x + sigma * rng.standard_normal(400_000)
    mc = np.mean(np.sin(omega * z))
    gated = fourier_features(jnp.array([[alpha * x]]), np.array([omega]), sigma=jnp.array(sigma))
    assert abs(float(gated[0, 0]) - mc) < 4 * np.std(np.sin(omega * z)) / np.sqrt(z.size)
    ungated = fourier_features(jnp.array([[alpha * x]]), np.array([omega]))
    assert abs(float(ungated[0, 0])) > abs(float(gated[0, 0])) + 0.1


def test_timestep_embedding_matches_the_official_fairseq_form():
    """Frequencies 10000^(−i/(half − 1)): the lowest is exactly 1/10000 (model_vdm.py)."""
    t = jnp.array([0.0, 0.37, 1000.0])
    emb = np.asarray(timestep_embedding(t, 8))
    freqs = np.exp(-np.log(10000) * np.arange(4) / 3)
    np.testing.assert_allclose(freqs[-1], 1e-4)
    expect = np.concatenate(
        [np.sin(np.asarray(t)[:, None] * freqs), np.cos(np.asarray(t)[:, None] * freqs)], 1
    )
    np.testing.assert_allclose(emb, expect, atol=1e-4, rtol=1e-5)


def test_fourier_bad_octaves_is_a_clear_error():
    with pytest.raises(ValueError, match="model.fourier_octaves must be >= 1"):
        fourier_frequencies(7.0, 0)


@pytest.mark.parametrize("channels, groups", [(8, 8), (6, 6), (64, 32), (96, 32)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_group_norm_normalises_each_group_with_float32_statistics(channels, groups, dtype):
    from vdm.networks.unet import _groups, group_norm

    assert _groups(channels) == groups
    x = (jax.random.normal(jax.random.key(0), (3, 4, 4, channels)) * 3 + 1).astype(dtype)
    gn = group_norm(channels, dtype)
    params = gn.init(jax.random.key(1), x)
    # the parameter tree checkpoints hold: one scale and one bias per channel
    assert jax.tree.map(jnp.shape, params) == {
        "params": {"scale": (channels,), "bias": (channels,)}
    }
    y = gn.apply(params, x)
    assert y.dtype == dtype
    # unit scale, zero bias: every (example, group) has mean 0 and variance v / (v + 1e-6)
    yg = np.float32(y).reshape(3, -1, groups, channels // groups)
    xg = np.float64(np.float32(x)).reshape(yg.shape)
    var = xg.var(axis=(1, 3))
    tol = 1e-4 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(yg.mean(axis=(1, 3)), 0.0, atol=tol)
    np.testing.assert_allclose(yg.var(axis=(1, 3)), var / (var + 1e-6), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape, groups", [((2, 6, 5, 8), 4), ((3, 4, 4, 64), 32)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_affine_group_norm_is_flaxs_with_the_same_parameters(shape, groups, dtype):
    from vdm.networks.layers import GroupNorm

    x = (jax.random.normal(jax.random.key(0), shape) * 3 + 1).astype(dtype)
    ours, theirs = GroupNorm(groups, dtype=dtype), nn.GroupNorm(groups, dtype=dtype)
    params = theirs.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, params
    )  # checkpoints written with flax's GroupNorm load as they are
    params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    got, want = ours.apply(params, x), theirs.apply(params, x)
    assert got.dtype == want.dtype == dtype
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=tol, atol=tol)

    def loss(module):
        return lambda p, x: jnp.sum(nn.swish(module.apply(p, x).astype(jnp.float32)) * x)

    if dtype == jnp.float32:
        for g, w in zip(
            jax.tree.leaves(jax.grad(loss(ours), argnums=(0, 1))(params, x)),
            jax.tree.leaves(jax.grad(loss(theirs), argnums=(0, 1))(params, x)),
            strict=True,
        ):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_dropout_keeps_each_element_with_its_rounded_probability_and_is_unbiased():
    from vdm.networks.layers import Dropout, dropout_keep, dropout_mask

    assert dropout_keep(0.1) == 58982 / 65536  # 1 − 0.1 to 2⁻¹⁶
    assert abs(dropout_keep(0.1) - 0.9) < 2**-17
    n = 400_001  # odd: the last word's second half is dropped
    mask = dropout_mask(jax.random.key(0), 0.1, (n,))
    keep = dropout_keep(0.1)
    assert mask.shape == (n,) and mask.dtype == jnp.bool_
    assert abs(float(mask.mean()) - keep) < 4 * np.sqrt(keep * (1 - keep) / n)
    # neighbours (the two halves of one random word) are independent
    m = np.asarray(mask, np.float64)
    assert abs(np.corrcoef(m[:-1:2], m[1::2])[0, 1]) < 4 / np.sqrt(n / 2)

    x = jnp.ones((64, 64, 8))
    y = Dropout(0.1).apply({}, x, rngs={"dropout": jax.random.key(1)})
    assert set(np.unique(np.asarray(y))) == {0.0, np.float32(1 / keep)}
    assert abs(float(y.mean()) - 1.0) < 4 * np.sqrt((1 - keep) / keep / x.size)
    assert Dropout(0.1, deterministic=True).apply({}, x) is x
    assert Dropout(0.0).apply({}, x) is x
    with pytest.raises(ValueError, match="model.dropout"):
        Dropout(1.0).apply({}, x, rngs={"dropout": jax.random.key(1)})


@pytest.mark.parametrize("flag_input", ["embed", "concat"])
def test_flags_enter_the_conditioning_as_configured(flag_input):
    """'concat' joins the flag to the time embedding before dense0 (google-research/vdm's
    ScoreUNet: dense0 has n_embd + 1 input rows); 'embed' adds a learned embedding. Flag 0
    under 'concat' is the plain model with dense0's last row dropped."""
    from vdm.networks.layers import Conditioning

    n = 8
    mod = Conditioning(n, n_cond_flags=1, flag_input=flag_input)
    t = jnp.array([0.1, 0.7])
    flags = jnp.array([[0.0], [1.0]])
    params = mod.init(jax.random.key(0), t, flags=flags)["params"]
    assert params["dense0"]["kernel"].shape == (n + (flag_input == "concat"), 4 * n)
    assert ("flag_embed" in params) == (flag_input == "embed")
    out = mod.apply({"params": params}, t, flags=flags)
    if flag_input == "concat":
        plain = dict(params, dense0=dict(params["dense0"], kernel=params["dense0"]["kernel"][:n]))
        unflagged = Conditioning(n).apply({"params": plain}, t)
        np.testing.assert_allclose(out[0], unflagged[0], rtol=1e-5, atol=1e-6)
        assert not np.allclose(out[1], unflagged[1])


def test_unknown_flag_input_is_a_clear_error():
    from vdm.networks.layers import Conditioning

    mod = Conditioning(4, n_cond_flags=1, flag_input="add")
    with pytest.raises(ValueError, match=r"model.flag_input must be one of \['embed', 'concat'\]"):
        mod.init(jax.random.key(0), jnp.zeros(2))
