"""Samplers with one signature: sample(key, eps_hat_fn, gamma_fn, shape, *, steps, …) → (x, info).

`eps_hat_fn(z, γ)` is the denoiser in ε form (any head converts through vdm/diffusion.py),
`gamma_fn(t)` the schedule. Noise is drawn per example from `fold_in(key, example_index)`, so
samples do not depend on the batch size or the number of devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm import diffusion, elbo


def example_keys(key: jax.Array, n: int, offset: int = 0) -> jax.Array:
    """One key per example, from its global index."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(n))


def per_example_normal(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.vmap(lambda k: jax.random.normal(k, shape))(keys)


def ancestral(key, eps_hat_fn, gamma_fn, shape, *, steps: int, offset: int = 0):
    """Ancestral sampling z_s ~ p(z_s | z_t) = q(z_s | z_t, x̂(z_t)) on t_i = i/steps (VDM eq. 34).

    Returns z₀ (continuous) and info {'nfe': steps}.
    """
    keys = example_keys(key, shape[0], offset)
    z_1 = per_example_normal(jax.vmap(lambda k: jax.random.fold_in(k, steps))(keys), shape[1:])

    def step(z_t, i):
        t, s = i / steps, (i - 1) / steps
        gamma_t = jnp.full((shape[0],), gamma_fn(t))
        gamma_s = jnp.full((shape[0],), gamma_fn(s))
        mean, var = diffusion.posterior_mean_var_eps(
            z_t, eps_hat_fn(z_t, gamma_t), gamma_s, gamma_t
        )
        noise = per_example_normal(jax.vmap(lambda k: jax.random.fold_in(k, i))(keys), shape[1:])
        return mean + jnp.sqrt(var) * noise, None

    z_0, _ = jax.lax.scan(step, z_1, jnp.arange(steps, 0, -1))
    return z_0, {"nfe": steps}


def decode(z_0: jax.Array, gamma_0: jax.Array, vocab_size: int) -> jax.Array:
    """The most likely integers under the exact decoder p(x | z₀) (VDM eq. 8)."""
    return jnp.argmax(elbo.decoder_logprobs(z_0, gamma_0, vocab_size), axis=-1)


SAMPLERS = {"ancestral": ancestral}
