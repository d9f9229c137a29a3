"""From a trained model to integer samples on disk: the configured sampler, batched, saved.

`make_sampler` binds a model, the `sample` config section and a batch size into one jitted
function; `generate` draws n samples in batches (example i always gets the same noise, and
label i mod classes for a class-conditional model); `save` writes the `.npz` and the grid.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from vdm import sharding, storage
from vdm.data import images
from vdm.model import LATENT_STREAM
from vdm.samplers import guided, options_of, sample
from vdm.samplers.common import example_keys, initial_noise

if TYPE_CHECKING:
    from vdm.model import VDM


def make_sampler(model: VDM, sample_cfg, x_shape, batch: int, mesh=None):
    """Jitted (params, key, offset, labels) → (integer samples, NFE), with the configured
    sampler and classifier-free guidance weight (`sample_cfg` is the config's `sample`).

    With a `mesh` the batch is split over its devices (every example's chain on one device,
    `batch` a multiple of the device count) and the samples are gathered on every process.
    """
    s = sample_cfg
    options = {k: s[k] for k in options_of(s.sampler)}
    rep = sharding.replicated(mesh) if mesh is not None else None

    def draw(params, key, gamma_fn, z_1, offset, labels):
        """The configured sampler from z₁ under `gamma_fn`, guided where configured."""
        eps = model.eps_hat_fn(params)  # the null label for a class-conditional model
        if model.num_classes and s.guidance:
            eps = guided(model.eps_hat_fn(params, label=labels), eps, s.guidance)
        x, info = sample(
            s.sampler,
            key,
            eps,
            gamma_fn,
            z_1.shape,
            encoding=model.encoding,
            final_denoise=s.final_denoise,
            offset=offset,
            z_init=z_1,
            **options,
        )
        return x, info["nfe"]

    def run(params, key, offset, labels):
        z_1 = initial_noise(example_keys(key, batch, offset), tuple(x_shape))
        if mesh is not None:  # the chains split over devices; XLA follows from z₁
            z_1 = jax.lax.with_sharding_constraint(z_1, sharding.data_sharded(mesh))
            labels = jax.lax.with_sharding_constraint(labels, sharding.data_sharded(mesh))
        if model.conditional:
            return conditional(params, key, offset, labels, z_1)
        return draw(params, key, model.gamma_fn(params), z_1, offset, labels)

    def conditional(params, key, offset, labels, z_1):
        """An input-conditional schedule: each example draws its latent c ~ p(c) and runs
        the sampler under its own γ(t; c), vmapped over the batch (the same per-example noise
        as the batched samplers: example i keys its steps by its global index)."""
        counts = model.latent_prior(jax.random.fold_in(key, LATENT_STREAM), batch, offset)

        def one(z_i, c_i, index, label):
            label = label[None] if model.num_classes else None
            x, nfe = draw(params, key, model.gamma_fn(params, c_i), z_i[None], index, label)
            return x[0], nfe

        x, nfe = jax.vmap(one)(z_1, counts, offset + jnp.arange(batch), labels)
        return x, nfe[0]

    return jax.jit(run, out_shardings=(rep, rep) if rep is not None else None)


def sampler_batch(sample_cfg, n: int, n_devices: int = 1) -> int:
    """The batch one sampler call draws: `sample.batch_size` (at most n), rounded up to a
    multiple of the device count (the extra samples are dropped)."""
    b = min(sample_cfg.batch_size, n)
    return -(-b // n_devices) * n_devices


def generate(
    model: VDM,
    params,
    sample_cfg,
    key,
    x_shape,
    n: int,
    progress: bool = False,
    sampler=None,
    batch: int | None = None,
) -> np.ndarray:
    """`n` integer samples in batches; example i always gets the same noise (fold_in by
    global index) and, for class-conditional models, label i mod classes. `sampler` is one
    from `make_sampler` for batches of `batch` (built here, on one device, if not given)."""
    from tqdm.auto import tqdm

    if sampler is None:
        batch = sampler_batch(sample_cfg, n)
        sampler = make_sampler(model, sample_cfg, x_shape, batch)
    elif batch is None:
        raise ValueError("generate: a prebuilt sampler needs the batch it was built for")
    out = []
    for start in tqdm(range(0, n, batch), disable=not progress, desc="sampling"):
        labels = (start + jnp.arange(batch)) % max(model.num_classes, 1)
        x, _ = sampler(params, key, jnp.asarray(start), labels)
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
    while storage.exists(path + ".png") or storage.exists(path + ".npz"):
        path, k = f"{stem}_{k}", k + 1
    return path


def save(stem: str, x: np.ndarray, encoding, text: str, reference=None, grid=None) -> str:
    """Write `x` to `<stem>.npz` (array `samples`) and a captioned grid of its first `grid`
    (default all) to `<stem>.png` (a scatter over `reference` for 2-D data), never
    overwriting: a taken stem gets `_1`, `_2`, … Returns the PNG's path."""
    path = unused_stem(stem)
    storage.makedirs(storage.dirname(path) or ".")
    buf = io.BytesIO()
    np.savez_compressed(buf, samples=x)
    storage.write_bytes(path + ".npz", buf.getvalue())
    png = images.save_samples(io.BytesIO(), x[:grid], encoding, text, reference)
    storage.write_bytes(path + ".png", png.getvalue())
    return path + ".png"


def load(path: str) -> np.ndarray:
    """The integer samples of an .npz `save` wrote (local or gs://)."""
    with np.load(io.BytesIO(storage.read_bytes(path))) as f:
        return f["samples"]
