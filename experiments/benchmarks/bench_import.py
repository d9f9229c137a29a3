"""Memory and time of `vdm import` for a checkpoint of a released model's size, against reading
the same file the usual way (the whole file into memory, then `flax.serialization.msgpack_restore`).

    python experiments/benchmarks/bench_import.py [--model cifar10|cifar10_aug] [--dir /tmp/x]
        [--out results/bench_import.json]

The file is made here in the official layout (clu's `ckpt-N.flax`: step, params, ema_params and
AdamW's mu and nu, random values; every name and shape of the released model's) since the
released files cannot be fetched from these machines. Each side runs in its own process and
reports its peak resident memory (VmHWM: its own, unlike ru_maxrss, which a child inherits
from the process that forked it) and wall time; a third process that only imports
the same modules gives the interpreter's own footprint, which both sides include. Reported:
peak and (peak − interpreter) as multiples of the file's size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from experiments import common as bench_io

CHILD = r"""
import json, sys, time
import jax, flax.serialization, numpy  # the imports both sides pay
from vdm.importers import workdir as _w
mode, path, out = sys.argv[1:4]
t0 = time.time()
if mode == "import":
    _w.import_checkpoint(path, out, log=lambda _: None)
elif mode == "whole":
    with open(path, "rb") as f:
        tree = flax.serialization.msgpack_restore(f.read())
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]  # this process's
print(json.dumps({"seconds": time.time() - t0, "peak_bytes": int(hwm.split()[1]) * 1024}))
"""


def make_file(model: str, path: str) -> int:
    """A checkpoint of `model`'s size in the official layout, written to `path`; its bytes."""
    import numpy as np
    from flax import serialization

    from vdm.importers import google_vdm
    from vdm.importers.workdir import RELEASED

    r = next(r for r in RELEASED if r.name == model)
    m = google_vdm.OfficialModel(fourier=True, channels=3, n_features=1024, **r.model)
    pmap = google_vdm.parameter_map(m, keep_flag=True)
    rng = np.random.default_rng(0)

    def tree(scale):
        out: dict = {}
        for path_, (shape, _, _) in pmap.items():
            node = out
            for k in ("score_model", *path_[1:-1]) if path_[0] == "score_model" else path_[:-1]:
                node = node.setdefault(k, {})
            node[path_[-1]] = (scale * rng.standard_normal(shape)).astype(np.float32)
        return out

    state = {
        "step": 1,
        "params": tree(0.02),
        "ema_params": tree(0.02),
        "opt_state": {
            "0": {"count": np.int32(1), "mu": tree(1e-3), "nu": tree(1e-6)},
            "1": {"inner_state": {}},
            "2": {},
        },
    }
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(state))
    return os.path.getsize(path)


def child(mode: str, path: str, out: str) -> dict:
    import json

    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, path, out],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        cwd=bench_io.ROOT,
    )
    if proc.returncode:
        raise SystemExit(f"{mode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cifar10", choices=["cifar10", "cifar10_aug"])
    p.add_argument("--dir", default="/tmp/vdm_bench_import")
    p.add_argument("--out", default="results/bench_import.json")
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, "checkpoints-0", "ckpt-1.flax")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t0 = time.time()
    size = make_file(args.model, path) if not os.path.exists(path) else os.path.getsize(path)
    print(f"{path}: {size / 2**20:,.0f} MiB ({time.time() - t0:.0f} s to make)")
    runs = {}
    for mode in ("baseline", "whole", "import"):
        out = os.path.join(args.dir, f"run_{time.time_ns()}")
        runs[mode] = child(mode, os.path.dirname(path) if mode == "import" else path, out)
    base = runs["baseline"]["peak_bytes"]
    rows = []
    for mode, what in (("whole", "read whole + msgpack_restore"), ("import", "vdm import")):
        peak = runs[mode]["peak_bytes"]
        row = {
            "model": args.model,
            "side": what,
            "file_bytes": size,
            "peak_bytes": peak,
            "interpreter_bytes": base,
            "peak_over_file": round(peak / size, 2),
            "above_interpreter_over_file": round((peak - base) / size, 2),
            "seconds": round(runs[mode]["seconds"], 1),
        }
        rows.append(row)
        print(
            f"{what:<30} peak {peak / 2**20:,.0f} MiB = {row['peak_over_file']}× the file; "
            f"{row['above_interpreter_over_file']}× above the interpreter's "
            f"{base / 2**20:,.0f} MiB; {row['seconds']} s"
        )
    bench_io.write_results(args.out, __file__, rows)


if __name__ == "__main__":
    main()
