"""Layers shared by the denoising networks."""

from __future__ import annotations

import math

import flax.linen as nn
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


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding of a scalar per example (Vaswani et al. 2017), shape (batch, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def normalized_gamma(gamma_t: jax.Array, gamma_min: float, gamma_max: float) -> jax.Array:
    """(γ_t − γ_min) / (γ_max − γ_min): the network's time input, ≈ t for a linear schedule."""
    return (gamma_t - gamma_min) / (gamma_max - gamma_min)


class Conditioning(nn.Module):
    """The conditioning vector: embedded normalised γ_t, plus optional labels, through an MLP.

    Labels run over [0, num_classes]; the extra value num_classes is the "null" label used for
    classifier-free guidance (dropped labels and unconditional sampling).
    """

    n_embd: int
    num_classes: int = 0
    n_cond_flags: int = 0

    @nn.compact
    def __call__(self, t_norm, label=None, flags=None):
        emb = timestep_embedding(t_norm * 1000.0, self.n_embd)
        if self.num_classes:
            if label is None:
                label = jnp.full(t_norm.shape, self.num_classes, jnp.int32)
            emb = emb + nn.Embed(self.num_classes + 1, self.n_embd, name="label_embed")(label)
        if self.n_cond_flags:
            flags = jnp.zeros(t_norm.shape + (self.n_cond_flags,)) if flags is None else flags
            emb = emb + nn.Dense(self.n_embd, name="flag_embed")(flags.astype(jnp.float32))
        emb = nn.swish(nn.Dense(4 * self.n_embd, name="dense0")(emb))
        return nn.swish(nn.Dense(4 * self.n_embd, name="dense1")(emb))


def zeros_dense(features: int, name: str | None = None) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.zeros, name=name)
