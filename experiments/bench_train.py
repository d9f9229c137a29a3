"""Training-step benchmark: steps/s, images/s, compile time, GFLOP/s, peak RSS.

    python experiments/bench_train.py [--cases digits,fashion_mnist,cifar_small] [--steps 50]
        [--variants base,remat,bf16] [--batch 64] [--out results/bench_train.json]

Each (case, variant) runs in its own subprocess (so peak RSS is its own) with the config's
real model and a batch of the config's shape; FLOPs come from XLA's cost analysis of the
compiled step. Variants: `base` (the config), `remat` (model.remat=True), `bf16`
(model.dtype=bfloat16); every other variant is also reported as ratios to `base` measured in
the same run (throughput, peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import bench_io  # noqa: E402  (experiments/ is on sys.path when a script runs)

CASES = ("digits", "fashion_mnist", "cifar_small")


def case_config(name: str):
    sys.path.insert(0, ROOT)
    from vdm.configs import cifar10, digits, fashion_mnist

    if name == "digits":
        return digits.get_config(), (8, 8, 1), 10
    if name == "fashion_mnist":
        return fashion_mnist.get_config(), (28, 28, 1), 10
    if name == "cifar_small":  # the CIFAR-10 ScoreUNet, shrunk to fit a CPU benchmark
        c = cifar10.get_config()
        c.model.n_embd, c.model.n_layer, c.training.batch_size = 64, 4, 32
        return c, (32, 32, 3), 10
    raise ValueError(f"--cases must be drawn from {CASES}, got {name!r}")


VARIANTS = {"base": {}, "remat": {"remat": True}, "bf16": {"dtype": "bfloat16"}}


def run_case(name: str, steps: int, variant: str = "base", batch: int = 0) -> dict:
    import jax
    import numpy as np

    from vdm import sharding, train_step
    from vdm.model import VDM, count_params

    c, shape, num_classes = case_config(name)
    c.training.steps_per_call = 1
    c.model.update(VARIANTS[variant])
    if batch:
        c.training.batch_size = batch
    model = VDM.from_config(c, num_classes)
    optimizer = train_step.make_optimizer(c.optimizer, c.training.num_steps)
    mesh = sharding.make_mesh()
    n_dims = int(np.prod(shape))
    step = train_step.make_train_step(model, optimizer, c, n_dims, mesh)
    init = jax.jit(
        lambda k: train_step.init_state(model, optimizer, k, shape),
        out_shardings=sharding.replicated(mesh),
    )
    state = init(jax.random.key(0))
    rng = np.random.default_rng(0)
    b = c.training.batch_size
    batch = {
        "image": rng.integers(0, c.data.vocab_size, (1, b, *shape), dtype=np.uint8),
        "label": rng.integers(0, num_classes, (1, b), dtype=np.int32),
    }
    batch = sharding.shard_batch(batch, mesh, leading=1)
    key = jax.random.key(1)

    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0

    state, m = compiled(state, batch, key)  # warm-up
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, batch, key)
    jax.block_until_ready(m)
    dt = time.perf_counter() - t0
    return {
        "case": name,
        "variant": variant,
        "image_shape": list(shape),
        "batch_size": b,
        "n_params": count_params(state.params),
        "steps_per_s": steps / dt,
        "images_per_s": steps * b / dt,
        "compile_s": compile_s,
        "gflop_per_step": flops / 1e9,
        "achieved_gflop_per_s": flops * steps / dt / 1e9,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--variants", default="base")
    p.add_argument("--batch", type=int, default=0, help="override the config's batch size")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_train.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: case:variant, print JSON
    args = p.parse_args()
    if args.one:
        name, variant = args.one.split(":")
        print(json.dumps(run_case(name, args.steps, variant, args.batch)))
        return
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"--variants must be drawn from {list(VARIANTS)}, got {v!r}")
    results = []
    for name in args.cases.split(","):
        case_config(name)  # validate the name before spawning
        base = None
        for variant in variants:
            r = bench_io.run_json(
                [sys.executable, __file__, "--one", f"{name}:{variant}"]
                + ["--steps", str(args.steps), "--batch", str(args.batch)],
                f"case {name}:{variant}",
            )
            if variant == "base":
                base = r
            elif base:
                r["throughput_vs_base"] = r["steps_per_s"] / base["steps_per_s"]
                r["peak_rss_vs_base"] = r["peak_rss_mib"] / base["peak_rss_mib"]
            results.append(r)
            ratios = (
                f"  {r['throughput_vs_base']:.2f}× base throughput, "
                f"{r['peak_rss_vs_base']:.2f}× base peak RSS"
                if "throughput_vs_base" in r
                else ""
            )
            print(
                f"{name:14s} {variant:6s} {r['steps_per_s']:8.2f} steps/s "
                f"{r['images_per_s']:9.1f} img/s compile {r['compile_s']:5.1f} s "
                f"{r['achieved_gflop_per_s']:7.2f} GFLOP/s peak RSS {r['peak_rss_mib']:7.0f} MiB "
                f"({r['n_params']:,} params){ratios}",
                flush=True,
            )
    bench_io.write_results(args.out, __file__, results)


if __name__ == "__main__":
    main()
