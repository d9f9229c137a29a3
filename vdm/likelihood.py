"""Dataset-level bits per dimension.

`elbo_bpd` passes over a split with every example exactly once per repeat (the last batch is
padded and masked), each repeat with independent t and ε, and reports the mean and standard
error of the per-example bound, in total and per term.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vdm import data, elbo, sharding
from vdm.model import VDM

TERMS = ("bpd", "recon", "prior", "diffusion")


def make_eval_step(model: VDM, n_dims: int, mesh):
    """Jitted: (params, batch, key) → per-term [Σ mask·bpd, Σ mask·bpd²] over the batch."""

    def step(params, batch, key):
        with jax.default_matmul_precision("highest"):
            terms = model.vlb_terms(params, key, batch, train=False)
        bpd = elbo.bpd_terms(terms, n_dims)
        m = batch["mask"]
        return {k: jnp.stack([jnp.sum(m * bpd[k]), jnp.sum(m * bpd[k] ** 2)]) for k in TERMS}

    rep = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(rep, sharding.data_sharded(mesh), rep), out_shardings=rep)


def elbo_bpd(
    eval_step, params, split: data.Split, batch_size: int, key: jax.Array, mesh, repeats: int = 1
) -> dict[str, float]:
    """ELBO in bpd over `split`: {'bpd', 'bpd_se', 'recon', …, 'n'}; SE over examples×repeats."""
    sums = {k: np.zeros(2) for k in TERMS}
    pid, pcount = jax.process_index(), jax.process_count()
    for r in range(repeats):
        for i, batch in enumerate(data.eval_batches(split, batch_size, pid, pcount)):
            k = jax.random.fold_in(jax.random.fold_in(key, r), i)
            out = eval_step(params, sharding.shard_batch(batch, mesh), k)
            for name in TERMS:
                sums[name] += np.asarray(out[name], np.float64)
    n = len(split) * repeats
    result = {"n": n}
    for name in TERMS:
        mean = sums[name][0] / n
        var = max(sums[name][1] / n - mean**2, 0.0)
        result[name] = float(mean)
        result[f"{name}_se"] = float(math.sqrt(var / max(n - 1, 1)))
    return result
