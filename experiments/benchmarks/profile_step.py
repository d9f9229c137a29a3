"""Where a train step's time goes, the project's against google-research/vdm's, part by part.

    python experiments/benchmarks/profile_step.py --official DIR [--batch 16] [--rounds 5]
        [--out results/profile_step.json]

Both sides on the official ScoreUNet configuration (`bench_train.py`'s `official_cifar`),
built in one process, under the same runtime (whatever XLA_FLAGS and `import vdm` give, the
same on both sides), the same batch of images. Each part is its own jitted function, timed
in alternation with the other side's (`--rounds` turns each, median seconds per call):

  net_fwd      the score network alone: ε̂(z_t, γ_t), train mode (dropout)
  net_vjp      the network's forward and backward pass (a vector-Jacobian product w.r.t.
               its parameters)
  loss         the bound: sampling t and ε, the schedule, the network, the three terms
  loss_grad    the bound and its gradient
  step         the whole train step: gradient, optimizer, EMA and, on the project's side,
               the per-step metrics

Differences between consecutive parts say what each layer adds (e.g. step − loss_grad is the
optimizer, EMA and metrics). XLA's cost analysis gives each part's GFLOP per call on both
sides, so unequal work shows. Writes `--out` (JSON).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from experiments import common as bench_io
from experiments.benchmarks.bench_train import _gflop, build_case, build_official
from experiments.common import ROOT


def project_parts(batch: int):
    """{part: (fn, args)} of the project's step on `official_cifar`."""
    import jax
    import jax.numpy as jnp

    step, state, data, key, config, shape, _ = build_case("official_cifar", "base", batch)
    from vdm.model import VDM

    model = VDM.from_config(config, 10)
    params = jax.tree.map(jnp.copy, state.params)  # the step donates its state
    images = data["image"][0]
    b = images.shape[0]
    z = jax.random.normal(jax.random.key(2), images.shape, jnp.float32)
    g = jnp.linspace(-13.0, 5.0, b)
    n_dims = int(images[0].size)

    def net(p, z, g, k):
        return model.network.apply({"params": p}, z, g, train=True, rngs={"dropout": k})

    def net_vjp(p, z, g, k):
        out, pull = jax.vjp(lambda p: net(p, z, g, k), p)
        return pull(jnp.ones_like(out))[0]

    def loss(p, batch, k):
        terms, _ = model.train_terms(p, k, batch)
        return jnp.mean(sum(terms.values())) / (n_dims * jnp.log(2.0))

    batch1 = {"image": images}
    k = jax.random.key(3)
    return {
        "net_fwd": (jax.jit(net), (params["net"], z, g, k)),
        "net_vjp": (jax.jit(net_vjp), (params["net"], z, g, k)),
        "loss": (jax.jit(loss), (params, batch1, k)),
        "loss_grad": (jax.jit(jax.value_and_grad(loss)), (params, batch1, k)),
        "step": (step, (state, data, key)),
    }


def official_parts(directory: str, batch: int):
    """{part: (fn, args)} of google-research/vdm's step on the same configuration."""
    import jax
    import jax.numpy as jnp

    built = build_official(directory, batch, parts=True)
    step, state, images, key, b, _, model, loss_fn = built
    params = state[1]
    z = jax.random.normal(jax.random.key(2), images.shape, jnp.float32)
    g = jnp.linspace(-13.0, 5.0, b)
    cond = jnp.zeros((b,))

    def net(p, z, g, k):
        return model.apply(
            {"params": p},
            z,
            g,
            cond,
            False,
            rngs={"dropout": k},
            method=lambda m, *a: m.score_model(*a),
        )

    def net_vjp(p, z, g, k):
        out, pull = jax.vjp(lambda p: net(p, z, g, k), p)
        return pull(jnp.ones_like(out))[0]

    def loss(p, images, k):
        return loss_fn(p, images, k)[0]

    k = jax.random.key(3)
    return {
        "net_fwd": (jax.jit(net), (params, z, g, k)),
        "net_vjp": (jax.jit(net_vjp), (params, z, g, k)),
        "loss": (jax.jit(loss), (params, images, k)),
        "loss_grad": (jax.jit(jax.value_and_grad(loss)), (params, images, k)),
        "step": (step, (state, images, key)),
    }


PARTS = ("net_fwd", "net_vjp", "loss", "loss_grad", "step")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--official", required=True, help="folder holding the official model_vdm.py")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "profile_step.json"))
    a = p.parse_args(argv)
    import jax
    import numpy as np

    sides = {"project": project_parts(a.batch), "official": official_parts(a.official, a.batch)}
    compiled, gflop, args = {}, {}, {}

    def call(side, part):
        out = compiled[side, part](*args[side, part])
        jax.block_until_ready(out)
        if part == "step":  # the state goes on (the project's step donates it)
            args[side, part] = (out[0], *args[side, part][1:])

    for side, parts in sides.items():
        for part, (fn, fn_args) in parts.items():
            compiled[side, part] = c = fn.lower(*fn_args).compile()
            gflop[side, part], args[side, part] = _gflop(c), fn_args
            call(side, part)  # warm-up
    seconds = {key: [] for key in compiled}
    for r in range(a.rounds):
        for part in PARTS:
            for side in ("project", "official") if r % 2 == 0 else ("official", "project"):
                t0 = time.perf_counter()
                call(side, part)
                seconds[side, part].append(time.perf_counter() - t0)
    rows = []
    for part in PARTS:
        mine, ref = (float(np.median(seconds[s, part])) for s in ("project", "official"))
        row = {
            "part": part,
            "project_s": mine,
            "official_s": ref,
            "official_over_project": ref / mine,
            "project_gflop": gflop["project", part],
            "official_gflop": gflop["official", part],
            "project_turns_s": seconds["project", part],
            "official_turns_s": seconds["official", part],
        }
        rows.append(row)
        spread = {s: (min(seconds[s, part]) * 1e3, max(seconds[s, part]) * 1e3) for s in sides}
        print(
            f"{part:10s} project {mine * 1e3:8.1f} ms [{spread['project'][0]:.0f}–"
            f"{spread['project'][1]:.0f}] ({row['project_gflop']:6.1f} GFLOP)  "
            f"official {ref * 1e3:8.1f} ms [{spread['official'][0]:.0f}–"
            f"{spread['official'][1]:.0f}] ({row['official_gflop']:6.1f} GFLOP)  "
            f"speed ratio {ref / mine:.2f}×",
            flush=True,
        )
    meta = {"batch": a.batch, "rounds": a.rounds, "xla_flags": os.environ.get("XLA_FLAGS", "")}
    bench_io.write_results(a.out, __file__, rows + [meta])
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
