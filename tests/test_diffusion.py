"""The VP process and head conversions (vdm/core/diffusion.py)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.core import diffusion as D

CONVERT = {
    ("eps", "x0"): D.eps_to_x0,
    ("x0", "eps"): D.x0_to_eps,
    ("eps", "v"): D.eps_to_v,
    ("v", "eps"): D.v_to_eps,
    ("v", "x0"): D.v_to_x0,
    ("x0", "v"): D.x0_to_v,
}


def _draw(dtype=jnp.float32, n=512):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    z = jax.random.normal(k1, (n, 3), dtype)
    out = jax.random.normal(k2, (n, 3), dtype)
    gamma = jax.random.uniform(k3, (n,), dtype, -13.0, 5.0)
    return z, out, gamma


def test_alpha_sigma_variance_preserving_and_snr():
    gamma = jnp.linspace(-13.0, 5.0, 101)
    alpha, sigma = D.alpha_sigma(gamma)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    np.testing.assert_allclose(D.snr(gamma), alpha**2 / sigma**2, rtol=1e-5)


@pytest.mark.parametrize("src,dst", [p for p in itertools.permutations(D.HEADS, 2)])
def test_head_round_trip_exact_in_float64(src, dst):
    """Every direction between ε, x₀, v and score inverts exactly (algebra, float64)."""
    with jax.enable_x64(True):
        z, out, gamma = _draw(jnp.float64)
        eps = D.to_eps(src, z, out, gamma)
        there = D.from_eps(dst, z, eps, gamma)
        back = D.from_eps(src, z, D.to_eps(dst, z, there, gamma), gamma)
        np.testing.assert_allclose(back, out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pair", list(CONVERT))
def test_head_round_trip_float32_within_conditioning(pair):
    """In float32 a round trip loses at most ~1e-5 × the conversion's condition number.

    Going through x₀ divides by α (γ → 5) or σ (γ → −13): that amplification is inherent to
    the x₀ head, not a bug, so the tolerance scales with 1 / min(α, σ).
    """
    z, out, gamma = _draw()
    fwd, bwd = CONVERT[pair], CONVERT[pair[::-1]]
    back = bwd(z, fwd(z, out, gamma), gamma)
    alpha, sigma = D.alpha_sigma(gamma)
    kappa = (1.0 / jnp.minimum(alpha, sigma))[:, None]
    assert jnp.all(jnp.abs(back - out) <= 1e-5 * kappa * (1 + jnp.abs(z)))
    # The directions that never divide by σ are accurate to 1e-5 outright.
    if pair in {("eps", "v"), ("v", "eps")}:
        np.testing.assert_allclose(back, out, atol=1e-5 / float(jnp.min(alpha)))


def test_v_definition():
    x, eps, gamma = _draw()
    z = D.q_sample(x, gamma, eps)
    alpha, sigma = D.alpha_sigma(gamma[:, None])
    np.testing.assert_allclose(D.eps_to_v(z, eps, gamma), alpha * eps - sigma * x, atol=1e-4)


def test_score_of_optimal_eps_is_analytic_gaussian_score():
    """Tweedie: for x ~ N(μ, s²), −ε̂*/σ equals ∇ log N(z; αμ, α²s² + σ²)."""
    mu, s = 0.3, 0.7
    z, _, gamma = _draw()
    alpha, sigma = D.alpha_sigma(gamma[:, None])
    var = alpha**2 * s**2 + sigma**2
    eps_opt = sigma * (z - alpha * mu) / var  # E[ε | z_t]
    np.testing.assert_allclose(
        D.eps_to_score(eps_opt, gamma), -(z - alpha * mu) / var, rtol=1e-5, atol=1e-5
    )


def test_posterior_matches_gaussian_conditioning():
    """q(z_s | z_t, x) from the expm1 form equals direct Gaussian conditioning (float64)."""
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(1), 3)
        x = jax.random.normal(k[0], (64, 2), jnp.float64)
        z_t = jax.random.normal(k[1], (64, 2), jnp.float64)
        gamma_s = jax.random.uniform(k[2], (64,), jnp.float64, -10.0, 3.0)
        gamma_t = gamma_s + 0.5
        a_s, s_s = D.alpha_sigma(gamma_s[:, None])
        a_t, s_t = D.alpha_sigma(gamma_t[:, None])
        a_ts = a_t / a_s
        var_ts = s_t**2 - a_ts**2 * s_s**2
        # Joint Gaussian of (z_s, z_t) given x: z_t = a_ts z_s + noise(var_ts).
        mean_ref = a_s * x + a_ts * s_s**2 / s_t**2 * (z_t - a_t * x)
        var_ref = s_s**2 - (a_ts * s_s**2) ** 2 / s_t**2
        mean, var = D.posterior_mean_var(z_t, x, gamma_s, gamma_t)
        np.testing.assert_allclose(mean, mean_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(jnp.broadcast_to(var, var_ref.shape), var_ref, rtol=1e-9)
        eps = (z_t - a_t * x) / s_t
        mean_e, var_e = D.posterior_mean_var_eps(z_t, eps, gamma_s, gamma_t)
        np.testing.assert_allclose(mean_e, mean_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(var_e, var, rtol=1e-12)
        assert np.all(var_ts > 0)


def test_unknown_head_is_a_clear_error():
    with pytest.raises(ValueError, match=r"model.head must be one of .*'eps'.*got 'epsilon'"):
        D.to_eps("epsilon", jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros((1,)))
