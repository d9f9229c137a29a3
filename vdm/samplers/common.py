"""Pieces every sampler shares: per-example noise, time grids, denoising and decoding.

All samplers work on a decreasing grid of γ values (γ₁ → γ₀): the denoiser is conditioned on
γ, so the time variable t only matters through the grid it induces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm.core import diffusion, draws, elbo

GRIDS = ("uniform_t", "uniform_logsnr")


def example_keys(key: jax.Array, n: int, offset: int = 0) -> jax.Array:
    """One key per example, from its global index `offset + i`: samples do not depend on how
    examples are batched or sharded."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(n))


def step_normal(keys: jax.Array, step, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal noise for every example at sampler step `step`."""
    return jax.vmap(lambda k: draws.normal(jax.random.fold_in(k, step), shape))(keys)


def initial_noise(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """z₁ ~ N(0, I) per example, from a stream no sampler step uses."""
    return step_normal(keys, 2**30, shape)


def gamma_grid(gamma_fn, steps: int, grid: str = "uniform_t") -> jax.Array:
    """γ at steps + 1 decreasing times: t_i = 1 − i/steps, or uniform in log-SNR between the
    schedule's endpoints (γ is −log SNR, so 'uniform_logsnr' is linear in γ)."""
    if grid not in GRIDS:
        raise ValueError(f"sample.grid must be one of {list(GRIDS)}, got {grid!r}")
    if steps < 1:
        raise ValueError(f"sample.steps must be >= 1, got {steps}")
    if grid == "uniform_t":
        return gamma_fn(jnp.linspace(1.0, 0.0, steps + 1))
    g0, g1 = gamma_fn(jnp.zeros(())), gamma_fn(jnp.ones(()))
    if jnp.ndim(g0):
        raise ValueError(
            "sample.grid='uniform_logsnr' would step each dimension's γ on its own line, off "
            "the path γ(t) the model was trained on; with a γ per dimension use 'uniform_t'"
        )
    return jnp.linspace(g1, g0, steps + 1)


def per_example(v: jax.Array, n: int) -> jax.Array:
    """γ at one time as one value per example: shape (n,) for a scalar schedule, (n, *D) for
    one with a γ per data dimension (every formula downstream is elementwise in γ)."""
    return jnp.broadcast_to(v, (n,) + jnp.shape(v))


def denoise(eps_hat_fn, z: jax.Array, gamma: jax.Array) -> jax.Array:
    """Tweedie's final step: x̂ = E[x | z] = (z − σ ε̂) / α."""
    return diffusion.eps_to_x0(z, eps_hat_fn(z, gamma), gamma)


def decode(z_0: jax.Array, gamma_0: jax.Array, encoding: elbo.Encoding) -> jax.Array:
    """The most likely integers under the exact decoder p(x | z₀) (VDM eq. 8)."""
    return jnp.argmax(elbo.decoder_logprobs(z_0, gamma_0, encoding), axis=-1)
