"""The variational lower bound of VDM for integer data, split into its named terms.

−log p(x) ≤ L_recon + L_diffusion + L_prior  (VDM eq. 11), all per example, in nats.

Data x_int are integers in [0, vocab_size) of any shape (batch, ..., channels); inside the
model an `Encoding` (`vdm.core.encoding`, with the decoder) maps them to
f = (x_int − shift) / scale per channel: the bin centres f = (2 x_int + 1) / vocab_size − 1
∈ (−1, 1) by default, or per-dimension standardisation (the official 2-D colab). Functions
that need the map take the `Encoding` itself.
Every term takes its randomness (t, ε) as arguments; only `vlb_terms` draws it from a key.
`gamma_fn(t) -> γ_t` is the schedule; `eps_hat_fn(z_t, γ_t) -> ε̂` the denoiser.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from vdm.core import diffusion, draws
from vdm.core.encoding import (  # noqa: F401 (public here: the bound's encoding and decoder)
    ENCODINGS,
    Encoding,
    check_encoding,
    decoder_log_normalizer,
    decoder_logit,
    decoder_logprobs,
    encode,
    make_encoding,
)

GammaFn = Callable[[jax.Array], jax.Array]
EpsHatFn = Callable[[jax.Array, jax.Array], jax.Array]


def _sum_per_example(x: jax.Array) -> jax.Array:
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def recon_loss(
    x_int: jax.Array, eps_0: jax.Array, gamma_0: jax.Array, encoding: Encoding
) -> jax.Array:
    """L_recon = −log p(x | z₀) with z₀ = α₀ f + σ₀ ε₀, exact discrete decoder (VDM eq. 8).

    log p(x | z₀) = l_x − log Z: the logit of x minus the log-normaliser over the vocab
    (`decoder_log_normalizer`), the same value as `decoder_logprobs` at x.
    """
    enc = check_encoding(encoding)
    f = enc.encode(x_int)
    z_0 = diffusion.q_sample(f, gamma_0, eps_0)
    gamma_0 = jnp.broadcast_to(diffusion.bcast(gamma_0, z_0), z_0.shape)
    alpha_0, _ = diffusion.alpha_sigma(gamma_0)
    u = z_0 / alpha_0
    logit_x = decoder_logit(u - f, gamma_0)
    return -_sum_per_example(logit_x - decoder_log_normalizer(u, gamma_0, enc))


def prior_loss(x: jax.Array, gamma_1: jax.Array) -> jax.Array:
    """L_prior = KL(q(z₁ | x) ‖ N(0, I)) = ½ Σ (α₁² (x² − 1) − log σ₁²)  (VDM eq. 11).

    Written with σ₁² − 1 = −α₁² and log σ₁² = log_sigmoid(γ₁) for accuracy at large γ₁.
    """
    gamma_1 = diffusion.bcast(gamma_1, x)
    alpha_sq = jax.nn.sigmoid(-gamma_1)
    kl = 0.5 * (alpha_sq * (jnp.square(x) - 1.0) - jax.nn.log_sigmoid(gamma_1))
    return _sum_per_example(jnp.broadcast_to(kl, x.shape))


def diffusion_loss_continuous(
    x: jax.Array, t: jax.Array, eps: jax.Array, gamma_fn: GammaFn, eps_hat_fn: EpsHatFn
) -> jax.Array:
    """L_∞ = ½ γ′(t) ‖ε − ε̂(z_t; t)‖²  (VDM eq. 17), per example, in nats.

    With one γ per dimension (MuLAN eq. 9): L_∞ = ½ Σ_i γ′_i(t) (ε_i − ε̂_i)².
    """
    gamma_t, dgamma_dt = jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))
    z_t = diffusion.q_sample(x, gamma_t, eps)
    return weighted_sum(0.5 * dgamma_dt, jnp.square(eps - eps_hat_fn(z_t, gamma_t)))


def weighted_sum(w: jax.Array, sq_err: jax.Array) -> jax.Array:
    """Σ_i w_i e_i per example: w per example (a scalar γ; the sum taken first, as VDM's
    code does) or per dimension (a multivariate γ, shape of `sq_err`)."""
    shape = jnp.shape(w)
    if shape == sq_err.shape:
        return _sum_per_example(w * sq_err)
    if shape in ((), sq_err.shape[:1]):
        return w * _sum_per_example(sq_err)
    raise ValueError(
        f"the loss weight must be a scalar, one per example {sq_err.shape[:1]} or one per "
        f"dimension {sq_err.shape}, got shape {shape}"
    )


def diffusion_loss_discrete(
    x: jax.Array,
    t: jax.Array,
    eps: jax.Array,
    gamma_fn: GammaFn,
    eps_hat_fn: EpsHatFn,
    n_timesteps: int,
) -> jax.Array:
    """L_T = ½ T expm1(γ_t − γ_s) ‖ε − ε̂(z_t; t)‖², t = i/T, s = (i−1)/T  (VDM eqs. 13–14).

    The uniform t ∈ [0, 1) picks the step i = ⌊tT⌋ + 1 ∈ {1, …, T}. With one γ per
    dimension the weight expm1(γ_t,i − γ_s,i) is per dimension (a sum of per-dimension KLs).
    """
    T = n_timesteps
    t_i = (jnp.floor(t * T) + 1.0) / T
    gamma_t, gamma_s = gamma_fn(t_i), gamma_fn(t_i - 1.0 / T)
    z_t = diffusion.q_sample(x, gamma_t, eps)
    sq_err = jnp.square(eps - eps_hat_fn(z_t, gamma_t))
    return weighted_sum(0.5 * T * jnp.expm1(gamma_t - gamma_s), sq_err)


def diffusion_loss(
    x: jax.Array,
    t: jax.Array,
    eps: jax.Array,
    gamma_fn: GammaFn,
    eps_hat_fn: EpsHatFn,
    n_timesteps: int = 0,
) -> jax.Array:
    """The diffusion term: continuous time (eq. 17) if n_timesteps == 0, else T steps (eq. 14)."""
    if n_timesteps < 0:
        raise ValueError(f"model.n_timesteps must be 0 (continuous) or positive, got {n_timesteps}")
    if n_timesteps == 0:
        return diffusion_loss_continuous(x, t, eps, gamma_fn, eps_hat_fn)
    return diffusion_loss_discrete(x, t, eps, gamma_fn, eps_hat_fn, n_timesteps)


# ---- The variance-minimising schedule gradient (VDM §5, App. I.2). ----


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _squared_loss_gradient(fn, shape_vals, args):
    return fn(shape_vals, args)


def _slg_fwd(fn, shape_vals, args):
    loss, pullback = jax.vjp(fn, shape_vals, args)
    return loss, (loss, pullback)


def _slg_bwd(fn, res, ct):
    loss, pullback = res
    g_shape, g_args = pullback(ct)
    # ∇ L² = 2 L ∇L, per example: only the schedule-shape inputs are rescaled.
    g_shape = jax.tree.map(lambda g: 2.0 * loss * g, g_shape)
    return g_shape, g_args


_squared_loss_gradient.defvjp(_slg_fwd, _slg_bwd)


def diffusion_loss_variance_min(
    x: jax.Array,
    t: jax.Array,
    eps: jax.Array,
    gamma_0: jax.Array,
    gamma_1: jax.Array,
    shape_fn: GammaFn,
    eps_hat_fn: EpsHatFn,
) -> jax.Array:
    """L_∞ of eq. 17 with γ(t) = γ₀ + (γ₁ − γ₀) γ̂(t), whose *shape* γ̂ gets the gradient of L².

    In continuous time the VLB depends on γ only through γ₀ and γ₁ (eq. 18), so the shape is
    free to minimise the variance of the estimator; since E[L] does not depend on it, its
    gradient is that of E[L²], obtained in the backward pass as 2 L ∇L (VDM App. I.2). The
    value, and the gradients for γ₀, γ₁ and the denoiser's parameters, are those of eq. 17.
    """
    g_hat, dg_hat = jax.jvp(shape_fn, (t,), (jnp.ones_like(t),))
    # custom_vjp may not close over traced values: lift the denoiser's closure into arguments.
    eps_hat_closed, consts = jax.closure_convert(eps_hat_fn, x, g_hat)

    def loss_given_shape(shape_vals, args):
        (g_hat, dg_hat), (x, eps, gamma_0, gamma_1, consts) = shape_vals, args
        gamma_t = gamma_0 + (gamma_1 - gamma_0) * g_hat
        z_t = diffusion.q_sample(x, gamma_t, eps)
        eps_hat = eps_hat_closed(z_t, gamma_t, *consts)
        return 0.5 * (gamma_1 - gamma_0) * dg_hat * _sum_per_example(jnp.square(eps - eps_hat))

    args = (x, eps, gamma_0, gamma_1, tuple(consts))
    return _squared_loss_gradient(loss_given_shape, (g_hat, dg_hat), args)


# ---- The whole bound. ----


def sample_t(
    key: jax.Array, batch_size: int, antithetic: bool = True, mask: jax.Array | None = None
) -> jax.Array:
    """t ~ U[0, 1): low-discrepancy t_i = (u + i/B) mod 1 (VDM App. I.1) or i.i.d.

    With a `mask` (an eval batch padded to its static size), the low-discrepancy grid spans
    the n valid examples only, t = (u + rank/n) mod 1: otherwise a batch of n ≪ B real images
    sees t only in a window of width n/B, unbiased but with the variance of a single draw of u.
    """
    if antithetic:
        u = jax.random.uniform(key, ())
        pos, n = jnp.arange(batch_size), batch_size
        if mask is not None:
            valid = mask > 0
            rank = jnp.cumsum(valid) - 1
            pos = jnp.where(valid, rank, pos)
            n = jnp.maximum(jnp.sum(valid), 1)
        return jnp.mod(u + pos / n, 1.0)
    return jax.random.uniform(key, (batch_size,))


def bound_terms(
    key: jax.Array,
    x_int: jax.Array,
    gamma_fn: GammaFn,
    diffusion_term: Callable,
    *,
    encoding: Encoding,
    antithetic_time: bool = True,
    mask: jax.Array | None = None,
    endpoints: tuple[jax.Array, jax.Array] | None = None,
):
    """({'recon', 'prior', 'diffusion'} per example in nats, aux)  (VDM eq. 11).

    The one place the bound's randomness is drawn: `key` splits into t (`sample_t`), ε and
    ε₀, so every diffusion term — the VLB's (`vlb_terms`) or a weighted objective's
    (`vdm.core.objectives.objective_terms`) — sees the same draws from the same key.
    `diffusion_term(f, t, ε) -> (L, aux)` with f the encoded data; `endpoints` = (γ₀, γ₁)
    where they are not γ(0), γ(1) of `gamma_fn` as traced (the variance-minimising form).
    """
    f = encode(x_int, encoding)
    k_t, k_eps, k_eps0 = jax.random.split(key, 3)
    t = sample_t(k_t, f.shape[0], antithetic_time, mask)
    eps = draws.normal(k_eps, f.shape)
    eps_0 = draws.normal(k_eps0, f.shape)
    if endpoints is None:
        t0, t1 = jnp.zeros(()), jnp.ones(())
        if jax.eval_shape(gamma_fn, t0).shape:  # a γ per dimension: one per example
            t0, t1 = jnp.zeros(f.shape[:1]), jnp.ones(f.shape[:1])
        endpoints = gamma_fn(t0), gamma_fn(t1)
    gamma_0, gamma_1 = endpoints
    diff, aux = diffusion_term(f, t, eps)
    terms = {
        "recon": recon_loss(x_int, eps_0, gamma_0, encoding),
        "prior": prior_loss(f, gamma_1),
        "diffusion": diff,
    }
    return terms, aux


def vlb_terms(
    key: jax.Array,
    x_int: jax.Array,
    gamma_fn: GammaFn,
    eps_hat_fn: EpsHatFn,
    *,
    encoding: Encoding,
    n_timesteps: int = 0,
    antithetic_time: bool = True,
    variance_min: tuple[jax.Array, jax.Array, GammaFn] | None = None,
    mask: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Per-example VLB terms in nats: {'recon', 'prior', 'diffusion'} (VDM eq. 11).

    `variance_min=(γ₀, γ₁, shape_fn)` selects the variance-minimising gradient for the shape
    (continuous time only); the values are unchanged. `mask` (1 for the real examples of a
    padded eval batch) spreads the antithetic t over the real examples (`sample_t`).
    """
    if variance_min is None:
        endpoints = None

        def term(f, t, eps):
            return diffusion_loss(f, t, eps, gamma_fn, eps_hat_fn, n_timesteps), None

    else:
        if n_timesteps != 0:
            raise ValueError(
                "schedule.variance_min needs continuous time (model.n_timesteps=0): in discrete "
                f"time the bound depends on the schedule's shape; got n_timesteps={n_timesteps}"
            )
        gamma_0, gamma_1, shape_fn = variance_min
        endpoints = gamma_0, gamma_1

        def term(f, t, eps):
            loss = diffusion_loss_variance_min(f, t, eps, gamma_0, gamma_1, shape_fn, eps_hat_fn)
            return loss, None

    terms, _ = bound_terms(
        key,
        x_int,
        gamma_fn,
        term,
        encoding=encoding,
        antithetic_time=antithetic_time,
        mask=mask,
        endpoints=endpoints,
    )
    return terms


def to_bpd(nats: jax.Array, n_dims: int) -> jax.Array:
    """Nats per example → bits per dimension: nats / (D ln 2)."""
    return nats / (n_dims * math.log(2.0))


def bpd_terms(terms: dict[str, jax.Array], n_dims: int) -> dict[str, jax.Array]:
    """Per-example terms in bits per dimension, with their sum under 'bpd'."""
    out = {k: to_bpd(v, n_dims) for k, v in terms.items()}
    out["bpd"] = sum(out[k] for k in terms)
    return out
