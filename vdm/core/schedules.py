"""Noise schedules γ(t) = −log SNR(t) as small Flax modules with a common call `gamma(t) -> γ`.

`t` may have any shape. A scalar schedule gives γ of t's shape; a multivariate one
(`MULTIVARIATE`, one γ per data dimension, MuLAN) gives t.shape + event_shape. All schedules
are strictly increasing in t on [0, 1], so SNR decreases from exp(−γ(0)) to exp(−γ(1)).
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


# ---- Multivariate schedules: one γ per data dimension (MuLAN, Sahoo et al. 2024). ----


def polynomial_shape(t: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    """γ̂(t) = P(t) / P(1), P(t) = ∫₀ᵗ (a s² + b s + c)² ds, per dimension  (MuLAN §3.2).

    P is a degree-5 polynomial, a² t⁵/5 + a b t⁴/2 + (b² + 2 a c) t³/3 + b c t² + c² t; it is
    evaluated as the 3-point Gauss–Legendre rule on [0, t], exact for the degree-4 integrand
    and a sum of squares, so no term cancels another in float32 (the expanded form loses
    monotonicity to cancellation). P′ is a square, so γ̂ is non-decreasing, with γ̂(0) = 0 and
    γ̂(1) = 1 exactly. A term δ t (δ = `POLY_DELTA`) is added to P so the map stays strictly
    increasing and defined when the quadratic vanishes. `t` broadcasts against `a, b, c` (the
    caller gives t trailing unit axes for the event dimensions).
    """
    t = jnp.asarray(t, jnp.result_type(float))

    def p(t):
        total = POLY_DELTA * t
        for node, weight in GAUSS_LEGENDRE_3:
            s = 0.5 * t * (1.0 + node)
            total = total + 0.5 * weight * t * jnp.square((a * s + b) * s + c)
        return total

    return p(t) / p(jnp.ones_like(t))


GAUSS_LEGENDRE_3 = ((-math.sqrt(0.6), 5 / 9), (0.0, 8 / 9), (math.sqrt(0.6), 5 / 9))
POLY_DELTA = 1e-6
ENDPOINTS = ("per_dim", "shared")


def endpoint_params(module: nn.Module, event_shape, mode: str):
    """Declares a multivariate schedule's endpoint parameters on `module` (in its `setup`):
    `gamma_0` and `w`, per dimension (`mode='per_dim'`) or one pair for all ('shared'),
    initialised at γ_min and γ_max − γ_min from the module's fields."""
    ends = tuple(event_shape) if mode == "per_dim" else ()
    gamma_0 = module.param("gamma_0", nn.initializers.constant(module.gamma_min), ends)
    w = module.param("w", nn.initializers.constant(module.gamma_max - module.gamma_min), ends)
    return gamma_0, w


def spread_endpoints(gamma_0: jax.Array, w: jax.Array, event_shape) -> tuple[jax.Array, jax.Array]:
    """(γ₀, γ₁ = γ₀ + |w|) per dimension, each of the event shape: |w| keeps every
    dimension's schedule increasing."""
    gamma_0 = jnp.broadcast_to(gamma_0, tuple(event_shape))
    return gamma_0, gamma_0 + jnp.broadcast_to(jnp.abs(w), gamma_0.shape)


