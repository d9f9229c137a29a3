"""The auxiliary latent of an input-conditional schedule (MuLAN, Sahoo et al. 2024 §3.3).

c counts k draws from n categories: c = Σ_{j≤k} onehot(y_j), y_j ~ Cat(softmax(ℓ(x))) i.i.d.
under the encoder q(c | x) and uniform under the prior p(c). The schedule γ(t; c) depends on
the draws only through c (their order does not matter), so

    −log p(x) ≤ E_{q(y | x)}[ L(x; γ(·; c)) ] + KL(q(y | x) ‖ p(y)),
    KL(q(y | x) ‖ p(y)) = k Σ_i q_i (log q_i + log n)  (the draws are independent),

with L the diffusion model's bound given the schedule: a bound on the marginal likelihood
with c integrated out under its uniform prior, estimated without bias by one hard draw.
MuLAN draws k of the n categories *without* replacement (a relaxed top-k); the set's
distribution then has no closed-form KL, so here the k draws are with replacement and the
KL is exact. Gradients reach the logits through the Gumbel-softmax relaxation
(straight-through: the forward value is the hard draw, so the reported bound is exact).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vdm.core import draws


def draw_counts(key: jax.Array, logits: jax.Array, k: int, temperature: float = 1.0) -> jax.Array:
    """c = Σ_j onehot(y_j), k draws y_j ~ Cat(softmax(logits)) per row, straight-through:
    the value is the hard counts, the gradient that of the Gumbel-softmax relaxation at
    `temperature` (Jang et al. 2017). logits (…, n) → counts (…, n) summing to k."""
    g = draws.gumbel(key, logits.shape[:-1] + (k, logits.shape[-1]), logits.dtype)
    perturbed = (logits[..., None, :] + g) / temperature
    soft = jax.nn.softmax(perturbed, axis=-1)
    hard = jax.nn.one_hot(jnp.argmax(perturbed, axis=-1), logits.shape[-1], dtype=soft.dtype)
    return jnp.sum(hard + soft - jax.lax.stop_gradient(soft), axis=-2)


def prior_counts(key: jax.Array, shape: tuple[int, ...], n: int, k: int) -> jax.Array:
    """c under the prior: k uniform draws of n categories, counted; shape + (n,)."""
    y = jax.random.randint(key, shape + (k,), 0, n)
    return jnp.sum(jax.nn.one_hot(y, n), axis=-2)


def kl_uniform(logits: jax.Array, k: int) -> jax.Array:
    """KL(q(y | x) ‖ p(y)) = k Σ_i q_i (log q_i + log n) in nats, per row of `logits`."""
    log_q = jax.nn.log_softmax(logits, axis=-1)
    n = logits.shape[-1]
    return k * jnp.sum(jnp.exp(log_q) * (log_q + math.log(n)), axis=-1)
