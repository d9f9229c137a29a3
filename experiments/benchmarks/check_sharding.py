"""Accelerator readiness, checked on CPU: the paper-size train step on a 2-device mesh.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python experiments/benchmarks/check_sharding.py [--variant scan] [--steps-per-call 1,2,4] \
        [--out results/check_sharding.json]

Builds the `paper` case (bench_train.py: the CIFAR-10 ScoreUNet, n_embd 128, n_layer 32, γ_η,
batch 8) with `--variant` (bench_train.VARIANTS; `scan` by default) on a mesh of every device,
lowers and compiles the train step and reads the compiled, SPMD-partitioned program:

- the batch is split: the images enter with the data axis sharded, and no activation of the
  per-device program has the global batch as its leading dimension (a replicated activation
  would), and no random bits have the global batch's flat size (`vdm/core/draws.py` draws
  flat, then reshapes: each device should draw only its share; counted as u32 shapes in the
  HLO text);
- one copy of the parameters per device: each device's arguments are the whole train state
  (replicated: parameters, EMA, optimizer moments) plus its share of the batch, nothing more
  (XLA's memory analysis, per device);
- `training.loop=scan` with `steps_per_call` = k compiles in about the time of k = 1 (the steps
  are one loop, not k copies), with the blocks scanned inside it.

Exits non-zero, naming the check, when one fails; writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time

import vdm  # noqa: F401  (its XLA:CPU defaults, before JAX starts a backend)
from experiments import common as bench_io
from experiments.benchmarks.bench_train import VARIANTS, case_config


def build(variant: str, steps_per_call: int, loop: str):
    """(train step, state, batches, key, config, shape) of `paper` on every device."""
    import jax
    import numpy as np

    from vdm import sharding
    from vdm.model import VDM
    from vdm.run import train_step

    c, shape, num_classes = case_config("paper")
    c.model.update(VARIANTS[variant])
    c.training.steps_per_call, c.training.loop = steps_per_call, loop
    model = VDM.from_config(c, num_classes)
    optimizer = train_step.make_optimizer(c.optimizer, c.training.num_steps)
    mesh = sharding.make_mesh()
    step = train_step.make_train_step(model, optimizer, c, int(np.prod(shape)), mesh)
    state = jax.eval_shape(
        lambda k: train_step.init_state(model, optimizer, k, shape), jax.random.key(0)
    )
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)), state
    )
    b = c.training.batch_size
    batches = {
        "image": jax.ShapeDtypeStruct(
            (steps_per_call, b, *shape), np.uint8, sharding=sharding.data_sharded(mesh, leading=1)
        ),
        "label": jax.ShapeDtypeStruct(
            (steps_per_call, b), np.int32, sharding=sharding.data_sharded(mesh, leading=1)
        ),
    }
    return step, state, batches, jax.random.key(1), c, shape


def main(argv=None):
    import jax

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", default="scan", choices=sorted(VARIANTS))
    p.add_argument("--steps-per-call", default="1,2,4")
    p.add_argument("--out", default="results/check_sharding.json")
    a = p.parse_args(argv)
    n_dev = jax.device_count()
    if n_dev < 2:
        sys.exit(
            "check_sharding: needs 2+ devices (XLA_FLAGS=--xla_force_host_platform_device_count=2)"
        )
    failures, rows = [], []
    for k in bench_io.csv_list(a.steps_per_call, int):
        loop = "host" if k == 1 else "scan"
        step, state, batches, key, c, shape = build(a.variant, k, loop)
        t0 = time.perf_counter()
        jitted = getattr(step, "step", step)  # the host loop's one compiled step
        lowered = jitted.lower(state, batches, key)
        compiled = lowered.compile()
        seconds = time.perf_counter() - t0
        row = {"steps_per_call": k, "loop": loop, "compile_s": seconds, "devices": n_dev}
        if k == 1:
            b = c.training.batch_size
            hlo = compiled.as_text()
            state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
            batch_bytes = sum(
                math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(batches)
            )
            mem = compiled.memory_analysis()
            per_device_args = mem.argument_size_in_bytes
            expected = state_bytes + batch_bytes / n_dev
            row.update(
                state_mib=state_bytes / 2**20,
                argument_mib_per_device=per_device_args / 2**20,
                expected_mib_per_device=expected / 2**20,
                temp_mib_per_device=mem.temp_size_in_bytes / 2**20,
            )
            pixels = "{},{}".format(*shape[:2])  # any channel count: images and activations
            full = len(re.findall(rf"\[{b},{pixels},\d+\]", hlo))
            split = len(re.findall(rf"\[{b // n_dev},{pixels},\d+\]", hlo))
            row.update(global_batch_image_shapes=full, per_device_image_shapes=split)
            if full or not split:
                failures.append(f"activations: {full} of global batch shape, {split} per-device")
            # The noise of vdm/core/draws.py is drawn flat, (b·H·W·C,), then reshaped: a flat
            # draw XLA left whole on every device would pass the image-shape check above.
            # Threefry's counters and bits are u32; parameters and activations are not.
            flat = b * math.prod(shape)
            flat_full = len(re.findall(rf"u32\[{flat}\]", hlo))
            flat_split = len(re.findall(rf"u32\[{flat // n_dev}\]", hlo))
            row.update(global_flat_draw_shapes=flat_full, per_device_flat_draw_shapes=flat_split)
            if flat_full or not flat_split:
                failures.append(
                    f"random draws: {flat_full} mentions of u32[{flat}] (the whole batch's "
                    f"bits), {flat_split} of u32[{flat // n_dev}] (a device's share)"
                )
            if abs(per_device_args - expected) > 0.01 * expected:
                failures.append(
                    f"arguments per device {per_device_args / 2**20:.1f} MiB, expected "
                    f"{expected / 2**20:.1f} (one state + 1/{n_dev} of the batch)"
                )
            in_sh = compiled.input_shardings[0]
            batch_sh = jax.tree.leaves(in_sh[1])[0]
            row["batch_sharding"] = str(batch_sh)
            if batch_sh.is_fully_replicated:
                failures.append("the batch enters replicated")
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["compile_s"]
    for r in rows[1:]:
        r["compile_ratio_to_k1"] = r["compile_s"] / base
        if r["compile_ratio_to_k1"] > 2.0:
            failures.append(
                f"steps_per_call={r['steps_per_call']} compiles {r['compile_ratio_to_k1']:.1f}× k=1"
            )
    bench_io.write_results(a.out, __file__, rows + [{"failures": failures}])
    if failures:
        sys.exit("check_sharding failed: " + "; ".join(failures))
    print("check_sharding: all checks passed")


if __name__ == "__main__":
    main()
