"""Layers shared by the denoising networks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def fourier_features(z: jax.Array, n_min: int, n_max: int) -> jax.Array:
    """[sin(2ⁿ π z), cos(2ⁿ π z)] for n = n_min, …, n_max on the last axis  (VDM §3.3, eq. 20).

    Returns shape z.shape[:-1] + (2 (n_max − n_min + 1) z.shape[-1],); concatenate it to z.
    High frequencies let the network resolve the fine bin structure of 8-bit data.
    """
    if n_max < n_min:
        raise ValueError(f"model.fourier_max must be >= model.fourier_min, got {n_min}, {n_max}")
    freqs = 2.0 ** jnp.arange(n_min, n_max + 1, dtype=jnp.float32) * math.pi
    h = (z[..., None] * freqs).reshape(z.shape[:-1] + (-1,))
    return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)
