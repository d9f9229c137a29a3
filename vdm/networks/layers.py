"""Layers shared by the denoising networks."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm.core.diffusion import alpha_sigma, bcast

FOURIER_GATES = ("none", "coherence")


def fourier_top_n(vocab_size: int) -> float:
    """n_top = log₂(V / 2): the exponent whose feature sin(2ⁿ · 2π f) has a period of one bin.

    Bin centres f = (2x + 1)/V − 1 lie 2/V apart, and the period of 2ⁿ · 2π is 2⁻ⁿ, so one bin
    is n = log₂(V/2): 7 for 8-bit data (the official ScoreUNet's top), 3.09 for 17 levels.
    """
    return math.log2(vocab_size / 2.0)


def fourier_frequencies(n_top: float, octaves: int) -> np.ndarray:
    """ω = 2ⁿ · 2π for n = n_top − octaves + 1, …, n_top, one octave apart, ascending.

    The official convention (google-research/vdm `Base2FourierFeatures(start, stop)`: n in
    range(start, stop)); the ScoreUNet's start=6, stop=8 is n_top = 7, octaves = 2.
    """
    if octaves < 1:
        raise ValueError(f"model.fourier_octaves must be >= 1, got {octaves}")
    return 2.0 ** (n_top - octaves + 1 + np.arange(octaves)) * 2.0 * np.pi


def fourier_features(z: jax.Array, freqs: np.ndarray, sigma: jax.Array | None = None) -> jax.Array:
    """[sin(ω z), cos(ω z)] for each frequency ω and channel of z  (VDM §3.3, App. C).

    Laid out as the official code does: channel-major (c₀ω₀, c₀ω₁, …, c₁ω₀, …), every sine
    then every cosine; shape z.shape[:-1] + (2 · len(freqs) · channels,). Concatenate to z.

    `sigma` (broadcastable to z, e.g. σ_t per example) scales each frequency's pair by its
    coherence exp(−½ ω² σ²): for z_t = α x + σ ε, E[sin(ω z_t) | x] = exp(−½ ω² σ²) sin(ω α x),
    so a feature whose period is far below the noise level carries only noise and is faded out.
    """
    w = jnp.asarray(freqs, z.dtype)
    h = (z[..., None] * w).reshape(z.shape[:-1] + (-1,))
    feats = jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)
    if sigma is None:
        return feats
    sigma = jnp.broadcast_to(jnp.asarray(sigma, z.dtype), z.shape)
    gate = jnp.exp(-0.5 * jnp.square(sigma[..., None] * w)).reshape(z.shape[:-1] + (-1,))
    return feats * jnp.concatenate([gate, gate], axis=-1)


class FourierFeatures(nn.Module):
    """Fourier features of z concatenated to it, optionally gated by the noise level σ_t."""

    n_top: float
    octaves: int
    gate: str = "none"

    def __call__(self, z: jax.Array, gamma_t: jax.Array) -> jax.Array:
        if self.gate not in FOURIER_GATES:
            raise ValueError(
                f"model.fourier_gate must be one of {FOURIER_GATES}, got {self.gate!r}"
            )
        sigma = None
        if self.gate == "coherence":
            _, sigma = alpha_sigma(bcast(gamma_t, z))
        freqs = fourier_frequencies(self.n_top, self.octaves)
        return jnp.concatenate([z, fourier_features(z, freqs, sigma)], axis=-1)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding of a scalar per example, shape (batch, dim).

    As the official VDM code (from fairseq / tensor2tensor): frequencies max_period^(−i/(h−1))
    for i < h = dim // 2, so they run from 1 down to exactly 1/max_period.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def normalized_gamma(gamma_t: jax.Array, gamma_min: float, gamma_max: float) -> jax.Array:
    """(γ_t − γ_min) / (γ_max − γ_min): the network's time input, ≈ t for a linear schedule."""
    return (gamma_t - gamma_min) / (gamma_max - gamma_min)


def gamma_inputs(gamma_t: jax.Array, gamma_min: float, gamma_max: float, map_like=None):
    """(t_norm per example, γ map or None): what a denoiser sees of the noise level.

    A γ per example gives its normalised value (`normalized_gamma`) and no map, or, given
    `map_like` (z), that value spread over z's shape as the map (`model.gamma_map_input`: a
    scalar schedule's denoiser with the same inputs as a per-dimension one's). A γ per data
    dimension (shape of z, MuLAN) gives its mean over the dimensions, strictly increasing in
    t, for the time embedding, and the normalised map itself, to enter as extra input
    channels: the network sees every dimension's noise level as well as the time.
    """
    t_norm = normalized_gamma(gamma_t, gamma_min, gamma_max)
    if t_norm.ndim <= 1:
        if map_like is None:
            return t_norm, None
        lead = t_norm.reshape(t_norm.shape + (1,) * (map_like.ndim - t_norm.ndim))
        return t_norm, jnp.broadcast_to(lead, map_like.shape)
    return jnp.mean(t_norm, axis=tuple(range(1, t_norm.ndim))), t_norm


FLAG_INPUTS = ("embed", "concat")


class Conditioning(nn.Module):
    """The conditioning vector: embedded normalised γ_t, plus optional labels, through an MLP.

    Labels run over [0, num_classes]; the extra value num_classes is the "null" label used for
    classifier-free guidance (dropped labels and unconditional sampling). Flags (0/1 per
    example, e.g. an augmentation's) enter as a learned embedding added to the time's
    (`flag_input='embed'`) or concatenated to it before the MLP ('concat': google-research/vdm's
    ScoreUNet, whose `dense0` takes [embedding, flag]).
    """

    n_embd: int
    num_classes: int = 0
    n_cond_flags: int = 0
    flag_input: str = "embed"

    @nn.compact
    def __call__(self, t_norm, label=None, flags=None):
        emb = timestep_embedding(t_norm * 1000.0, self.n_embd)
        if self.num_classes:
            if label is None:
                label = jnp.full(t_norm.shape, self.num_classes, jnp.int32)
            emb = emb + nn.Embed(self.num_classes + 1, self.n_embd, name="label_embed")(label)
        if self.flag_input not in FLAG_INPUTS:
            raise ValueError(
                f"model.flag_input must be one of {list(FLAG_INPUTS)}, got {self.flag_input!r}"
            )
        if self.n_cond_flags:
            flags = jnp.zeros(t_norm.shape + (self.n_cond_flags,)) if flags is None else flags
            flags = flags.astype(jnp.float32)
            if self.flag_input == "concat":
                emb = jnp.concatenate([emb, flags], axis=-1)
            else:
                emb = emb + nn.Dense(self.n_embd, name="flag_embed")(flags)
        emb = nn.swish(nn.Dense(4 * self.n_embd, name="dense0")(emb))
        return nn.swish(nn.Dense(4 * self.n_embd, name="dense1")(emb))


class GroupNorm(nn.Module):
    """Group normalisation written as one affine map per (example, channel): flax's values
    (ε = 1e-6, variance as E[x²] − E[x]² clipped at 0, statistics in float32) and parameters
    (`scale`, `bias`, one per channel), y = x · a + (β − μ a), a = γ / √(σ² + ε).

    The ScoreUNet's `group_norm="affine"`: its GroupNorm from 2026-12-03 to 12-06, kept so that
    .vdmz files coded then decode bit-exactly (their ε̂ depends on these float32 roundings).
    Measured faster than flax's in isolation when written, it gives whole train steps fewer
    steps/s (0.72× on digits with the XLA:CPU flag, 0.89× without; bench_group_norm.py):
    `flax.linen.GroupNorm` is the default again."""

    num_groups: int
    dtype: Any = jnp.float32
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, g = x.shape[-1], self.num_groups
        if c % g:
            raise ValueError(f"GroupNorm: {c} channels do not split into {g} groups")
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        xg = x.astype(jnp.float32).reshape(x.shape[0], -1, g, c // g)
        mean = jnp.mean(xg, axis=(1, 3), keepdims=True)
        var = jnp.mean(jnp.square(xg), axis=(1, 3), keepdims=True) - jnp.square(mean)
        a = jax.lax.rsqrt(jnp.maximum(var, 0.0) + self.epsilon) * scale.reshape(g, c // g)
        y = xg * a + (bias.reshape(g, c // g) - mean * a)
        return y.reshape(x.shape).astype(self.dtype)


DROPOUT_BITS = 16  # random bits per element of a dropout mask


def dropout_threshold(rate: float) -> int:
    """The integer t with P(keep) = t / 2¹⁶: (1 − rate) · 2¹⁶ rounded, kept within [1, 2¹⁶ − 1]
    so that the keep-mask is `bits < t` on 16-bit draws."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {rate}")
    return min(max(round((1.0 - rate) * 2**DROPOUT_BITS), 1), 2**DROPOUT_BITS - 1)


def dropout_keep(rate: float) -> float:
    """The keep probability a `Dropout` of `rate` draws: 1 − rate rounded to 2⁻¹⁶."""
    return dropout_threshold(rate) / 2**DROPOUT_BITS


def dropout_mask(key: jax.Array, rate: float, shape) -> jax.Array:
    """Bernoulli(`dropout_keep(rate)`) keep-mask of `shape`, from 16 random bits per element.

    Two elements share one 32-bit word of `jax.random.bits`: half the random bits of
    `jax.random.bernoulli` (a float32 uniform per element), and on XLA:CPU half the time,
    which on the official ScoreUNet configuration is ≈ 5 % of a train step. The rate moves
    by at most 2⁻¹⁷ (0.1 → 0.100006); `Dropout` scales by the exact keep probability.
    """
    n = math.prod(shape)
    words = jax.random.bits(key, ((n + 1) // 2,), jnp.uint32)
    halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:n]
    return (halves < dropout_threshold(rate)).reshape(shape)


class Dropout(nn.Module):
    """Inverted dropout (Srivastava et al., 2014): x · m / P(keep), m ~ `dropout_mask`; the
    identity when deterministic or at rate 0. Draws from the 'dropout' rng stream."""

    rate: float
    deterministic: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        keep = dropout_keep(self.rate)  # validates the rate, deterministic or not
        if self.deterministic or self.rate == 0.0:
            return x
        mask = dropout_mask(self.make_rng("dropout"), self.rate, x.shape)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def zeros_dense(features: int, name: str | None = None) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.zeros, name=name)
