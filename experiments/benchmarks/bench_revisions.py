"""The default job at two revisions of this repository, alternated: is the change a regression?

    python experiments/benchmarks/bench_revisions.py --against REV [--rounds 3] \
        [--config configs/digits.py] [--steps 800] [--out results/bench_revisions.json]

Checks REV out into a temporary git worktree (nothing in this checkout changes) and runs
`python -m vdm.main --config=CONFIG --workdir=<fresh temp dir> --config.training.num_steps=STEPS`
in it and in this checkout, each in its own process, alternated over `--rounds` with the order
swapped every round, under the same environment (the same XLA_FLAGS, no compilation cache,
one fresh workdir per run, removed afterwards; `--env-this KEY=VALUE` changes this checkout's
environment only). Each run imports its own revision's `vdm`:
the command runs from that revision's root, which Python puts ahead of the installed one.

Reported per side: wall seconds and CPU seconds (user + system of the process and its
children), median over rounds, and this checkout over REV as ratios; the final eval's bpd of
each run (same seed and data, so equal unless the change moved the numbers). With the
default job (`configs/digits.py`, 800 steps and its final eval) it is the check issue 34 asks
of every change: one command, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from experiments import common as bench_io
from experiments.common import ROOT


def worktree(rev: str) -> str:
    """A detached worktree of `rev` in a new temporary directory."""
    path = tempfile.mkdtemp(prefix="vdm-rev-")
    subprocess.run(
        ["git", "-C", ROOT, "worktree", "add", "--detach", path, rev],
        check=True,
        capture_output=True,
    )
    return path


def run_job(root: str, config: str, steps: int, env: dict) -> dict:
    """One default job from `root`: wall and CPU seconds, the last eval's bpd."""
    workdir = tempfile.mkdtemp(prefix="vdm-bench-")
    cmd = [sys.executable, "-m", "vdm.main", f"--config={config}", f"--workdir={workdir}"]
    cmd.append(f"--config.training.num_steps={steps}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        if proc.returncode:
            sys.exit(f"{root}: the job failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        bpd = None
        metrics = os.path.join(workdir, "metrics.jsonl")
        for line in open(metrics):
            row = json.loads(line)
            if row.get("split") == "eval" and "bpd" in row:
                bpd = row["bpd"]
        if bpd is None:  # an older metrics layout: the printed eval line
            m = re.findall(r"bpd[=: ]+([0-9.]+)", proc.stdout + proc.stderr)
            bpd = float(m[-1]) if m else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "eval_bpd": bpd}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--against", required=True, help="the revision to compare with (git rev)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--config", default="configs/digits.py")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_revisions.json"))
    p.add_argument(
        "--env-this",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for this checkout's runs only (repeatable), e.g. "
        "VDM_XLA_CPU_DEFAULTS=0 with --against HEAD to measure a runtime setting alone",
    )
    a = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env_this = dict(env)
    for item in a.env_this:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"--env-this must be KEY=VALUE, got {item!r}")
        env_this[key] = value
    head = bench_io.checkout()
    dirty = head.endswith("+uncommitted")
    if dirty and a.env_this and a.against in ("HEAD", head.split("+")[0]):
        print(
            "warning: the tree has uncommitted changes, so this checkout differs from "
            f"{a.against} in code as well as in --env-this",
            file=sys.stderr,
        )
    other = worktree(a.against)
    rows = []
    try:
        sides = {"this checkout": ROOT, a.against: other}
        envs = {"this checkout": env_this, a.against: env}
        for r in range(a.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for side in order:
                got = run_job(sides[side], a.config, a.steps, envs[side])
                rows.append({"round": r, "side": side, **got})
                print(
                    f"round {r}, {side}: {got['wall_s']:.1f} s wall, {got['cpu_s']:.1f} s CPU, "
                    f"eval bpd {got['eval_bpd']}",
                    flush=True,
                )
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", other], check=False)
    import numpy as np

    med = {
        side: {
            k: float(np.median([r[k] for r in rows if r["side"] == side]))
            for k in ("wall_s", "cpu_s")
        }
        for side in {r["side"] for r in rows}
    }
    mine, ref = med["this checkout"], med[a.against]
    summary = {
        "head": head,
        "against": a.against,
        "env_this": a.env_this,
        "median": med,
        "cpu_ratio": mine["cpu_s"] / ref["cpu_s"],
        "wall_ratio": mine["wall_s"] / ref["wall_s"],
    }
    bench_io.write_results(a.out, __file__, rows + [summary])
    print(
        f"this checkout ({head}) against {a.against}: {summary['cpu_ratio']:.2f}× the CPU "
        f"time ({mine['cpu_s']:.0f} s against {ref['cpu_s']:.0f} s), {summary['wall_ratio']:.2f}× "
        f"the wall time ({mine['wall_s']:.0f} s against {ref['wall_s']:.0f} s), median of "
        f"{a.rounds} alternated runs each"
    )
    return summary


if __name__ == "__main__":
    main()
