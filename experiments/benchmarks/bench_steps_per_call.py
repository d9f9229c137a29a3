"""`training.steps_per_call` and `training.loop`: per-step time and compile time, side by side.

    python experiments/benchmarks/bench_steps_per_call.py [--cases digits,swirl2d_colab]
        [--cells host:1,host:10,host:100,scan:1,scan:10] [--seconds 20]
        [--out results/bench_steps_per_call.json]

Each (case, loop, steps_per_call) cell runs in its own subprocess: compile the train step,
one warm-up call, then calls for about `--seconds`. Reports ms per train step, the compile
time, and each cell's per-step time as a ratio to the case's `host:1` cell measured in the
same run (this machine is shared: ratios, not absolute times, are the result).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from experiments import common as bench_io
from experiments.common import ROOT


def case_config(name: str):
    from vdm.run.config import load_file

    c = load_file(name)
    shape = {"digits": (8, 8, 1), "swirl2d_colab": (2,), "swirl2d": (2,)}.get(name)
    if shape is None:
        raise ValueError(f"--cases: no data shape known for {name!r}")
    return c, shape


def run_cell(name: str, loop: str, k: int, seconds: float) -> dict:
    import jax
    import numpy as np

    from vdm import sharding
    from vdm.model import VDM
    from vdm.run import train_step

    c, shape = case_config(name)
    c.training.loop, c.training.steps_per_call = loop, k
    model = VDM.from_config(c, 0)
    optimizer = train_step.make_optimizer(c.optimizer, c.training.num_steps)
    mesh = sharding.make_mesh()
    step = train_step.make_train_step(model, optimizer, c, int(np.prod(shape)), mesh)
    init = jax.jit(
        lambda key: train_step.init_state(model, optimizer, key, shape),
        out_shardings=sharding.replicated(mesh),
    )
    state = init(jax.random.key(0))
    rng = np.random.default_rng(0)
    b = c.training.batch_size
    image = rng.integers(0, c.data.vocab_size, (k, b, *shape), dtype=np.uint8)
    batches = sharding.shard_batch({"image": image}, mesh, leading=1)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    state, m = step(state, batches, key)  # compile + first call
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, m = step(state, batches, key)
    jax.block_until_ready(m)
    one_call = time.perf_counter() - t0
    calls = max(1, int(seconds / max(one_call, 1e-3)))
    t0 = time.perf_counter()
    for _ in range(calls):
        state, m = step(state, batches, key)
    jax.block_until_ready(m)
    per_step = (time.perf_counter() - t0) / (calls * k)
    return {
        "case": name,
        "loop": loop,
        "steps_per_call": k,
        "ms_per_step": per_step * 1e3,
        "compile_s": max(first - one_call, 0.0),
        "steps_timed": calls * k,
        "backend": jax.default_backend(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default="digits,swirl2d_colab")
    p.add_argument("--cells", default="host:1,host:10,host:100,scan:1,scan:10")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_steps_per_call.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: case:loop:k, print JSON
    args = p.parse_args(argv)
    if args.one:
        name, loop, k = args.one.split(":")
        print(json.dumps(run_cell(name, loop, int(k), args.seconds)))
        return
    cells = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cells.split(",")]
    results = []
    for name in args.cases.split(","):
        case_config(name)
        base = None
        for loop, k in cells:
            r = bench_io.run_json(
                [sys.executable, __file__, "--one", f"{name}:{loop}:{k}"]
                + ["--seconds", str(args.seconds)],
                f"cell {name} {loop}:{k}",
            )
            if (loop, k) == ("host", 1):
                base = r["ms_per_step"]
            r["time_vs_host_1"] = r["ms_per_step"] / base if base else None
            results.append(r)
            ratio = f"{r['time_vs_host_1']:6.2f}× host:1" if base else ""
            print(
                f"{name:14s} {loop:4s} k={k:<4d} {r['ms_per_step']:9.2f} ms/step "
                f"compile {r['compile_s']:6.1f} s  {ratio}",
                flush=True,
            )
    bench_io.write_results(args.out, __file__, results)


if __name__ == "__main__":
    main()
