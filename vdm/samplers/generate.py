"""From a trained model to integer samples on disk: the configured sampler, batched, saved.

`make_sampler` binds a model, the `sample` config section and a batch size into one jitted
function; `generate` draws n samples in batches (example i always gets the same noise, and
label i mod classes for a class-conditional model); `save` writes the `.npz` and the grid.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from vdm import images
from vdm.samplers import guided, options_of, sample

if TYPE_CHECKING:
    from vdm.model import VDM


def make_sampler(model: VDM, sample_cfg, x_shape, batch: int):
    """Jitted (params, key, offset, labels) → (integer samples, NFE), with the configured
    sampler and classifier-free guidance weight (`sample_cfg` is the config's `sample`)."""
    s = sample_cfg
    options = {k: s[k] for k in options_of(s.sampler)}

    @jax.jit
    def run(params, key, offset, labels):
        eps_uncond = model.eps_hat_fn(params)  # the null label for a class-conditional model
        eps = eps_uncond
        if model.num_classes and s.guidance:
            eps = guided(model.eps_hat_fn(params, label=labels), eps_uncond, s.guidance)
        x, info = sample(
            s.sampler,
            key,
            eps,
            model.gamma_fn(params),
            (batch, *x_shape),
            vocab_size=model.encoding,
            final_denoise=s.final_denoise,
            offset=offset,
            **options,
        )
        return x, info["nfe"]

    return run


def generate(
    model: VDM, params, sample_cfg, key, x_shape, n: int, progress: bool = False
) -> np.ndarray:
    """`n` integer samples in batches of `sample_cfg.batch_size`; example i always gets the
    same noise (fold_in by global index) and, for class-conditional models, label i mod classes."""
    from tqdm.auto import tqdm

    batch = min(sample_cfg.batch_size, n)
    run = make_sampler(model, sample_cfg, x_shape, batch)
    out = []
    for start in tqdm(range(0, n, batch), disable=not progress, desc="sampling"):
        labels = (start + jnp.arange(batch)) % max(model.num_classes, 1)
        x, _ = run(params, key, jnp.asarray(start), labels)
        out.append(np.asarray(x))
    return np.concatenate(out)[:n]


def caption(data_name: str, sample_cfg, step: int, num_classes: int = 0) -> str:
    """One line naming what a grid shows: data, sampler, NFE, training step, guidance."""
    s = sample_cfg
    nfe = "adaptive" if s.sampler == "pf_ode" and not s.steps else f"{s.steps} steps"
    text = f"{data_name}: {s.sampler}, {nfe}, training step {step}"
    if num_classes and s.guidance:
        text += f"; guidance {s.guidance:g}, class i mod {num_classes}"
    return text


def unused_stem(stem: str) -> str:
    """`stem`, or `stem_1`, `stem_2`, … : the first with neither a .png nor an .npz."""
    path, k = stem, 1
    while os.path.exists(path + ".png") or os.path.exists(path + ".npz"):
        path, k = f"{stem}_{k}", k + 1
    return path


def save(stem: str, x: np.ndarray, encoding, text: str, reference=None) -> str:
    """Write `x` to `<stem>.npz` (array `samples`) and a captioned grid to `<stem>.png` (a
    scatter over `reference` for 2-D data), never overwriting: a taken stem gets `_1`, `_2`, …
    Returns the PNG's path."""
    path = unused_stem(stem)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez_compressed(path + ".npz", samples=x)
    return images.save_samples(path + ".png", x, encoding, text, reference)
