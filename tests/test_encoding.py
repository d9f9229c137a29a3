"""Data encodings (vdm/core/encoding.py `Encoding`) and the official 2-D swirl (vdm/data/toy.py)."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import data
from vdm.configs import swirl2d_colab
from vdm.core import elbo
from vdm.core.gmm import GaussianMixture
from vdm.eval import likelihood
from vdm.run.config import ConfigError, validate


def test_official_swirl_is_the_colab_recipe_bit_for_bit():
    """The colab's cell, run as written (global legacy RNG), gives the same 1,024 uint8 points."""
    state = np.random.get_state()
    try:
        np.random.seed(0)
        n = 1024
        theta = np.sqrt(np.random.rand(n)) * 3 * np.pi
        r_a = 2 * theta + np.pi
        x = np.array([np.cos(theta) * r_a, np.sin(theta) * r_a]).T
        x = 4 * (x + 0.25 * np.random.randn(n, 2) + 30)
        colab = x.astype("uint8")
    finally:
        np.random.set_state(state)
    ours = data.swirl_official()
    assert ours.dtype == np.uint8 and ours.shape == (1024, 2)
    np.testing.assert_array_equal(ours, colab)
    # Pinned, so a change of numpy's legacy stream would be noticed.
    assert hashlib.sha256(ours.tobytes()).hexdigest()[:16] == SWIRL_SHA256_PREFIX


SWIRL_SHA256_PREFIX = "f5135479494af1a3"  # of the uint8 bytes; first points (172,164), (109,195)


def test_swirl_config_trains_and_evaluates_on_the_same_points():
    c = swirl2d_colab.get_config()
    train, test = data.load_split(c.data, "train"), data.load_split(c.data, "test")
    assert len(train) == len(test) == 1024
    np.testing.assert_array_equal(train.get(np.arange(1024))["image"], data.swirl_official())
    mean, std = data.channel_stats(train)
    x = data.swirl_official().astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(std, x.std(0))  # numpy's default ddof=0, as the colab


def test_standardize_encodes_decodes_and_normalises_per_channel():
    enc = elbo.Encoding.standardize(256, [100.0, 50.0], [40.0, 10.0])
    x = jnp.array([[0, 255], [100, 50], [37, 3]])
    f = enc.encode(x)
    np.testing.assert_allclose(f, (np.asarray(x) - [100.0, 50.0]) / [40.0, 10.0], rtol=1e-6)
    np.testing.assert_array_equal(enc.to_integers(f), x)
    np.testing.assert_allclose(enc.bin_width, [1 / 40.0, 1 / 10.0])
    logp = elbo.decoder_logprobs(f, jnp.full((3,), -6.0), enc)
    assert logp.shape == (3, 2, 256)
    np.testing.assert_allclose(jax.nn.logsumexp(logp, axis=-1), 0.0, atol=1e-5)
    # The most likely value is the encoded one, for each channel's own bin width.
    np.testing.assert_array_equal(jnp.argmax(logp, -1), x)


def test_bin_centres_is_the_papers_encoding():
    enc = elbo.Encoding.bin_centres(17)
    x = jnp.arange(17)
    np.testing.assert_allclose(enc.encode(x), (2 * np.arange(17) + 1) / 17 - 1, atol=1e-6)
    np.testing.assert_allclose(elbo.encode(x, elbo.Encoding.bin_centres(17)), enc.encode(x))
    np.testing.assert_array_equal(enc.to_integers(enc.encode(x)), x)


@pytest.mark.parametrize("encoding", ["bin_centres", "standardize"])
def test_elbo_is_a_valid_bound_under_each_encoding(encoding):
    """Σ_x exp(−E[L(x)]) ≤ Σ_x p(x) = 1 over the whole vocab: the bound of a normalised model.

    Data uniform on V = 5 values; the denoiser is exact for that data (a mixture of narrow
    Gaussians at the encoded values), so the model is nearly the data and the sum is near 1.
    """
    vocab = 5
    values = np.arange(vocab)
    enc = elbo.make_encoding(encoding, vocab, values.mean(keepdims=True), values.std(keepdims=True))
    centres = np.asarray(enc.encode(values[:, None]))
    gmm = GaussianMixture(centres, np.full(vocab, 1e-4), np.full(vocab, 1.0 / vocab))
    gamma_fn = lambda t: -13.3 + 18.3 * t  # noqa: E731
    n = 8192

    @jax.jit
    def mean_bound(x_int, key):
        x = jnp.full((n, 1), x_int)
        terms = elbo.vlb_terms(key, x, gamma_fn, gmm.eps_hat, encoding=enc)
        total = terms["recon"] + terms["prior"] + terms["diffusion"]
        return jnp.mean(total), jnp.std(total) / jnp.sqrt(n)

    bounds = [mean_bound(v, jax.random.key(v)) for v in range(vocab)]
    mass = sum(np.exp(-float(m)) for m, _ in bounds)
    se = max(float(s) for _, s in bounds)
    assert mass <= 1.0 + 4 * se, (mass, bounds)
    assert mass > 0.95, (mass, bounds)


def test_pf_ode_cell_volume_follows_the_encoding():
    enc = elbo.Encoding.standardize(256, [0.0, 0.0], [40.0, 10.0])
    np.testing.assert_allclose(
        likelihood.log_bin_volume((2,), enc), np.log(1 / 40) + np.log(1 / 10), rtol=1e-6
    )
    np.testing.assert_allclose(
        likelihood.log_bin_volume((4, 4, 1), elbo.Encoding.bin_centres(256)), 16 * np.log(2 / 256)
    )


def test_config_rejects_an_unknown_encoding_and_a_skip_on_other_heads():
    c = swirl2d_colab.get_config("smoke")
    c.data.encoding = "zscore"
    with pytest.raises(ConfigError, match=r"data.encoding must be one of \['bin_centres'"):
        validate(c)
    c = swirl2d_colab.get_config("smoke")
    c.model.base_measure_skip, c.model.head = True, "score"
    with pytest.raises(ConfigError, match="model.base_measure_skip .* model.head='score'"):
        validate(c)
