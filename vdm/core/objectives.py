"""Diffusion objectives as weighted ELBOs (Kingma & Gao 2023, arXiv:2303.00848).

In VDM's notation λ = log SNR = −γ. A weighting w(λ) and a training noise distribution
p(λ) give the weighted diffusion loss, per example, in nats:

    L_w(x) = ½ E_{t∼U(0,1), ε}[ w(λ_t) · (−dλ/dt) · ‖ε − ε̂(z_t; λ_t)‖² ]        (K&G eq. 5)
           = ½ E_{λ∼p(λ), ε}[ w(λ) / p(λ) · ‖ε − ε̂(z_λ; λ)‖² ]                   (importance form)

With w = 1 it is VDM's continuous-time diffusion loss (VDM eq. 17), whatever p(λ): p only
changes the estimator's variance. Every monotone (non-increasing) w is, up to a constant, the
ELBO of Gaussian-noise-augmented data (K&G §4). The λ range is the model schedule's,
[λ_min, λ_max] = [−γ₁, −γ₀]; a p(λ) defined on the whole line is truncated to it.

Weightings are functions of λ (and a shift b where the weighting has one); noise
distributions have a density, a CDF and its inverse, so that λ is drawn by inverse transform
from (antithetic) uniforms and the truncation is exact.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from vdm.core import diffusion, elbo

# ---- Weightings w(λ), K&G Table 1. ----

EDM_SIGMA_DATA = 0.5  # Karras et al. 2022
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2  # log σ ∼ N(P_mean, P_std²) ⇒ λ = −2 log σ ∼ N(2.4, 2.4²)
DDPM_BETA = (1e-4, 0.02)  # Ho et al. 2020, linear β over T = 1000 steps
DDPM_T = 1000
MIN_SNR_GAMMA = 5.0  # Hang et al. 2023


def w_elbo(lam, shift=0.0):
    """w = 1: the ELBO (VDM eq. 17)."""
    return jnp.ones_like(lam)


def w_sigmoid(lam, shift=0.0):
    """w = sigmoid(b − λ) (K&G §5, their best weighting with b the shift)."""
    return jax.nn.sigmoid(shift - lam)


def w_v_cosine(lam, shift=0.0):
    """w = e^{−λ/2}: v-prediction MSE with the cosine schedule (Salimans & Ho 2022)."""
    return jnp.exp(-0.5 * lam)


def w_flow_matching(lam, shift=0.0):
    """w = e^{−λ/2}: flow matching with the optimal-transport path / rectified flow
    (Lipman et al. 2023; Liu et al. 2023), z_t = (1 − t) x + t ε with uniform t; the same w
    as v-prediction, with the noise distribution `flow_matching` (logistic, scale 2)."""
    return jnp.exp(-0.5 * lam)


def w_edm(lam, shift=0.0):
    """w = N(λ; 2.4, 2.4²) · (e^{−λ} + σ_d²)/σ_d² (Karras et al. 2022 as in K&G Table 1):
    EDM's log-normal noise density times its loss weighting, σ_d = 0.5. Not monotone."""
    mean, std = -2 * EDM_P_MEAN, 2 * EDM_P_STD
    density = jnp.exp(-0.5 * ((lam - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    return density * (jnp.exp(-lam) + EDM_SIGMA_DATA**2) / EDM_SIGMA_DATA**2


def _ddpm_t(lam):
    """t ∈ [0, 1] of DDPM's linear-β schedule at log-SNR λ, and dλ/dt there.

    Continuous form: log ᾱ(t) = −(a t + ½ c t²) with a = β₀ T, c = (β₁ − β₀) T, and
    λ = log ᾱ − log(1 − ᾱ), so log ᾱ = log_sigmoid(λ) gives t from a quadratic.
    """
    a, c = DDPM_BETA[0] * DDPM_T, (DDPM_BETA[1] - DDPM_BETA[0]) * DDPM_T
    neg_log_abar = -jax.nn.log_sigmoid(lam)
    t = (-a + jnp.sqrt(a * a + 2 * c * neg_log_abar)) / c
    dlam_dt = -(a + c * t) / jax.nn.sigmoid(-lam)  # d log ᾱ/dt / (1 − ᾱ)
    return t, dlam_dt


def w_ddpm_simple(lam, shift=0.0):
    """w = p_DDPM(λ) = |dt/dλ|: DDPM's L_simple (unweighted ε-MSE, uniform t) under its
    linear-β schedule (Ho et al. 2020); zero outside the schedule's λ range. Not monotone."""
    t, dlam_dt = _ddpm_t(lam)
    inside = (t >= 0) & (t <= 1)
    return jnp.where(inside, 1.0 / jnp.abs(dlam_dt), 0.0)


def _cosine_density(lam, shift=0.0):
    """p(λ) of the cosine schedule λ = −2 log tan(πt/2) + s with uniform t: sech((λ−s)/2)/(2π)."""
    return 1.0 / (2 * math.pi * jnp.cosh(0.5 * (lam - shift)))


def w_min_snr(lam, shift=0.0):
    """w = p_cos(λ) · min(1, γ e^{−λ}): min-SNR-γ weighting of the ε-MSE (Hang et al. 2023,
    γ = 5) with uniform t under the cosine schedule. Not monotone."""
    return _cosine_density(lam) * jnp.minimum(1.0, MIN_SNR_GAMMA * jnp.exp(-lam))


WEIGHTINGS: dict[str, Callable] = {
    "elbo": w_elbo,
    "sigmoid": w_sigmoid,
    "v_cosine": w_v_cosine,
    "flow_matching": w_flow_matching,
    "edm": w_edm,
    "ddpm_simple": w_ddpm_simple,
    "min_snr": w_min_snr,
}
# Whether w is non-increasing in λ (then L_w is an ELBO of noise-augmented data, K&G §4).
MONOTONE = {
    "elbo": True,
    "sigmoid": True,
    "v_cosine": True,
    "flow_matching": True,
    "edm": False,
    "ddpm_simple": False,
    "min_snr": False,
}


def weighting(name: str) -> Callable:
    if name not in WEIGHTINGS:
        raise ValueError(f"objective.weighting must be one of {sorted(WEIGHTINGS)}, got {name!r}")
    return WEIGHTINGS[name]


# ---- Training noise distributions p(λ). ----


@dataclasses.dataclass(frozen=True)
class NoiseDist:
    """A density over λ on the real line with its CDF and inverse CDF (shift s moves it)."""

    name: str
    log_pdf: Callable
    cdf: Callable
    icdf: Callable
    # False for a density that only has a finite mass on a finite range (p ∝ sigmoid(λ)):
    # `cdf` is then an antiderivative, and only its differences over the range are used.
    normalised: bool = True


def _cosine(shift):
    # λ = −2 log tan(πt/2) + s, t ∼ U(0, 1): P(Λ ≤ λ) = 1 − (2/π) arctan(e^{−(λ−s)/2}).
    return NoiseDist(
        "cosine",
        lambda lam: jnp.log(_cosine_density(lam, shift)),
        lambda lam: 1.0 - (2 / math.pi) * jnp.arctan(jnp.exp(-0.5 * (lam - shift))),
        lambda q: shift - 2.0 * jnp.log(jnp.tan(0.5 * math.pi * (1.0 - q))),
    )


def _edm(shift):
    mean, std = -2 * EDM_P_MEAN + shift, 2 * EDM_P_STD
    return NoiseDist(
        "edm",
        lambda lam: -0.5 * ((lam - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi)),
        lambda lam: ndtr((lam - mean) / std),
        lambda q: mean + std * ndtri(q),
    )


def _flow_matching(shift):
    # λ = 2 log((1 − t)/t) + s, t ∼ U(0, 1): a logistic distribution with scale 2.
    return NoiseDist(
        "flow_matching",
        lambda lam: (
            jax.nn.log_sigmoid(0.5 * (lam - shift))
            + jax.nn.log_sigmoid(-0.5 * (lam - shift))
            - math.log(2.0)
        ),
        lambda lam: jax.nn.sigmoid(0.5 * (lam - shift)),
        lambda q: shift + 2.0 * (jnp.log(q) - jnp.log1p(-q)),
    )


def _alpha_sq(shift):
    # p(λ) ∝ α²(λ) = sigmoid(λ − s) (i-DODE, Zheng et al. 2023): infinite mass on the line,
    # finite on [λ_min, λ_max]. Antiderivative softplus(λ − s), so the truncated normaliser is
    # log[(1 + e^{λ_max−s}) / (1 + e^{λ_min−s})] in closed form, and the inverse of
    # q = softplus(λ − s) is λ = s + q + log(1 − e^{−q}).
    return NoiseDist(
        "alpha_sq",
        lambda lam: jax.nn.log_sigmoid(lam - shift),
        lambda lam: jax.nn.softplus(lam - shift),
        lambda q: shift + q + jnp.log(-jnp.expm1(-q)),
        normalised=False,
    )


NOISE_DISTS = {
    "cosine": _cosine,
    "edm": _edm,
    "flow_matching": _flow_matching,
    "alpha_sq": _alpha_sq,
}
# 'uniform_t': t ∼ U(0, 1) under the model's own schedule, p(λ) = 1/|dλ/dt|.
# 'adaptive': a histogram over λ fitted online to the expected weighted loss (K&G §5).
NOISE_DIST_NAMES = ("uniform_t", *NOISE_DISTS, "adaptive")


def noise_dist(name: str, shift: float = 0.0) -> NoiseDist:
    if name not in NOISE_DISTS:  # uniform_t and adaptive are handled by the loss itself
        raise ValueError(
            f"objective.noise_dist must be one of {list(NOISE_DIST_NAMES)}, got {name!r}"
        )
    return NOISE_DISTS[name](shift)


def sample_lambda(u, dist: NoiseDist, lam_min, lam_max):
    """λ ∼ p(λ) truncated to [lam_min, lam_max] by inverse transform of u ∈ [0, 1), and
    1 / p_trunc(λ) (the importance weight of the integral over the range)."""
    lo, hi = dist.cdf(lam_min), dist.cdf(lam_max)
    q = lo + u * (hi - lo)
    q = jnp.clip(q, 1e-7, 1 - 1e-7) if dist.normalised else jnp.clip(q, lo, hi)
    lam = jnp.clip(dist.icdf(q), lam_min, lam_max)
    return lam, (hi - lo) * jnp.exp(-dist.log_pdf(lam))


# ---- The adaptive p(λ): a histogram over the schedule's λ range. ----

ADAPTIVE_FLOOR = 0.05  # mass spread uniformly, so every λ keeps a density ≥ 5% of uniform


def adaptive_probs(hist):
    """Bin probabilities of the adaptive p(λ): ∝ the histogram (an online estimate of the
    expected weighted loss per bin, K&G §5), mixed with `ADAPTIVE_FLOOR` of uniform."""
    hist = jnp.maximum(hist, 0.0)
    n = hist.shape[0]
    return (1 - ADAPTIVE_FLOOR) * hist / jnp.maximum(jnp.sum(hist), 1e-30) + ADAPTIVE_FLOOR / n


def sample_lambda_adaptive(u, hist, lam_min, lam_max):
    """λ ∼ the piecewise-uniform p(λ) of `hist` on [lam_min, lam_max] by inverse transform of
    u ∈ [0, 1); returns (λ, 1/p(λ), bin index)."""
    probs = adaptive_probs(hist)
    n = probs.shape[0]
    cdf = jnp.cumsum(probs)
    j = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, n - 1)
    below = jnp.where(j > 0, cdf[j - 1], 0.0)
    frac = jnp.clip((u - below) / probs[j], 0.0, 1.0)
    width = (lam_max - lam_min) / n
    lam = lam_min + (j + frac) * width
    return lam, width / probs[j], j


# ---- The weighted diffusion loss. ----


def weighted_diffusion_parts(
    x,
    u,
    eps,
    gamma_fn,
    eps_hat_fn,
    *,
    weighting_name: str = "elbo",
    weighting_shift: float = 0.0,
    noise: str = "uniform_t",
    noise_shift: float = 0.0,
    hist=None,
):
    """(L_w, λ, w(λ)‖ε − ε̂‖²) per example: the loss (nats) and what the adaptive p(λ) is
    fitted to. See `weighted_diffusion_loss`."""
    w = weighting(weighting_name)
    if noise == "uniform_t":
        gamma_t, dgamma_dt = jax.jvp(gamma_fn, (u,), (jnp.ones_like(u),))
        lam = -gamma_t
        w_lam = w(lam, weighting_shift)
        factor = w_lam * dgamma_dt
    else:
        gamma_0, gamma_1 = gamma_fn(jnp.zeros(())), gamma_fn(jnp.ones(()))
        if noise == "adaptive":
            if hist is None:
                raise ValueError("objective.noise_dist='adaptive' needs its histogram")
            lam, inv_p, _ = sample_lambda_adaptive(u, hist, -gamma_1, -gamma_0)
        else:
            lam, inv_p = sample_lambda(u, noise_dist(noise, noise_shift), -gamma_1, -gamma_0)
        gamma_t = -lam
        w_lam = w(lam, weighting_shift)
        factor = w_lam * inv_p
    z_t = diffusion.q_sample(x, gamma_t, eps)
    sq_err = jnp.sum(jnp.square(eps - eps_hat_fn(z_t, gamma_t)), axis=tuple(range(1, x.ndim)))
    return 0.5 * factor * sq_err, lam, w_lam * sq_err


def weighted_diffusion_loss(x, u, eps, gamma_fn, eps_hat_fn, **options):
    """L_w per example (nats) for data x in model space, uniforms u (one per example) and ε.

    noise='uniform_t': t = u under the model's schedule, weight w(λ_t)·γ′(t) — with w = 1
    this is `elbo.diffusion_loss_continuous` term for term. Otherwise λ is drawn from the
    named p(λ) truncated to the schedule's range [−γ₁, −γ₀] (or from the adaptive histogram
    `hist`), weight w(λ)/p(λ).
    """
    return weighted_diffusion_parts(x, u, eps, gamma_fn, eps_hat_fn, **options)[0]


def bin_stats(lam, value, lam_min, lam_max, n_bins: int):
    """(Σ value, count) per λ bin: a batch's evidence for the adaptive histogram."""
    j = jnp.clip(jnp.floor((lam - lam_min) / (lam_max - lam_min) * n_bins), 0, n_bins - 1)
    j = j.astype(jnp.int32)
    sums = jax.ops.segment_sum(value, j, num_segments=n_bins)
    counts = jax.ops.segment_sum(jnp.ones_like(value), j, num_segments=n_bins)
    return sums, counts


def update_hist(hist, sums, counts, decay: float):
    """Move each bin the batch visited towards its mean weighted loss (EMA with `decay`)."""
    mean = sums / jnp.maximum(counts, 1.0)
    return jnp.where(counts > 0, decay * hist + (1 - decay) * mean, hist)


def is_weighted(weighting_name: str, noise: str) -> bool:
    """Whether an objective is anything but the ELBO with uniform t (then its training loss
    is not the bound, and it needs continuous time)."""
    return weighting_name != "elbo" or noise != "uniform_t"


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective (Kingma & Gao 2023): the weighting w(λ) and the noise
    distribution p(λ), each with its shift; the defaults are the ELBO with uniform t."""

    weighting: str = "elbo"
    weighting_shift: float = 0.0
    noise_dist: str = "uniform_t"
    noise_shift: float = 0.0

    @classmethod
    def from_config(cls, objective) -> Objective:
        """The objective of a config's `objective` section."""
        return cls(
            objective.weighting,
            float(objective.weighting_shift),
            objective.noise_dist,
            float(objective.noise_shift),
        )

    @property
    def weighted(self) -> bool:
        """Whether the training loss is anything but the ELBO (`is_weighted`)."""
        return is_weighted(self.weighting, self.noise_dist)


def objective_terms(
    key,
    x_int,
    gamma_fn,
    eps_hat_fn,
    *,
    encoding: elbo.Encoding,
    objective: Objective = Objective(),
    antithetic_time: bool = True,
    hist=None,
    stats: bool = False,
):
    """Per-example training terms in nats: the ELBO's recon and prior terms and the weighted
    diffusion loss L_w of `objective` in place of the diffusion term. The randomness is drawn
    by `elbo.bound_terms`, as for `elbo.vlb_terms` (u in place of t), so w = 1 with uniform t
    gives the ELBO's terms, value for value. With `stats`, also (λ, w(λ)‖ε − ε̂‖², λ_min,
    λ_max)."""

    def term(f, u, eps):
        diff, lam, integrand = weighted_diffusion_parts(
            f,
            u,
            eps,
            gamma_fn,
            eps_hat_fn,
            weighting_name=objective.weighting,
            weighting_shift=objective.weighting_shift,
            noise=objective.noise_dist,
            noise_shift=objective.noise_shift,
            hist=hist,
        )
        return diff, (lam, integrand)

    gamma_0, gamma_1 = gamma_fn(jnp.zeros(())), gamma_fn(jnp.ones(()))
    terms, (lam, integrand) = elbo.bound_terms(
        key,
        x_int,
        gamma_fn,
        term,
        encoding=encoding,
        antithetic_time=antithetic_time,
        endpoints=(gamma_0, gamma_1),
    )
    if stats:
        return terms, (lam, integrand, -gamma_1, -gamma_0)
    return terms
