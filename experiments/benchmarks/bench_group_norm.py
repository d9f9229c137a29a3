"""The ScoreUNet's two GroupNorm forms in whole train steps: flax's (the default) against the
affine map y = x·a + (β − μa) that the network used from 2026-12-03 to 12-06.

    python experiments/benchmarks/bench_group_norm.py [--cases digits,official_cifar] \
        [--steps 100] [--rounds 5] [--batch 0] [--out results/bench_group_norm.json]

Per case (bench_train.py's), both train steps are compiled in one process and timed in
alternation, `--steps` steps per turn, `--rounds` turns each, the order swapped every turn,
so whatever else loads the machine loads both alike. Runs under the environment it is given
(`VDM_XLA_CPU_DEFAULTS=0` for jaxlib's defaults). Prints and saves steps/s per turn and the
ratio of medians, flax over affine.
"""

from __future__ import annotations

import argparse
import os

from experiments import common as bench_io
from experiments.benchmarks.bench_train import ab_row, build_case
from experiments.common import ROOT

FORMS = ("flax", "affine")


def ab(case: str, steps: int, rounds: int, batch: int) -> dict:
    """Steps/s of the two forms' train steps, alternated in this process."""
    import jax

    sides = {}
    for form in FORMS:
        step, state, data, key, *_ = build_case(case, "base", batch, group_norm=form)
        compiled = step.lower(state, data, key).compile()
        state, m = compiled(state, data, key)  # warm-up
        jax.block_until_ready(m)
        sides[form] = [compiled, state, data, key]
    row = ab_row(case, sides, steps, rounds, ratio=("flax", "affine"))
    row["vdm_xla_cpu_defaults"] = os.environ.get("VDM_XLA_CPU_DEFAULTS", "1")
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default="digits,official_cifar")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=0, help="override the config's batch size")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_group_norm.json"))
    args = p.parse_args(argv)
    rows = []
    for case in bench_io.csv_list(args.cases):
        rows.append(ab(case, args.steps, args.rounds, args.batch))
    bench_io.write_results(args.out, __file__, rows)


if __name__ == "__main__":
    main()
