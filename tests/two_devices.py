"""Run by test_train.py in a subprocess with two CPU devices: one train step, sampling and the
PF-ODE likelihood on a 2-device mesh and on a 1-device mesh, same global batch; prints the
differences, how often each jitted function compiled and the sizes of the 2-device step's
flat random draws, as JSON."""

import json
import re

import jax
import numpy as np
from jax.sharding import Mesh

from vdm import data, sharding
from vdm.configs import digits
from vdm.run import session, train_step

c = digits.get_config("smoke")
run = session.Run(c, "/tmp/unused")
batch = data.train_batch(run.train_split, 8, 0, 0, False)
batch = {k: v[None] for k, v in batch.items()}
out = {}
for n in (1, 2):
    mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",))
    step = train_step.make_train_step(run.model, run.optimizer, c, run.n_dims, mesh)
    init = jax.jit(
        lambda k: train_step.init_state(run.model, run.optimizer, k, run.x_shape),
        out_shardings=sharding.replicated(mesh),
    )
    state0, batches = init(jax.random.key(0)), sharding.shard_batch(batch, mesh, 1)
    state, metrics = step(state0, batches, run.key)
    out[n] = (float(metrics["bpd"][0]), jax.device_get(state.params))
    if n == 2:
        # The noise (vdm/core/draws.py) is drawn flat, (b·H·W·C,), and reshaped: each device
        # should draw its own half, not the whole batch's draw (counted in the compiled,
        # partitioned program's shapes).
        # (`state`, not the donated `state0`: the same shapes and shardings.) Threefry's bits
        # are u32, which no parameter or activation is.
        hlo = step.lower(state, batches, run.key).compile().as_text()
        flat = 8 * int(np.prod(run.x_shape))
        draw_shapes = {
            "global": len(re.findall(rf"u32\[{flat}\]", hlo)),
            "per_device": len(re.findall(rf"u32\[{flat // 2}\]", hlo)),
        }
diffs = [
    np.max(np.abs(a - b))
    for a, b in zip(jax.tree.leaves(out[1][1]), jax.tree.leaves(out[2][1]), strict=True)
]

# Sampling and PF-ODE likelihood: the batch split over the mesh, each built once per run.
c.sample.sampler, c.sample.steps, c.sample.batch_size = "ddim", 4, 6
c.eval.pf_ode_examples, c.eval.pf_ode_batch_size = 6, 4  # two batches, the last one padded
params = out[1][1]
samples, pf, compiles = {}, {}, {}
for n in (1, 2):
    r = session.Run(c, "/tmp/unused")
    r.mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",))
    first = r.sample(params, n=6)
    again = r.sample(params, n=6)
    assert np.array_equal(first, again)
    samples[n] = first
    pf[n] = [r.evaluate_pf_ode(params)["pf_ode_bpd"] for _ in range(2)]
    r.evaluate(params)
    r.evaluate(params)
    fn, _ = r.sampler(6)
    compiles[n] = {
        "samplers": len(r._samplers),
        "sampler": fn._cache_size(),
        "pf_ode": r.pf_ode_step()._cache_size(),
        "eval": r.eval_step._cache_size(),
    }
print(
    json.dumps(
        {
            "n_devices": jax.device_count(),
            "loss_diff": abs(out[1][0] - out[2][0]),
            "param_diff": float(max(diffs)),
            "sample_mismatch": float(np.mean(samples[1] != samples[2])),
            "pf_ode_diff": abs(pf[1][0] - pf[2][0]),
            "pf_ode_repeat_diff": abs(pf[2][0] - pf[2][1]),
            "compiles": compiles,
            "flat_draw_shapes": draw_shapes,
        }
    )
)