class LearnedMultivariate(nn.Module):
    """γ_i(t) = γ₀,ᵢ + (γ₁,ᵢ − γ₀,ᵢ) γ̂_i(t), one monotone polynomial γ̂_i per data dimension
    (`polynomial_shape`, MuLAN's form), free parameters a, b, c per dimension.

    `endpoints='per_dim'` learns γ₀ and γ₁ per dimension, 'shared' one pair for all (as
    `LearnedNet`); γ₁ = γ₀ + |w| keeps every dimension's schedule increasing. At
    initialisation (a, b, c) = (0, 0, 1): γ̂(t) = t, every dimension the linear schedule from
    γ_min to γ_max. γ(t) has shape t.shape + event_shape.
    """

    gamma_min: float
    gamma_max: float
    event_shape: tuple[int, ...]
    endpoints_mode: str = "per_dim"

    def setup(self):
        shape = tuple(self.event_shape)
        self.a = self.param("a", nn.initializers.zeros, shape)
        self.b = self.param("b", nn.initializers.zeros, shape)
        self.c = self.param("c", nn.initializers.ones, shape)
        self.gamma_0, self.w = endpoint_params(self, shape, self.endpoints_mode)

    def _event(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t, jnp.result_type(float))
        return t.reshape(t.shape + (1,) * len(self.event_shape))

    def shape(self, t: jax.Array) -> jax.Array:
        """γ̂(t) ∈ [0, 1] per dimension, shape t.shape + event_shape."""
        return polynomial_shape(self._event(t), self.a, self.b, self.c)

    def endpoints(self) -> tuple[jax.Array, jax.Array]:
        """(γ₀, γ₁) per dimension, each of the event shape."""
        return spread_endpoints(self.gamma_0, self.w, self.event_shape)

    def __call__(self, t: jax.Array) -> jax.Array:
        gamma_0, gamma_1 = self.endpoints()
        return gamma_0 + (gamma_1 - gamma_0) * self.shape(t)


def _scalar(cls, *args):
    return lambda gamma_min, gamma_max, n_features, event_shape, endpoints: cls(
        gamma_min, gamma_max, *args
    )


SCHEDULES: dict[str, Callable[..., nn.Module]] = {
    "fixed_linear": _scalar(FixedLinear),
    "cosine": _scalar(Cosine),
    "learned_scalar": _scalar(LearnedScalar),
    "learned_net": lambda gamma_min, gamma_max, n_features, event_shape, endpoints: LearnedNet(
        gamma_min, gamma_max, n_features, normalize=True
    ),
    "learned_net_unnormalized": lambda gamma_min, gamma_max, n_features, *_: LearnedNet(
        gamma_min, gamma_max, n_features, normalize=False
    ),
    "learned_multivariate": lambda gamma_min, gamma_max, n_features, event_shape, endpoints: (
        LearnedMultivariate(gamma_min, gamma_max, tuple(event_shape), endpoints)
    ),
}

# Schedules whose γ separates into learned endpoints and a shape, as the variance-minimising
# gradient (VDM §5, App. I.2) requires.
SEPARABLE = ("learned_net",)
# Schedules with one γ per data dimension: γ(t) has shape t.shape + the data's event shape.
MULTIVARIATE = ("learned_multivariate",)


def make_schedule(
    name: str,
    *,
    gamma_min: float,
    gamma_max: float,
    n_features: int = 1024,
    event_shape: tuple[int, ...] | None = None,
    endpoints: str = "per_dim",
) -> nn.Module:
    """The schedule module registered under `name` (config field `schedule.name`); a
    multivariate one needs the data's per-example `event_shape`."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule.name must be one of {sorted(SCHEDULES)}, got {name!r}")
    if not gamma_min < gamma_max:
        raise ValueError(
            f"schedule.gamma_min must be < schedule.gamma_max, got {gamma_min} and {gamma_max}"
        )
    if n_features < 1:
        raise ValueError(f"schedule.n_features must be a positive integer, got {n_features}")
    if endpoints not in ENDPOINTS:
        raise ValueError(f"schedule.endpoints must be one of {list(ENDPOINTS)}, got {endpoints!r}")
    if name in MULTIVARIATE and event_shape is None:
        raise ValueError(
            f"schedule.name={name!r} has one γ per data dimension: make_schedule needs the "
            "data's per-example event_shape (VDM.from_config(..., data_shape=...))"
        )
    return SCHEDULES[name](
        float(gamma_min), float(gamma_max), int(n_features), event_shape, endpoints
    )


def is_multivariate(gamma: jax.Array, t: jax.Array) -> bool:
    """Whether γ = gamma_fn(t) has axes beyond t's: one value per data dimension."""
    return jnp.ndim(gamma) > jnp.ndim(t)
