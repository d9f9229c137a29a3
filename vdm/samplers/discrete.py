"""Fixed-step samplers on a γ grid, each a `lax.scan` over the steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm.core import diffusion
from vdm.samplers.common import (
    example_keys,
    gamma_grid,
    initial_noise,
    per_example,
    step_normal,
)


def _start(key, shape, offset, z_init):
    """Per-example keys, and z₁ ~ N(0, I) unless the caller gives `z_init`."""
    keys = example_keys(key, shape[0], offset)
    z_1 = initial_noise(keys, shape[1:]) if z_init is None else z_init
    return keys, z_1


def ancestral(key, eps_hat_fn, gamma_fn, shape, *, steps, grid="uniform_t", z_init=None, offset=0):
    """Ancestral sampling z_s ~ p(z_s | z_t) = q(z_s | z_t, x = x̂(z_t)) (VDM eq. 34; DDPM)."""
    keys, z = _start(key, shape, offset, z_init)
    gammas = gamma_grid(gamma_fn, steps, grid)
    n = shape[0]

    def step(z_t, i):
        g_t, g_s = per_example(gammas[i], n), per_example(gammas[i + 1], n)
        mean, var = diffusion.posterior_mean_var_eps(z_t, eps_hat_fn(z_t, g_t), g_s, g_t)
        return mean + jnp.sqrt(var) * step_normal(keys, i, shape[1:]), None

    z, _ = jax.lax.scan(step, z, jnp.arange(steps))
    return z, {"nfe": steps}


def ddim(
    key, eps_hat_fn, gamma_fn, shape, *, steps, eta=0.0, grid="uniform_t", z_init=None, offset=0
):
    """DDIM (Song, Meng & Ermon 2021, eq. 12): z_s = α_s x̂ + √(σ_s² − c²) ε̂ + c ξ with
    c² = η² Var q(z_s | z_t, x). η = 0 is deterministic; η = 1 is the ancestral sampler."""
    keys, z = _start(key, shape, offset, z_init)
    gammas = gamma_grid(gamma_fn, steps, grid)
    n = shape[0]

    def step(z_t, i):
        g_t, g_s = per_example(gammas[i], n), per_example(gammas[i + 1], n)
        eps = eps_hat_fn(z_t, g_t)
        x0 = diffusion.eps_to_x0(z_t, eps, g_t)
        alpha_s, sigma_s = diffusion.alpha_sigma(diffusion.bcast(g_s, z_t))
        var = (
            eta**2
            * sigma_s**2
            * diffusion.posterior_coeffs(diffusion.bcast(g_s, z_t), diffusion.bcast(g_t, z_t))
        )
        z_s = alpha_s * x0 + jnp.sqrt(sigma_s**2 - var) * eps
        return z_s + jnp.sqrt(var) * step_normal(keys, i, shape[1:]), None

    z, _ = jax.lax.scan(step, z, jnp.arange(steps))
    return z, {"nfe": steps}


def dpm_solver_pp_2m(
    key, eps_hat_fn, gamma_fn, shape, *, steps, grid="uniform_logsnr", z_init=None, offset=0
):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): multistep, data prediction, in λ = −γ/2.

    z_s = (σ_s/σ_t) z_t − α_s expm1(−h) D, h = λ_s − λ_t, with D = x̂ on the first step and
    D = (1 + 1/2r) x̂_t − (1/2r) x̂_prev after it (r = h_prev / h).
    """
    _, z = _start(key, shape, offset, z_init)
    gammas = gamma_grid(gamma_fn, steps, grid)
    n = shape[0]

    def step(carry, i):
        z_t, x_prev, h_prev = carry
        g_t, g_s = per_example(gammas[i], n), per_example(gammas[i + 1], n)
        x0 = diffusion.eps_to_x0(z_t, eps_hat_fn(z_t, g_t), g_t)
        h = 0.5 * (gammas[i] - gammas[i + 1])
        # a dimension whose γ did not move (now or on the last step) takes the first-order
        # step: r would be 0/0 or x/0 there (a vector γ can stall in one dimension)
        moved = (h > 0) & (h_prev > 0)
        r = jnp.where(moved, h_prev / jnp.where(moved, h, 1.0), 1.0)
        d = jnp.where((i == 0) | ~moved, x0, (1 + 0.5 / r) * x0 - (0.5 / r) * x_prev)
        alpha_s, sigma_s = diffusion.alpha_sigma(diffusion.bcast(g_s, z_t))
        _, sigma_t = diffusion.alpha_sigma(diffusion.bcast(g_t, z_t))
        z_s = sigma_s / sigma_t * z_t - alpha_s * jnp.expm1(-h) * d
        return (z_s, x0, h), None

    h_init = jnp.ones_like(gammas[0])  # one step size per dimension for a vector γ
    (z, _, _), _ = jax.lax.scan(step, (z, jnp.zeros_like(z), h_init), jnp.arange(steps))
    return z, {"nfe": steps}
