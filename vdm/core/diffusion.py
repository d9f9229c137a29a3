"""The variance-preserving diffusion process of VDM as pure functions of arrays.

Everything is written in terms of the log-SNR parameter γ = −log SNR (VDM eq. 3):
α² = sigmoid(−γ), σ² = sigmoid(γ). `gamma` may be a scalar or have one value per
example (shape (batch,)); it is broadcast over the remaining axes of the data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HEADS = ("eps", "x0", "v", "score")


def bcast(gamma: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape a per-example γ of shape (batch,) so it broadcasts against x (batch, ...).

    γ's axes are x's leading axes: a scalar, one per example, or one per example and
    dimension (a multivariate schedule, x's shape). A γ of one example's shape (no batch
    axis) is ambiguous here and refused where its axes cannot be x's leading ones.
    """
    gamma = jnp.asarray(gamma)
    if any(g not in (1, s) for g, s in zip(gamma.shape, x.shape, strict=False)):
        raise ValueError(
            f"γ of shape {gamma.shape} does not match the leading axes of x {x.shape}: give "
            "one per example (batch,) or one per example and dimension (x's shape)"
        )
    return gamma.reshape(gamma.shape + (1,) * (x.ndim - gamma.ndim))


def alpha_sigma(gamma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """α_t = sqrt(sigmoid(−γ_t)), σ_t = sqrt(sigmoid(γ_t))  (VDM eq. 4)."""
    return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))


def snr(gamma: jax.Array) -> jax.Array:
    """SNR(t) = α_t² / σ_t² = exp(−γ_t)  (VDM eq. 3)."""
    return jnp.exp(-gamma)


def q_sample(x: jax.Array, gamma: jax.Array, eps: jax.Array) -> jax.Array:
    """z_t = α_t x + σ_t ε, a draw from q(z_t | x)  (VDM eq. 1)."""
    alpha, sigma = alpha_sigma(bcast(gamma, x))
    return alpha * x + sigma * eps


# ---- Head conversions. Every head is an exact, invertible function of (z_t, γ_t, ε). ----


def eps_to_x0(z: jax.Array, eps: jax.Array, gamma: jax.Array) -> jax.Array:
    """x̂ = (z_t − σ_t ε̂) / α_t."""
    alpha, sigma = alpha_sigma(bcast(gamma, z))
    return (z - sigma * eps) / alpha


def x0_to_eps(z: jax.Array, x0: jax.Array, gamma: jax.Array) -> jax.Array:
    """ε̂ = (z_t − α_t x̂) / σ_t."""
    alpha, sigma = alpha_sigma(bcast(gamma, z))
    return (z - alpha * x0) / sigma


def eps_to_v(z: jax.Array, eps: jax.Array, gamma: jax.Array) -> jax.Array:
    """v = α_t ε − σ_t x = (ε − σ_t z_t) / α_t  (Salimans & Ho 2022)."""
    alpha, sigma = alpha_sigma(bcast(gamma, z))
    return (eps - sigma * z) / alpha


def v_to_eps(z: jax.Array, v: jax.Array, gamma: jax.Array) -> jax.Array:
    """ε = σ_t z_t + α_t v."""
    alpha, sigma = alpha_sigma(bcast(gamma, z))
    return sigma * z + alpha * v


def v_to_x0(z: jax.Array, v: jax.Array, gamma: jax.Array) -> jax.Array:
    """x = α_t z_t − σ_t v."""
    alpha, sigma = alpha_sigma(bcast(gamma, z))
    return alpha * z - sigma * v


def x0_to_v(z: jax.Array, x0: jax.Array, gamma: jax.Array) -> jax.Array:
    """v = (α_t z_t − x) / σ_t."""
    alpha, sigma = alpha_sigma(bcast(gamma, z))
    return (alpha * z - x0) / sigma


def eps_to_score(eps: jax.Array, gamma: jax.Array) -> jax.Array:
    """∇_z log q(z_t) = −ε̂ / σ_t  (Tweedie's formula for the VP process)."""
    _, sigma = alpha_sigma(bcast(gamma, eps))
    return -eps / sigma


