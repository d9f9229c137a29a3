"""What a gs:// run directory costs: Cloud Storage requests per logged row and per checkpoint,
bytes put per checkpoint, and the wall time of the same run on a local disk and on gs://.

    python experiments/benchmarks/bench_gcs.py [--steps 400] [--out docs/data/bench_gcs.json]

Every run is the CLI's training of the digits smoke config against fake-gcs-server (the
emulator the tests use, tests/gcs_emulator.py, here at log level `info`, which logs each
request), in a fresh workdir, with evals off (`eval_every` past the end; the end of training's
eval and sample run in all of them). Three runs differ in one setting each, so the
differences isolate one cost:
  base:   `--steps`, a row every steps/4, one save at the end;
  saves:  as base, a save every steps/4 (3 more checkpoints);
  rows:   as base, a row every steps/20 (16 more rows).
Requests per checkpoint = (saves − base) / 3, per row = (rows − base) / 16; what is left of
base is a run's fixed cost (start, restore check, final eval, samples, exit). Bytes per
checkpoint are the sizes of a step's objects, listed after the run. The local run repeats
`base` in a local folder, same flags, same process; its wall time is the reference for the
gs:// one's (the emulator is on this machine: network latency is not in it).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments import common as bench_io  # noqa: E402

REQUEST = re.compile(r'\\"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP')


def kind(method: str, url: str) -> str:
    if "/upload/" in url:
        return "upload"
    if "/download/" in url or "alt=media" in url:
        return "download"
    if method == "DELETE":
        return "delete"
    if "/copyTo/" in url or "/rewriteTo/" in url:
        return "copy"
    if re.search(r"/o\?|/o$", url):
        return "list"
    return "metadata"


def requests_of(log: str, start: int) -> collections.Counter:
    with open(log) as f:
        f.seek(start)
        return collections.Counter(kind(*m.groups()) for m in REQUEST.finditer(f.read()))


def train(workdir: str, steps: int, log_every: int, save_every: int) -> float:
    cmd = [
        sys.executable, "-m", "vdm.main", "--config=digits:smoke", f"--workdir={workdir}",
        f"--config.training.num_steps={steps}", f"--config.training.log_every={log_every}",
        f"--config.training.save_every={save_every}", f"--config.training.eval_every={10 * steps}",
    ]  # fmt: skip
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=bench_io.ROOT)
    if proc.returncode:
        sys.exit(f"{workdir} failed:\n{proc.stderr[-2000:]}")
    return time.time() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--out", default="docs/data/bench_gcs.json")
    args = p.parse_args()
    from tests.gcs_emulator import emulator
    from vdm import storage

    n = args.steps
    runs = {"base": (n // 4, n), "saves": (n // 4, n // 4), "rows": (n // 20, n)}
    results, counts, seconds = [], {}, {}
    with emulator(log_level="info") as server:
        for name, (log_every, save_every) in runs.items():
            start = os.path.getsize(server.log)
            seconds[name] = train(f"gs://test-bucket/{name}", n, log_every, save_every)
            counts[name] = requests_of(server.log, start)
            print(name, dict(counts[name]), f"{seconds[name]:.1f} s", flush=True)
        step_dir = f"gs://test-bucket/saves/checkpoints/{n}"
        from google.cloud import storage as gcs

        blobs = list(gcs.Client().list_blobs("test-bucket", prefix=f"saves/checkpoints/{n}/"))
        ckpt_bytes, ckpt_objects = sum(b.size for b in blobs), len(blobs)
        part = storage.read_bytes("gs://test-bucket/rows/metrics/000000.jsonl")
    with tempfile.TemporaryDirectory() as d:
        seconds["local"] = train(os.path.join(d, "base"), n, *runs["base"])
    kinds = sorted(set().union(*counts.values()))

    def per(a: str, b: str, k: int) -> dict:
        return {x: round((counts[a][x] - counts[b][x]) / k, 2) for x in kinds}

    per_ckpt, per_row = per("saves", "base", 3), per("rows", "base", 16)
    fixed = {
        x: round(counts["base"][x] - 1 * per_ckpt[x] - 4 * per_row[x], 1) for x in kinds
    }  # base: one save and 4 rows besides the fixed cost
    results.append(
        {
            "steps": n,
            "requests": {k: dict(v) for k, v in counts.items()},
            "requests_per_checkpoint": per_ckpt,
            "requests_per_row": per_row,
            "requests_fixed_per_run": fixed,
            "checkpoint_objects": ckpt_objects,
            "checkpoint_bytes": ckpt_bytes,
            "checkpoint_dir": step_dir,
            "metrics_part_rows": part.count(b"\n"),
            "metrics_part_bytes": len(part),
            "seconds_gs": round(seconds["base"], 1),
            "seconds_local": round(seconds["local"], 1),
            "gs_over_local": round(seconds["base"] / seconds["local"], 2),
        }
    )
    print(results[-1])
    bench_io.write_results(args.out, __file__, results)


if __name__ == "__main__":
    main()
