"""Reverse-time SDE samplers (Song et al. 2021) for the VP process, written in γ-time.

Forward, per unit of γ: dz = −½ σ² z dγ + σ dW. Reverse (dγ < 0):
dz = (−½ σ² z + σ ε̂) dγ + σ dW̄, using ∇ log p = −ε̂/σ.
"""

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


def _em_step(eps_hat_fn, z, g_t, g_s, noise):
    """One Euler–Maruyama step of the reverse SDE from γ_t down to γ_s."""
    _, sigma = diffusion.alpha_sigma(diffusion.bcast(g_t, z))
    drift = -0.5 * sigma**2 * z + sigma * eps_hat_fn(z, g_t)
    dg = diffusion.bcast(g_s - g_t, z)
    return z + drift * dg + sigma * jnp.sqrt(-dg) * noise


def euler_maruyama(
    key, eps_hat_fn, gamma_fn, shape, *, steps, grid="uniform_t", z_init=None, offset=0
):
    """Euler–Maruyama on the reverse-time SDE."""
    return predictor_corrector(
        key,
        eps_hat_fn,
        gamma_fn,
        shape,
        steps=steps,
        grid=grid,
        z_init=z_init,
        offset=offset,
        n_corrector=0,
    )


def langevin(eps_hat_fn, z, gamma, noise, snr):
    """Langevin corrector step z ← z + δ ∇log p + √(2δ) ξ with a target signal-to-noise ratio r
    (Song et al. 2021, Alg. 5: δ = 2 (r ‖ξ‖ / ‖∇log p‖)²).

    ‖ξ‖ / ‖∇log p‖ is replaced by its typical value σ (∇log p = −ε̂/σ and ‖ε̂‖ ≈ ‖ξ‖): per-example
    norms of a few dimensions are too noisy to set a step (a near-zero score gives a huge one),
    and batch-averaged norms would make samples depend on the batch.
    """
    _, sigma = diffusion.alpha_sigma(diffusion.bcast(gamma, z))
    score = -eps_hat_fn(z, gamma) / sigma
    step = 2.0 * (snr * sigma) ** 2
    return z + step * score + jnp.sqrt(2.0 * step) * noise


def predictor_corrector(
    key,
    eps_hat_fn,
    gamma_fn,
    shape,
    *,
    steps,
    grid="uniform_t",
    z_init=None,
    offset=0,
    n_corrector=1,
    snr=0.16,
):
    """Predictor–corrector sampling: an Euler–Maruyama predictor, then `n_corrector` Langevin
    steps at the new noise level (Song et al. 2021, Alg. 1 with the VP SDE)."""
    keys = example_keys(key, shape[0], offset)
    z = initial_noise(keys, shape[1:]) if z_init is None else z_init
    gammas = gamma_grid(gamma_fn, steps, grid)
    n = shape[0]

    def step(z, i):
        g_t, g_s = per_example(gammas[i], n), per_example(gammas[i + 1], n)
        base = i * (n_corrector + 1)
        z = _em_step(eps_hat_fn, z, g_t, g_s, step_normal(keys, base, shape[1:]))
        for j in range(n_corrector):
            z = langevin(eps_hat_fn, z, g_s, step_normal(keys, base + 1 + j, shape[1:]), snr)
        return z, None

    z, _ = jax.lax.scan(step, z, jnp.arange(steps))
    return z, {"nfe": steps * (1 + n_corrector)}
