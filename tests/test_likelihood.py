"""Likelihoods against exact answers (vdm/eval/likelihood.py): PF-ODE and ELBO on known data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.core import diffusion, elbo, schedules
from vdm.core.gmm import GaussianMixture
from vdm.eval import likelihood

# γ₁ = 12 makes q(z₁) = N(0, I) to ~1e-3 nats, so the prior is not what the tests measure.
_SCHED = schedules.make_schedule("fixed_linear", gamma_min=-10.0, gamma_max=12.0)
MU, S, D = 0.3, 0.5, 3
GAUSS = GaussianMixture(np.full((1, D), MU), np.array([S]), np.ones(1))


def gamma_fn(t):
    return _SCHED.apply({}, t)


def _z0(n, seed=0):
    g0 = gamma_fn(jnp.zeros(()))
    alpha, sigma = diffusion.alpha_sigma(g0)
    x = GAUSS.sample(jax.random.key(seed), n)
    return alpha * x + sigma * jax.random.normal(jax.random.key(seed + 1), x.shape), g0


def _pf_ode_error_per_dim(n=32, **options):
    z0, g0 = _z0(n)
    logp, info = jax.jit(
        lambda z: likelihood.pf_ode_log_prob(
            jax.random.key(0), GAUSS.eps_hat, gamma_fn, z, trace="exact", **options
        )
    )(z0)
    assert int(info["nfe"]) > 0
    return np.abs(np.asarray(logp - GAUSS.log_prob_t(z0, g0), np.float64)) / D


def test_pf_ode_log_likelihood_of_gaussian_data_is_exact():
    """Within 0.01 nats per dimension of the true log q(z₀), for every example."""
    err = _pf_ode_error_per_dim(rtol=1e-6, atol=1e-6)
    assert err.max() < 0.01 and err.mean() < 1e-3, err


def test_pf_ode_solved_as_one_batch_is_exact_too():
    """step_control="batch" (one step size for the batch, score_sde's way): the same bound."""
    err = _pf_ode_error_per_dim(rtol=1e-6, atol=1e-6, step_control="batch")
    assert err.max() < 0.01 and err.mean() < 1e-3, err
    with pytest.raises(ValueError, match=r"eval.pf_ode_step_control must be one of"):
        likelihood.pf_ode_log_prob(
            jax.random.key(0), GAUSS.eps_hat, gamma_fn, jnp.zeros((1, D)), step_control="joint"
        )


def test_hutchinson_trace_is_unbiased():
    z0, _ = _z0(4, seed=3)
    reps = 256
    zz = jnp.repeat(z0, reps, axis=0)  # each example with 256 different probes
    fn = jax.jit(
        lambda z, probe, trace: likelihood.pf_ode_log_prob(
            jax.random.key(1), GAUSS.eps_hat, gamma_fn, z, trace=trace, probe=probe
        )[0],
        static_argnums=(1, 2),
    )
    exact = np.asarray(fn(z0, "rademacher", "exact"))
    for probe in ("rademacher", "gaussian"):
        est = np.asarray(fn(zz, probe, "hutchinson")).reshape(4, reps)
        mean, se = est.mean(1), est.std(1, ddof=1) / math.sqrt(reps)
        assert np.all(np.abs(mean - exact) < 4 * se + 1e-3), (probe, mean, exact, se)
        if probe == "gaussian":
            assert np.all(est.std(1) > 0)  # the probes really vary
        else:  # this model's ∂f/∂z is diagonal, so vᵀJv = tr J for every v ∈ {±1}^D
            np.testing.assert_allclose(est, np.repeat(exact[:, None], reps, 1), atol=1e-4)


def test_gaussian_elbo_is_above_the_true_negative_log_likelihood():
    """−ELBO ≥ −log p(x) with the exact ε̂, a Gaussian decoder N(z₀/α₀, σ₀²/α₀²) at γ₀."""
    x = GAUSS.sample(jax.random.key(5), 20_000)
    k1, k2, k3 = jax.random.split(jax.random.key(6), 3)
    t = elbo.sample_t(k1, x.shape[0])
    eps = jax.random.normal(k2, x.shape)
    eps_0 = jax.random.normal(k3, x.shape)
    g0, g1 = gamma_fn(jnp.zeros(())), gamma_fn(jnp.ones(()))
    recon = jnp.sum(0.5 * jnp.log(2 * jnp.pi) + g0 / 2 + 0.5 * eps_0**2, -1)  # σ₀/α₀ = e^{γ₀/2}
    neg_elbo = (
        recon
        + elbo.prior_loss(x, g1)
        + elbo.diffusion_loss_continuous(x, t, eps, gamma_fn, GAUSS.eps_hat)
    )
    nll = -GAUSS.log_prob(x)
    gap = np.asarray(neg_elbo - nll, np.float64)
    mean, se = gap.mean(), gap.std() / math.sqrt(gap.size)
    assert mean > -3 * se and mean < 0.05 * D, (mean, se)


def test_discrete_elbo_bounds_the_exact_log_probability():
    """1-D data on 8 bins with known P; the exact ε̂ of a point-mass mixture at bin centres."""
    vocab = 8
    p = np.array([0.3, 0.05, 0.1, 0.02, 0.2, 0.08, 0.2, 0.05])
    enc = elbo.Encoding.bin_centres(vocab)
    centres = np.asarray(elbo.encode(jnp.arange(vocab), enc))[:, None]
    model = GaussianMixture(centres, np.zeros(vocab), p)
    n = 50_000  # the estimator is heavy-tailed: many draws for a standard error of ~0.05 bits
    for k in range(vocab):
        x_int = jnp.full((n, 1), k)
        terms = elbo.vlb_terms(jax.random.key(k), x_int, gamma_fn, model.eps_hat, encoding=enc)
        bits = np.asarray(sum(terms.values()), np.float64) / math.log(2)
        mean, se = bits.mean(), bits.std() / math.sqrt(n)
        exact = -math.log2(p[k])
        assert mean > exact - 4 * se, (k, mean, exact, se)
        assert mean < exact + 4 * se + 0.02, (k, mean, exact, se)  # and tight


def test_dequantization_stays_in_its_bin():
    x_int = jax.random.randint(jax.random.key(0), (1000, 3), 0, 17)
    enc = elbo.Encoding.bin_centres(17)
    y = likelihood.dequantize(jax.random.key(1), x_int, enc)
    centre = elbo.encode(x_int, enc)
    assert jnp.all(jnp.abs(y - centre) <= 1.0 / 17 + 1e-6)
    assert float(jnp.std(y - centre)) > 0.5 / 17 / math.sqrt(3)  # really spread over the bin


def test_pf_ode_bpd_refuses_a_non_finite_example_instead_of_averaging_it():
    class Split:
        def __len__(self):
            return 5

        def get(self, idx):
            return {"image": np.zeros((len(idx), 2), np.int32)}

    def step(params, x, offset):  # example 3 (global index) is −inf
        idx = offset + jnp.arange(x.shape[0])
        bpd = jnp.where(idx == 3, -jnp.inf, 1.0)
        return bpd, {"steps": jnp.ones(x.shape[0], jnp.int32)}

    with pytest.raises(FloatingPointError, match=r"1 of 5 test examples \(first indices \[3\]\)"):
        likelihood.pf_ode_bpd(None, None, Split(), 2, jax.random.key(0), step_fn=step)
