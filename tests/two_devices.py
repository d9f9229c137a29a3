"""Run by test_train.py in a subprocess with two CPU devices: one train step on a 2-device
mesh and on a 1-device mesh, same global batch; prints the differences as JSON."""

import json

import jax
import numpy as np
from jax.sharding import Mesh

from vdm import data, session, sharding, train_step
from vdm.configs import digits

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
    state, metrics = step(init(jax.random.key(0)), sharding.shard_batch(batch, mesh, 1), run.key)
    out[n] = (float(metrics["bpd"][0]), jax.device_get(state.params))
diffs = [
    np.max(np.abs(a - b))
    for a, b in zip(jax.tree.leaves(out[1][1]), jax.tree.leaves(out[2][1]), strict=True)
]
print(
    json.dumps(
        {
            "n_devices": jax.device_count(),
            "loss_diff": abs(out[1][0] - out[2][0]),
            "param_diff": float(max(diffs)),
        }
    )
)
