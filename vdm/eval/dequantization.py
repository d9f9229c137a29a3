"""Dequantization for the probability-flow likelihood: q(z₀ | x) inside x's bin.

The PF-ODE gives a density p(z₀) over the continuous latent z₀. A discrete model follows from
the bins: with f the encoded x (`elbo.Encoding`, bin width Δ per channel) and
B(x) = α₀ · Π_d [f_d − Δ_d/2, f_d + Δ_d/2), let P(x) = ∫_{B(x)} p(z₀) dz₀.

Why this is a discrete model, for both encodings. The encoded values of neighbouring integers
are exactly Δ apart (`bin_centres`: f = (2x + 1)/V − 1, Δ = 2/V; `standardize`: f = (x − m)/s,
Δ = 1/s per channel), so the intervals [f − Δ/2, f + Δ/2) of the V values tile
[f(0) − Δ/2, f(V−1) + Δ/2) without overlap, per dimension; scaling by α₀ > 0 keeps them
disjoint. Hence Σ_x P(x) ≤ 1 (the mass outside the tiled box is given to no x: the model is
sub-normalised, so −log P(x) is an upper bound on the codelength of its normalised version).

Any q(z₀ | x) whose support lies inside B(x) gives
    P(x) ≥ E_q[p(z₀)/q(z₀ | x)]            (the integral of p over supp q ⊆ B(x))
    −log P(x) ≤ E_q[−log p(z₀) + log q(z₀ | x)]                          (Jensen)
    −log P(x) ≤ E[−log (1/K) Σ_k p(z₀⁽ᵏ⁾)/q(z₀⁽ᵏ⁾ | x)]  (importance-weighted, K draws),
the last non-increasing in K in expectation and tending to −log P(x) (Burda et al. 2016).

Two q's, each returning (z₀, log q(z₀ | x), E_q[log q]) per example:
- `uniform`: z₀ uniform on B(x), log q = −Σ_d log(α₀ Δ_d) (the classic dequantization).
- `truncated_normal` (i-DODE, Zheng et al. 2023): z₀ = α₀ f + σ₀ ε with ε ~ N(0, 1) truncated to
  [−τ_d, τ_d], τ_d = α₀ (Δ_d/2) / σ₀, so z₀/α₀ = f + (σ₀/α₀) ε never leaves the bin: the
  diffusion's own q(z₀ | x) restricted to the bin. log q = −(D/2) log(2π σ₀²) − ‖ε‖²/2 − Σ log Z_d,
  Z_d = erf(τ_d/√2); its expectation −(D/2)(1 + log 2πσ₀²) + Σ [τ_d φ(τ_d)/Z_d − log Z_d]
  (E ε² = 1 − 2τφ(τ)/Z on [−τ, τ]), usable in the K = 1 bound to remove log q's variance.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.lax import erf_inv as erfinv
from jax.scipy.special import erf

from vdm.core import diffusion, draws, elbo

DEQUANTIZATIONS = ("uniform", "truncated_normal")


class Dequantized(NamedTuple):
    """One draw per example: z₀ (B, …), log q(z₀ | x) (B,), E_q[log q(· | x)] (B,)."""

    z_0: jax.Array
    log_q: jax.Array
    expected_log_q: jax.Array


def _sum(x: jax.Array) -> jax.Array:
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def _bin_width(x_int: jax.Array, enc: elbo.Encoding) -> jax.Array:
    """Δ broadcast to x's shape (one per channel of the last axis, or shared)."""
    return jnp.broadcast_to(enc.bin_width, x_int.shape)


def dequantize(key: jax.Array, x_int: jax.Array, enc: elbo.Encoding) -> jax.Array:
    """Uniform dequantization in model space: y = f + (u − ½) Δ, u ~ U[0, 1)."""
    u = draws.uniform(key, x_int.shape)
    return enc.encode(x_int) + (u - 0.5) * enc.bin_width


def log_bin_volume(x_shape: tuple[int, ...], enc: elbo.Encoding) -> jax.Array:
    """Σ_d log Δ_d over one example's dimensions: the log-volume of one integer cell."""
    return jnp.sum(jnp.broadcast_to(jnp.log(enc.bin_width), x_shape))


def uniform(key: jax.Array, x_int: jax.Array, enc: elbo.Encoding, gamma_0) -> Dequantized:
    """z₀ = α₀ y, y uniform in x's bin: log q(z₀ | x) = −Σ_d log(α₀ Δ_d)."""
    alpha_0, _ = diffusion.alpha_sigma(gamma_0)
    z_0 = alpha_0 * dequantize(key, x_int, enc)
    log_q = -_sum(jnp.log(alpha_0 * _bin_width(x_int, enc)))
    return Dequantized(z_0, log_q, log_q)


