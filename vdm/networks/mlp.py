"""An MLP denoiser for low-dimensional data (the 2-D swirl, Gaussian mixtures)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vdm.networks.layers import (
    Conditioning,
    Dropout,
    FourierFeatures,
    fourier_features,
    fourier_frequencies,
    gamma_inputs,
    zeros_dense,
)


class MLP(nn.Module):
    """Residual MLP on flat vectors (batch, D), conditioned like the ScoreUNet."""

    n_embd: int
    n_layer: int
    gamma_min: float
    gamma_max: float
    dropout: float = 0.0
    fourier: bool = False
    fourier_top_n: float = 7.0
    fourier_octaves: int = 2
    fourier_gate: str = "none"
    base_measure_skip: bool = False
    num_classes: int = 0
    n_cond_flags: int = 0
    gamma_map_input: bool = False

    @nn.compact
    def __call__(self, z, gamma_t, label=None, flags=None, train: bool = False):
        if z.ndim != 2:
            raise ValueError(f"MLP expects flat vectors (batch, D), got shape {z.shape}")
        t_norm, gamma_map = gamma_inputs(
            gamma_t, self.gamma_min, self.gamma_max, z if self.gamma_map_input else None
        )
        cond = Conditioning(self.n_embd, self.num_classes, self.n_cond_flags)(t_norm, label, flags)
        h = z
        if self.fourier:
            h = FourierFeatures(self.fourier_top_n, self.fourier_octaves, self.fourier_gate)(
                z, gamma_t
            )
        if gamma_map is not None:  # a γ per dimension: its map as extra inputs
            h = jnp.concatenate([h, gamma_map.astype(h.dtype)], axis=-1)
        h = nn.Dense(self.n_embd, name="dense_in")(h)
        for i in range(self.n_layer):
            r = nn.swish(nn.LayerNorm(name=f"norm_{i}")(h)) + nn.Dense(self.n_embd)(cond)
            r = nn.Dense(self.n_embd)(nn.swish(nn.Dense(self.n_embd)(r)))
            h = h + Dropout(self.dropout, deterministic=not train)(r)
        out = zeros_dense(z.shape[-1], name="dense_out")(nn.swish(h))
        return z + out if self.base_measure_skip else out


class ConcatMLP(nn.Module):
    """The official 2-D colab's denoiser: a plain swish MLP on [z, γ̃, FF(z, γ̃)].

    γ̃ = 2 (γ_t − γ_min) / (γ_max − γ_min) − 1 ∈ [−1, 1] is concatenated to z, Fourier features
    of both at 2ⁿ · 2π (n = 0..7 in the colab) are appended, then n_layer Dense(n_embd) + swish
    layers and a Dense output with the default initialisation (google-research/vdm,
    colab/2D_VDM_Example.ipynb, `ScoreNetwork`). No conditioning MLP, no normalisation.
    """

    n_embd: int
    n_layer: int
    gamma_min: float
    gamma_max: float
    dropout: float = 0.0
    fourier: bool = True
    fourier_top_n: float = 7.0
    fourier_octaves: int = 8
    fourier_gate: str = "none"
    base_measure_skip: bool = False
    num_classes: int = 0
    n_cond_flags: int = 0

    @nn.compact
    def __call__(self, z, gamma_t, label=None, flags=None, train: bool = False):
        if z.ndim != 2:
            raise ValueError(f"ConcatMLP expects flat vectors (batch, D), got shape {z.shape}")
        if self.num_classes or self.n_cond_flags or self.fourier_gate != "none":
            raise ValueError(
                "model.network='concat_mlp' (the colab's MLP) takes no labels, flip flags or "
                f"model.fourier_gate (got classes={self.num_classes}, flags={self.n_cond_flags}, "
                f"gate={self.fourier_gate!r})"
            )
        t_norm, gamma_map = gamma_inputs(gamma_t, self.gamma_min, self.gamma_max)
        g = 2.0 * (t_norm[:, None] if gamma_map is None else gamma_map) - 1.0
        h = jnp.concatenate([z, g.astype(z.dtype)], axis=-1)
        if self.fourier:
            freqs = fourier_frequencies(self.fourier_top_n, self.fourier_octaves)
            h = jnp.concatenate([h, fourier_features(h, freqs)], axis=-1)
        for i in range(self.n_layer):
            h = nn.swish(nn.Dense(self.n_embd, name=f"dense{i + 1}")(h))
            h = Dropout(self.dropout, deterministic=not train)(h)
        out = nn.Dense(z.shape[-1], name="dense_out")(h)
        return z + out if self.base_measure_skip else out
