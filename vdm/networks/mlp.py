"""An MLP denoiser for low-dimensional data (the 2-D swirl, Gaussian mixtures)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vdm.networks.layers import Conditioning, fourier_features, normalized_gamma, zeros_dense


class MLP(nn.Module):
    """Residual MLP on flat vectors (batch, D), conditioned like the ScoreUNet."""

    n_embd: int
    n_layer: int
    gamma_min: float
    gamma_max: float
    dropout: float = 0.0
    fourier: bool = False
    fourier_min: int = 6
    fourier_max: int = 7
    base_measure_skip: bool = False
    num_classes: int = 0
    n_cond_flags: int = 0

    @nn.compact
    def __call__(self, z, gamma_t, label=None, flags=None, train: bool = False):
        if z.ndim != 2:
            raise ValueError(f"MLP expects flat vectors (batch, D), got shape {z.shape}")
        t_norm = normalized_gamma(gamma_t, self.gamma_min, self.gamma_max)
        cond = Conditioning(self.n_embd, self.num_classes, self.n_cond_flags)(t_norm, label, flags)
        h = z
        if self.fourier:
            h = jnp.concatenate([z, fourier_features(z, self.fourier_min, self.fourier_max)], -1)
        h = nn.Dense(self.n_embd, name="dense_in")(h)
        for i in range(self.n_layer):
            r = nn.swish(nn.LayerNorm(name=f"norm_{i}")(h)) + nn.Dense(self.n_embd)(cond)
            r = nn.Dense(self.n_embd)(nn.swish(nn.Dense(self.n_embd)(r)))
            h = h + nn.Dropout(self.dropout, deterministic=not train)(r)
        out = zeros_dense(z.shape[-1], name="dense_out")(nn.swish(h))
        return z + out if self.base_measure_skip else out