def tau(x_int: jax.Array, enc: elbo.Encoding, gamma_0) -> jax.Array:
    """τ_d = α₀ (Δ_d/2) / σ₀ = (Δ_d/2) e^{−γ₀/2}: where ε is truncated, per dimension."""
    return 0.5 * _bin_width(x_int, enc) * jnp.exp(-0.5 * gamma_0)


def _log_z(t: jax.Array) -> jax.Array:
    """log Z = log P(|ε| ≤ τ) = log erf(τ/√2) of a standard normal."""
    return jnp.log(erf(t / math.sqrt(2.0)))


def _log_q_of_eps(eps, t, sigma_0) -> jax.Array:
    """Σ_d log of the truncated normal's density in z₀ = α₀ f + σ₀ ε, from ε itself."""
    log_density = -0.5 * jnp.square(eps) - 0.5 * math.log(2 * math.pi) - jnp.log(sigma_0)
    return _sum(log_density - _log_z(t))


def log_q_truncated_normal(z_0, x_int, enc: elbo.Encoding, gamma_0) -> jax.Array:
    """log q(z₀ | x) of the truncated normal at any z₀ (−∞ outside x's bin), per example.
    The bin's edge is taken 1e-4 wider (relative): recomputing ε from z₀ in float32 moves a
    draw at the edge by about 1e-5. (A draw's own log q comes from its ε, `truncated_normal`.)"""
    alpha_0, sigma_0 = diffusion.alpha_sigma(gamma_0)
    eps = (z_0 - alpha_0 * enc.encode(x_int)) / sigma_0
    t = tau(x_int, enc, gamma_0)
    inside = _sum(jnp.where(jnp.abs(eps) <= t * (1 + 1e-4), 0.0, -jnp.inf))
    return _log_q_of_eps(eps, t, sigma_0) + inside


def expected_log_q_truncated_normal(x_int, enc: elbo.Encoding, gamma_0) -> jax.Array:
    """E_q[log q(z₀ | x)] = −(D/2)(1 + log 2πσ₀²) + Σ_d [τ_d φ(τ_d)/Z_d − log Z_d]."""
    _, sigma_0 = diffusion.alpha_sigma(gamma_0)
    t = tau(x_int, enc, gamma_0)
    log_z = _log_z(t)
    phi = jnp.exp(-0.5 * jnp.square(t)) / math.sqrt(2 * math.pi)
    per_dim = -0.5 * (1 + math.log(2 * math.pi)) - jnp.log(sigma_0) + t * phi / jnp.exp(log_z)
    return _sum(per_dim - log_z)


def truncated_standard_normal(key: jax.Array, t: jax.Array) -> jax.Array:
    """ε ~ N(0, 1) truncated to [−τ, τ] elementwise (τ of t's shape), by inverse CDF:
    ε = √2 erf⁻¹(u erf(τ/√2)) with u uniform on the *open* interval (−1, 1), so that no draw
    lands on ±∞ or carries an atom at the edge, even where erf(τ/√2) rounds to 1 (τ ≳ 5.5)."""
    u = draws.uniform(key, t.shape, minval=-1.0, maxval=1.0)
    tiny = jnp.finfo(u.dtype).eps
    u = jnp.clip(u, -1.0 + tiny, 1.0 - tiny)
    eps = math.sqrt(2.0) * erfinv(u * erf(t / math.sqrt(2.0)))
    return jnp.clip(eps, -t, t)


def truncated_normal(key: jax.Array, x_int, enc: elbo.Encoding, gamma_0) -> Dequantized:
    """z₀ = α₀ f + σ₀ ε, ε ~ N(0, 1) truncated to [−τ, τ] per dimension (i-DODE); log q from
    the drawn ε (finite for every draw)."""
    alpha_0, sigma_0 = diffusion.alpha_sigma(gamma_0)
    t = tau(x_int, enc, gamma_0)
    eps = truncated_standard_normal(key, t)
    z_0 = alpha_0 * enc.encode(x_int) + sigma_0 * eps
    return Dequantized(
        z_0,
        _log_q_of_eps(eps, t, sigma_0),
        expected_log_q_truncated_normal(x_int, enc, gamma_0),
    )


_DRAW = {"uniform": uniform, "truncated_normal": truncated_normal}


def draw(name: str, key: jax.Array, x_int, enc: elbo.Encoding, gamma_0) -> Dequantized:
    """One draw of the dequantization named by `eval.dequantization`."""
    if name not in _DRAW:
        raise ValueError(
            f"eval.dequantization must be one of {list(DEQUANTIZATIONS)}, got {name!r}"
        )
    return _DRAW[name](key, x_int, enc, gamma_0)
