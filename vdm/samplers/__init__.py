"""Samplers with one signature: fn(key, eps_hat_fn, gamma_fn, shape, *, steps, …) → (z₀, info).

`eps_hat_fn(z, γ)` is the denoiser in ε form (every head converts through vdm/core/diffusion.py),
`gamma_fn(t)` the schedule, fixed or learned; `info['nfe']` counts network evaluations. Noise
is drawn per example from `fold_in(key, offset + i)`, so samples do not depend on the batch
size or device count. `sample` adds the optional Tweedie denoising step and the decoding to
integers; `guided` builds the classifier-free-guidance denoiser.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp

from vdm.core import elbo
from vdm.samplers.common import (
    GRIDS,
    decode,
    denoise,
    example_keys,
    per_example,
)
from vdm.samplers.discrete import ancestral, ddim, dpm_solver_pp_2m
from vdm.samplers.ode import SOLVERS, probability_flow, to_latent
from vdm.samplers.sde import euler_maruyama, predictor_corrector

SAMPLERS = {
    "ancestral": ancestral,
    "ddim": ddim,
    "euler_maruyama": euler_maruyama,
    "pc": predictor_corrector,
    "pf_ode": probability_flow,
    "dpm_solver_pp_2m": dpm_solver_pp_2m,
}

__all__ = [
    "GRIDS",
    "SAMPLERS",
    "SOLVERS",
    "decode",
    "denoise",
    "example_keys",
    "guided",
    "options_of",
    "unused_options",
    "sample",
    "to_latent",
]


def guided(eps_cond_fn, eps_uncond_fn, w: float):
    """Classifier-free guidance (Ho & Salimans 2022): ε̃ = ε̂(z, ∅) + w (ε̂(z, c) − ε̂(z, ∅)).

    w = 0 is the unconditional model, w = 1 the conditional one, w > 1 guides harder.
    """
    if w == 0:
        return eps_uncond_fn
    if w == 1:
        return eps_cond_fn
    return lambda z, g: eps_uncond_fn(z, g) + w * (eps_cond_fn(z, g) - eps_uncond_fn(z, g))


def options_of(name: str) -> tuple[str, ...]:
    """The keyword options sampler `name` takes (beyond key, eps_hat_fn, gamma_fn, shape)."""
    if name not in SAMPLERS:
        raise ValueError(f"sample.sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
    params = inspect.signature(SAMPLERS[name]).parameters.values()
    skip = {"key", "eps_hat_fn", "gamma_fn", "shape", "z_init", "offset"}
    return tuple(p.name for p in params if p.kind == p.KEYWORD_ONLY and p.name not in skip)


def unused_options(name: str, values: dict) -> list[str]:
    """Options set to a value no sampler has as its default, that sampler `name` ignores.

    The config carries every sampler's options; one changed for a sampler that does not take
    it is a mistake (e.g. sample.eta with the ancestral sampler) and is reported, not dropped.
    """
    accepted = options_of(name)
    defaults: dict[str, set] = {}
    for fn in SAMPLERS.values():
        for p in inspect.signature(fn).parameters.values():
            if p.kind == p.KEYWORD_ONLY and p.default is not p.empty:
                defaults.setdefault(p.name, set()).add(p.default)
    return [
        k for k, v in values.items() if k in defaults and k not in accepted and v not in defaults[k]
    ]


def sample(
    name: str,
    key,
    eps_hat_fn,
    gamma_fn,
    shape,
    *,
    encoding: elbo.Encoding | None = None,
    final_denoise: bool = False,
    **options,
):
    """Run sampler `name`, passing the options it takes; then optionally denoise and decode.

    Returns (x, info): integers in [0, vocab_size) if an `encoding` is given (the exact decoder
    on z₀, or the nearest bin of x̂ after the final Tweedie step), else z₀ or x̂.
    """
    if encoding is not None:
        elbo.check_encoding(encoding, "samplers.sample's encoding")
    accepted = options_of(name)
    unknown = sorted(set(options) - set(accepted) - {"z_init", "offset"})
    if unknown:
        raise ValueError(
            f"sampler {name!r} takes no option {unknown[0]!r} (its options: {', '.join(accepted)})"
        )
    z, info = SAMPLERS[name](key, eps_hat_fn, gamma_fn, shape, **options)
    gamma_0 = per_example(gamma_fn(jnp.zeros(())), shape[0])
    if final_denoise:
        z = denoise(eps_hat_fn, z, gamma_0)
        info = dict(info, nfe=info["nfe"] + 1)
        return (encoding.to_integers(z) if encoding is not None else z), info
    return (decode(z, gamma_0, encoding) if encoding is not None else z), info
