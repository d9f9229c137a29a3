"""Training batches per second from the memory-mapped archive cache (vdm/data/archives.py),
at the paper's batch size, against what one accelerator consumes.

    python experiments/benchmarks/bench_input.py [--cases cifar10,imagenet64] [--hosts 1,8]
        [--steps 200] [--imagenet64-rows 200000] [--dir results/bench_input]
        [--out results/bench_input.json]

Per case a cache of the data set's shape is written once under `--dir` in the exact layout
`archives.prepare` leaves (random pixels: the reader's cost does not depend on them;
ImageNet 64 with `--imagenet64-rows` rows, 12,288 bytes each, instead of 1.28M unless given
1281149). Then `datasets.train_batches` (the loop `vdm.main` trains from: a pure function of
the step, each host's slice of the global batch, random flips, a prefetch thread) runs
`--steps` steps for each host count, as the last host of that many: its sustained images per
second (steps over their total time, cold reads included) is what that host's accelerator
can be fed; the median step is printed beside it. Cold reads: the cache's pages are dropped
from the OS page cache before each case where the machine allows it (root:
/proc/sys/vm/drop_caches).

The consumer, stated as an assumption: the paper-size train step's FLOPs per image
(experiments/benchmarks/bench_compile.py and bench_train.py measure 7.2 GFLOP per CIFAR-10
image; ImageNet 64's model has 4× the pixels, 4× the channel products and 2× the depth: 32×
that) at 400 TFLOP/s, an H100's dense bf16 peak: an upper bound on what one accelerator eats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from experiments import common as bench_io
from experiments.common import ROOT

GFLOP_PER_IMAGE = {"cifar10": 7.2, "imagenet64": 7.2 * 32}
PEAK_TFLOPS = 400.0
CASES = {"cifar10": ((32, 32, 3), 50000, 10), "imagenet64": ((64, 64, 3), 1281149, 0)}


def make_cache(directory: str, shape, rows: int, num_classes: int) -> str:
    """A cache in `archives.prepare`'s layout, random pixels, written once."""
    path = os.path.join(directory, "train_images.npy")
    if os.path.exists(path) and np.load(path, mmap_mode="r").shape == (rows, *shape):
        return path
    os.makedirs(directory, exist_ok=True)
    images = np.lib.format.open_memmap(path, "w+", np.uint8, (rows, *shape))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 8192):
        stop = min(rows, start + 8192)
        images[start:stop] = rng.integers(0, 256, (stop - start, *shape), dtype=np.uint8)
    images.flush()
    del images
    labels = rng.integers(0, max(num_classes, 1), rows).astype(np.int32)
    np.save(os.path.join(directory, "train_labels.npy"), labels)
    return path


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def measure(path: str, num_classes: int, batch: int, hosts: int, steps: int) -> dict:
    from vdm.data import datasets

    images = np.load(path, mmap_mode="r")
    labels = np.load(os.path.join(os.path.dirname(path), "train_labels.npy"))

    def get(idx):
        out = {"image": np.asarray(images[idx])}
        if num_classes:
            out["label"] = labels[idx]
        return out

    split = datasets.Split(len(images), images.shape[1:], num_classes, get)
    cold = drop_page_cache()
    it = datasets.train_batches(
        split, batch, 0, 0, True, 1, process_index=hosts - 1, process_count=hosts
    )
    first = next(it)  # the prefetch thread started
    per_step, t = [], time.perf_counter()
    for _ in range(steps):
        next(it)
        now = time.perf_counter()
        per_step.append(now - t)
        t = now
    it.close()
    local = first["image"].shape[1]  # (steps_per_call, local batch, ...)
    seconds = statistics.median(per_step)
    return {
        "global_batch": batch,
        "hosts": hosts,
        "local_batch": local,
        "steps": steps,
        "cold_page_cache": cold,
        "median_step_s": seconds,
        "batches_per_s": steps / sum(per_step),
        "images_per_s_per_host": local / seconds,
        "mean_images_per_s_per_host": local * steps / sum(per_step),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default="cifar10,imagenet64")
    p.add_argument("--hosts", default="1,8")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=128, help="the global batch (the paper's)")
    p.add_argument("--imagenet64-rows", type=int, default=200000)
    p.add_argument("--dir", default=os.path.join(ROOT, "results", "bench_input"))
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_input.json"))
    args = p.parse_args(argv)
    rows = []
    for case in bench_io.csv_list(args.cases):
        shape, n, classes = CASES[case]
        n = args.imagenet64_rows if case == "imagenet64" else n
        path = make_cache(os.path.join(args.dir, case), shape, n, classes)
        consumer = PEAK_TFLOPS * 1e3 / GFLOP_PER_IMAGE[case]
        for hosts in bench_io.csv_list(args.hosts, int):
            row = {"case": case, "rows": n, **measure(path, classes, args.batch, hosts, args.steps)}
            row["accelerator_images_per_s_bound"] = consumer
            row["headroom"] = row["mean_images_per_s_per_host"] / consumer
            rows.append(row)
            print(
                f"{case} ({n:,} rows), {hosts} host(s), {row['local_batch']} a host: "
                f"{row['mean_images_per_s_per_host']:,.0f} images/s sustained (median step "
                f"{row['images_per_s_per_host']:,.0f}) against ≤ {consumer:,.0f} an "
                f"accelerator eats: {row['headroom']:.1f}×",
                flush=True,
            )
    bench_io.write_results(args.out, __file__, rows)


if __name__ == "__main__":
    main()
