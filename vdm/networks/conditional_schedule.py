"""An input-conditional multivariate schedule γ(t; c(x)) (MuLAN, Sahoo et al. 2024 §3.3).

A small encoder maps the data to the logits of the auxiliary latent c (`vdm.core.latent`);
an MLP maps c to the coefficients (a, b, c₀) of one monotone polynomial per data dimension
(`vdm.core.schedules.polynomial_shape`); the endpoints are learned per dimension or shared,
and do not depend on c, so every image's schedule spans the same γ range per dimension.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.core import schedules
from vdm.networks.unet import ResnetBlock


class LatentEncoder(nn.Module):
    """x → logits (batch, n_latent): ScoreUNet residual blocks (no conditioning, no dropout)
    then a mean over the pixels, for images; dense residual layers for flat vectors."""

    n_latent: int
    n_embd: int = 32
    n_layer: int = 2

    @nn.compact
    def __call__(self, f: jax.Array) -> jax.Array:
        if f.ndim == 4:
            h = nn.Conv(self.n_embd, (3, 3), name="conv_in")(f)
            none = jnp.zeros((f.shape[0], 1), f.dtype)
            for i in range(self.n_layer):
                h = ResnetBlock(self.n_embd, 0.0, name=f"block_{i}")(h, none, False)
            h = jnp.mean(nn.swish(h), axis=(1, 2))
        else:
            h = nn.Dense(self.n_embd, name="dense_in")(f.reshape(f.shape[0], -1))
            for i in range(self.n_layer):
                h = h + nn.Dense(self.n_embd, name=f"dense_{i}")(nn.swish(h))
            h = nn.swish(h)
        return nn.Dense(self.n_latent, name="logits")(h)


class ConditionalMultivariate(nn.Module):
    """γ_i(t; c) = γ₀,ᵢ + (γ₁,ᵢ − γ₀,ᵢ) γ̂_i(t; a(c), b(c), c₀(c)), one polynomial per data
    dimension whose coefficients an MLP reads from the latent counts c (…, n_latent).

    At initialisation the MLP's last layer is zero with bias (0, 0, 1): every image starts
    with the linear schedule from γ_min to γ_max in every dimension. `__call__(t, c)` gives
    shape L + event_shape for counts of leading shape L, t of shape () or L; a single
    example's counts (shape (n_latent,)) give t.shape + event_shape for any t.
    """

    gamma_min: float
    gamma_max: float
    event_shape: tuple[int, ...]
    endpoints_mode: str = "per_dim"
    n_latent: int = 50
    n_draws: int = 15
    temperature: float = 1.0
    n_embd: int = 32
    n_layer: int = 2
    n_hidden: int = 128

    def setup(self):
        shape = tuple(self.event_shape)
        self.gamma_0, self.w = schedules.endpoint_params(self, shape, self.endpoints_mode)
        self.encoder = LatentEncoder(self.n_latent, self.n_embd, self.n_layer)
        self.hidden = nn.Dense(self.n_hidden)
        d = math.prod(shape)
        bias = jnp.concatenate([jnp.zeros(2 * d), jnp.ones(d)])
        self.coef = nn.Dense(3 * d, kernel_init=nn.initializers.zeros, bias_init=lambda *_: bias)

    def logits(self, f: jax.Array) -> jax.Array:
        """The latent's logits for encoded data f (batch, *event_shape)."""
        return self.encoder(f)

    def coefficients(self, c: jax.Array):
        """(a, b, c₀) for latent counts c (…, n_latent), each of shape … + event_shape."""
        h = nn.swish(self.hidden(c / self.n_draws))
        lead, shape = c.shape[:-1], tuple(self.event_shape)
        out = self.coef(h).reshape(lead + (3, math.prod(shape)))
        return tuple(out[..., i, :].reshape(lead + shape) for i in range(3))

    def endpoints(self) -> tuple[jax.Array, jax.Array]:
        """(γ₀, γ₁) per dimension, each of the event shape (the same for every c)."""
        return schedules.spread_endpoints(self.gamma_0, self.w, self.event_shape)

    def __call__(self, t: jax.Array, c: jax.Array) -> jax.Array:
        a, b, c0 = self.coefficients(c)
        t = jnp.asarray(t, jnp.result_type(float))
        if c.ndim > 1 and t.shape not in ((), c.shape[:-1]):
            raise ValueError(
                f"t must be a scalar or one per example {c.shape[:-1]} for a batch of latents, "
                f"got shape {t.shape} (vmap over examples for a grid of times)"
            )
        t = t.reshape(t.shape + (1,) * len(self.event_shape))
        gamma_0, gamma_1 = self.endpoints()
        return gamma_0 + (gamma_1 - gamma_0) * schedules.polynomial_shape(t, a, b, c0)

    def init_all(self, t: jax.Array, f: jax.Array) -> jax.Array:
        """Touches every parameter (for `init`): the logits of f, then γ at the prior's c."""
        logits = self.logits(f)
        return self(t, jnp.zeros_like(logits) + self.n_draws / self.n_latent)
