"""Noise schedules γ(t) = −log SNR(t) as small Flax modules with a common call `gamma(t) -> γ`.

`t` may have any shape; γ has the same shape. All schedules are strictly increasing in t on
[0, 1], so SNR decreases from exp(−γ(0)) to exp(−γ(1)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class FixedLinear(nn.Module):
    """γ(t) = γ_min + (γ_max − γ_min) t  (VDM §4, the fixed baseline)."""

    gamma_min: float
    gamma_max: float

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.gamma_min + (self.gamma_max - self.gamma_min) * jnp.asarray(
            t, jnp.result_type(float)
        )


class Cosine(nn.Module):
    """α_t = cos(π t′/2): γ(t) = 2 log tan(π t′/2) (Nichol & Dhariwal 2021), truncated.

    t′ = t_0 + (t_1 − t_0) t maps [0, 1] onto the stretch of the cosine schedule whose log-SNR
    lies in [γ_min, γ_max] (t_i = (2/π) atan(exp(γ_i / 2))). Unlike hard clipping, this keeps
    γ strictly increasing with γ(0) = γ_min and γ(1) = γ_max exactly.
    """

    gamma_min: float
    gamma_max: float

    def __call__(self, t: jax.Array) -> jax.Array:
        t0 = 2.0 / math.pi * math.atan(math.exp(self.gamma_min / 2))
        t1 = 2.0 / math.pi * math.atan(math.exp(self.gamma_max / 2))
        t_prime = t0 + (t1 - t0) * jnp.asarray(t, jnp.result_type(float))
        return 2.0 * jnp.log(jnp.tan(0.5 * math.pi * t_prime))


class LearnedScalar(nn.Module):
    """γ(t) = γ₀ + |w| t: a line with both endpoints learned (γ₁ = γ₀ + |w|)."""

    gamma_min: float
    gamma_max: float

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        gamma_0 = self.param("gamma_0", nn.initializers.constant(self.gamma_min), ())
        w = self.param("w", nn.initializers.constant(self.gamma_max - self.gamma_min), ())
        return gamma_0 + jnp.abs(w) * jnp.asarray(t, jnp.result_type(float))


class MonotoneDense(nn.Module):
    """Dense layer with non-negative weights |W|, hence non-decreasing in every input."""

    features: int
    kernel_init: Callable[..., Any] = nn.initializers.normal(stddev=0.01)
    bias_init: Callable[..., Any] = nn.initializers.zeros
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        y = x @ jnp.abs(kernel)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y


class LearnedNet(nn.Module):
    """The monotone network γ_η(t) of VDM App. H, with the endpoint normalisation of eq. 59.

    γ̃(t) = l₁(t) + l₃(φ(l₂(2t − 1))) / n_features, φ(h) = 2 sigmoid(h) − 1, with non-negative
    weights in l₁, l₂, l₃. With `normalize=True` (eq. 59):
        γ(t) = γ₀ + (γ₁ − γ₀) (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)),
    where γ₀, γ₁ are separate learned scalars, so the network only sets the *shape* (a map of
    [0, 1] onto itself) and the endpoints, on which the continuous-time VLB depends, are exact.
    With `normalize=False` γ(t) = γ̃(t), as in the original public code (its endpoints drift).
    """

    gamma_min: float
    gamma_max: float
    n_features: int = 1024
    normalize: bool = True

    def setup(self):
        self.l1 = MonotoneDense(
            1,
            kernel_init=nn.initializers.constant(self.gamma_max - self.gamma_min),
            bias_init=nn.initializers.constant(self.gamma_min),
        )
        self.l2 = MonotoneDense(self.n_features)
        self.l3 = MonotoneDense(1, use_bias=False)
        if self.normalize:
            self.gamma_0 = self.param("gamma_0", nn.initializers.constant(self.gamma_min), ())
            self.gamma_1 = self.param("gamma_1", nn.initializers.constant(self.gamma_max), ())

    def raw(self, t: jax.Array) -> jax.Array:
        """γ̃(t), the unnormalised network output."""
        t = jnp.asarray(t, jnp.result_type(float))[..., None]
        h = 2.0 * jax.nn.sigmoid(self.l2(2.0 * t - 1.0)) - 1.0
        return (self.l1(t) + self.l3(h) / self.n_features)[..., 0]

    def shape(self, t: jax.Array) -> jax.Array:
        """γ̂(t) = (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)) ∈ [0, 1]: the schedule's shape."""
        ends = self.raw(jnp.array([0.0, 1.0]))
        return (self.raw(t) - ends[0]) / (ends[1] - ends[0])

    def endpoints(self) -> tuple[jax.Array, jax.Array]:
        """(γ₀, γ₁), the learned endpoints of eq. 59."""
        if not self.normalize:
            raise ValueError(
                "endpoints() needs the normalised schedule (schedule.name=learned_net)"
            )
        return self.gamma_0, self.gamma_1

    def __call__(self, t: jax.Array) -> jax.Array:
        if not self.normalize:
            return self.raw(t)
        return self.gamma_0 + (self.gamma_1 - self.gamma_0) * self.shape(t)


SCHEDULES: dict[str, Callable[..., nn.Module]] = {
    "fixed_linear": lambda gamma_min, gamma_max, n_features: FixedLinear(gamma_min, gamma_max),
    "cosine": lambda gamma_min, gamma_max, n_features: Cosine(gamma_min, gamma_max),
    "learned_scalar": lambda gamma_min, gamma_max, n_features: LearnedScalar(gamma_min, gamma_max),
    "learned_net": lambda gamma_min, gamma_max, n_features: LearnedNet(
        gamma_min, gamma_max, n_features, normalize=True
    ),
    "learned_net_unnormalized": lambda gamma_min, gamma_max, n_features: LearnedNet(
        gamma_min, gamma_max, n_features, normalize=False
    ),
}

# Schedules whose γ separates into learned endpoints and a shape, as the variance-minimising
# gradient (VDM §5, App. I.2) requires.
SEPARABLE = ("learned_net",)


def make_schedule(
    name: str, *, gamma_min: float, gamma_max: float, n_features: int = 1024
) -> nn.Module:
    """The schedule module registered under `name` (config field `schedule.name`)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule.name must be one of {sorted(SCHEDULES)}, got {name!r}")
    if not gamma_min < gamma_max:
        raise ValueError(
            f"schedule.gamma_min must be < schedule.gamma_max, got {gamma_min} and {gamma_max}"
        )
    if n_features < 1:
        raise ValueError(f"schedule.n_features must be a positive integer, got {n_features}")
    return SCHEDULES[name](float(gamma_min), float(gamma_max), int(n_features))
