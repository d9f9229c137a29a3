"""What `compress.portable` costs: the same images compressed and decompressed by the same
model, with and without the pins (vdm/compress/portable.py), through the command line.

    python experiments/benchmarks/bench_portable.py [--config digits] [--train-steps 300]
        [--workdir runs/bench_portable] [--images 128] [--steps 1000] [--batch 64]
        [--rounds 3] [--out results/bench_portable.json]

Trains `--config` for `--train-steps` into `--workdir` if it holds no checkpoint. Then, per
round, compresses the last `--images` test images at T = `--steps` and decompresses them, once
each way, the order swapped every round; every command is a fresh process (as a user runs
it), timed whole (start, compile, coding) and checked bit-exact. Prints and saves the median
seconds per command and the ratios portable / default, with the file sizes (the header of a
portable file records the same fields, so the sizes differ only by its values).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from experiments import common as bench_io
from experiments.common import ROOT


def cli(*args) -> float:
    """Seconds of one `python -m vdm.main` command (exits on a failure)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "vdm.main", *args], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode:
        sys.exit(f"vdm.main {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="digits")
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_portable"))
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--steps", type=int, default=1000, help="T of the coding chain")
    p.add_argument("--batch", type=int, default=64, help="compress.batch_size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_portable.json"))
    args = p.parse_args(argv)

    config, work = f"--config={args.config}", f"--workdir={args.workdir}"
    if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
        cli(config, work, f"--config.training.num_steps={args.train_steps}")
    from sklearn.datasets import load_digits

    images = load_digits().images[-args.images :].astype(np.uint8)[..., None]
    scratch = os.path.join(args.workdir, "bench_portable")
    os.makedirs(scratch, exist_ok=True)
    source = os.path.join(scratch, "images.npz")
    np.savez(source, images=images)
    coding = [f"--config.compress.steps={args.steps}", f"--config.compress.batch_size={args.batch}"]
    times = {(side, what): [] for side in ("default", "portable") for what in ("enc", "dec")}
    sizes = {}
    for r in range(args.rounds):
        for side in ("default", "portable") if r % 2 == 0 else ("portable", "default"):
            vdmz, back = os.path.join(scratch, f"{side}.vdmz"), os.path.join(scratch, "back.npz")
            for path in (vdmz, back):
                if os.path.exists(path):
                    os.remove(path)
            flag = [f"--config.compress.portable={side == 'portable'}"]
            io = [f"--input={source}", f"--output={vdmz}"]
            times[side, "enc"].append(cli(config, work, "--mode=compress", *io, *coding, *flag))
            io = [f"--input={vdmz}", f"--output={back}"]
            times[side, "dec"].append(cli(config, work, "--mode=decompress", *io))
            if not np.array_equal(np.load(back)["images"], images):
                sys.exit(f"{side}: the decoded images differ")
            sizes[side] = os.path.getsize(vdmz)
            print(
                f"round {r} {side}: encode {times[side, 'enc'][-1]:.1f} s, "
                f"decode {times[side, 'dec'][-1]:.1f} s, {sizes[side]:,} bytes",
                flush=True,
            )
    med = {f"{side}_{what}_s": statistics.median(v) for (side, what), v in times.items()}
    row = {
        "config": args.config,
        "images": args.images,
        "steps": args.steps,
        "batch_size": args.batch,
        "rounds": args.rounds,
        "cpus": len(os.sched_getaffinity(0)),
        **med,
        "encode_ratio": med["portable_enc_s"] / med["default_enc_s"],
        "decode_ratio": med["portable_dec_s"] / med["default_dec_s"],
        "bytes_default": sizes["default"],
        "bytes_portable": sizes["portable"],
        "turns": {f"{s}_{w}": v for (s, w), v in times.items()},
    }
    print(
        f"portable / default, whole commands: encode {row['encode_ratio']:.2f}x "
        f"({med['portable_enc_s']:.1f} / {med['default_enc_s']:.1f} s), decode "
        f"{row['decode_ratio']:.2f}x ({med['portable_dec_s']:.1f} / {med['default_dec_s']:.1f} s)"
        f"; {sizes['portable']:,} / {sizes['default']:,} bytes"
    )
    bench_io.write_results(args.out, __file__, [row])


if __name__ == "__main__":
    main()