def score_to_eps(score: jax.Array, gamma: jax.Array) -> jax.Array:
    """ε̂ = −σ_t ∇_z log q(z_t)."""
    _, sigma = alpha_sigma(bcast(gamma, score))
    return -sigma * score


def check_head(head: str) -> str:
    """Return `head` if it names a network output parameterisation, else a clear error."""
    if head not in HEADS:
        raise ValueError(f"model.head must be one of {HEADS}, got {head!r}")
    return head


def to_eps(head: str, z: jax.Array, out: jax.Array, gamma: jax.Array) -> jax.Array:
    """Convert a network output in parameterisation `head` to ε̂."""
    check_head(head)
    if head == "eps":
        return out
    if head == "x0":
        return x0_to_eps(z, out, gamma)
    if head == "v":
        return v_to_eps(z, out, gamma)
    return score_to_eps(out, gamma)


def from_eps(head: str, z: jax.Array, eps: jax.Array, gamma: jax.Array) -> jax.Array:
    """Express ε̂ in parameterisation `head` (the inverse of `to_eps`)."""
    check_head(head)
    if head == "eps":
        return eps
    if head == "x0":
        return eps_to_x0(z, eps, gamma)
    if head == "v":
        return eps_to_v(z, eps, gamma)
    return eps_to_score(eps, gamma)


# ---- The posterior q(z_s | z_t, x) for s < t. ----


def posterior_coeffs(gamma_s: jax.Array, gamma_t: jax.Array) -> jax.Array:
    """c = σ²_{t|s} / σ_t² = 1 − SNR(t)/SNR(s) = −expm1(γ_s − γ_t)  (VDM App. A, eq. 33)."""
    return -jnp.expm1(gamma_s - gamma_t)


def posterior_mean_var(
    z_t: jax.Array, x: jax.Array, gamma_s: jax.Array, gamma_t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of q(z_s | z_t, x)  (VDM eqs. 31–32, expm1 form).

    μ = α_s ((1 − c) z_t / α_t + c x),  σ² = c σ_s²,  with c = −expm1(γ_s − γ_t).
    """
    gamma_s, gamma_t = bcast(gamma_s, z_t), bcast(gamma_t, z_t)
    c = posterior_coeffs(gamma_s, gamma_t)
    alpha_s, _ = alpha_sigma(gamma_s)
    alpha_t, _ = alpha_sigma(gamma_t)
    mean = alpha_s * ((1.0 - c) * z_t / alpha_t + c * x)
    var = c * jax.nn.sigmoid(gamma_s)
    return mean, var


def posterior_mean_var_eps(
    z_t: jax.Array, eps: jax.Array, gamma_s: jax.Array, gamma_t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """q(z_s | z_t, x = x̂(z_t, ε̂)) written with ε̂: μ = (α_s/α_t)(z_t − c σ_t ε̂)  (VDM eq. 34)."""
    gamma_s, gamma_t = bcast(gamma_s, z_t), bcast(gamma_t, z_t)
    c = posterior_coeffs(gamma_s, gamma_t)
    alpha_s, _ = alpha_sigma(gamma_s)
    alpha_t, sigma_t = alpha_sigma(gamma_t)
    mean = alpha_s / alpha_t * (z_t - c * sigma_t * eps)
    var = c * jax.nn.sigmoid(gamma_s)
    return mean, var


def pf_ode_drift(eps_hat_fn, z: jax.Array, gamma: jax.Array) -> jax.Array:
    """dz/dγ of the probability-flow ODE of the VP process: ½ σ (ε̂ − σ z).

    With f = −½ σ² γ′ and g² = σ² γ′ (VP SDE in t), dz/dt = f z − ½ g² ∇log p = ½ γ′ σ (ε̂ − σ z)
    (Song et al. 2021, eq. 13, with the score −ε̂/σ); dividing by γ′ removes the time variable.
    """
    _, sigma = alpha_sigma(bcast(gamma, z))
    return 0.5 * sigma * (eps_hat_fn(z, gamma) - sigma * z)
