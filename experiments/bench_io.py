"""What every benchmark script shares: one measurement in its own subprocess (its last
stdout line is JSON), the results file (the command, the machine, the rows), and the finished
cells of a long grid kept in a lasting folder (`--keep`)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd: list[str], what: str, env: dict | None = None) -> dict:
    """Run `cmd` from the repository root; its last stdout line, parsed. Exits naming `what`
    with the end of its stderr if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode:
        sys.exit(f"{what} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_results(out: str, script: str, results: list[dict]) -> None:
    """`out` as JSON: the command that made it, the machine, and the result rows."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    record = {
        "command": " ".join([os.path.relpath(script, ROOT), *sys.argv[1:]]),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    with open(out, "w") as f:
        json.dump(record, f, indent=2)
    print(f"→ {out}")


def csv_list(s: str, cast=str) -> list:
    """'a,b,,c' → ['a', 'b', 'c'] (each through `cast`): a comma-separated argument."""
    return [cast(v) for v in s.split(",") if v]


def write_json(obj, path: str) -> None:
    """Atomically: a run interrupted mid-write never leaves a half row that reads as done."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def keep_cell(workdir: str, kept: str, row: dict, row_file: str) -> None:
    """A finished cell's training log (`metrics.jsonl`), then its row (`row_file`), from its
    workdir into `kept`: the row last, since it marks the cell done."""
    os.makedirs(kept, exist_ok=True)
    log = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(log):
        shutil.copyfile(log, os.path.join(kept, "metrics.jsonl.tmp"))
        os.replace(os.path.join(kept, "metrics.jsonl.tmp"), os.path.join(kept, "metrics.jsonl"))
    write_json(row, os.path.join(kept, row_file))


def finished_row_in(out: str, keep: str, name: str, row_file: str, matches) -> dict | None:
    """Cell `name`'s row if it finished under the grid's settings (`matches(row)`): from the
    `keep` folder first, then its workdir `out/cells/name/`; a row found only in the workdir is
    copied into `keep` (with its training log)."""
    workdir = os.path.join(out, "cells", name)
    kept = os.path.join(keep, name) if keep else None
    for path in (os.path.join(kept, row_file) if kept else None, os.path.join(workdir, row_file)):
        if path and os.path.exists(path):
            with open(path) as f:
                row = json.load(f)
            if matches(row):
                if kept and not path.startswith(kept + os.sep):
                    keep_cell(workdir, kept, row, row_file)
                return row
    return None


def report_finished(names: list[str], lookup) -> list[dict]:
    """`--report-only`: the rows of the finished cells among `names` (`lookup(name)` → row or
    None), after printing "k of n cells finished; to run: …". Exits if none is finished."""
    found = {name: lookup(name) for name in names}
    rows = [row for row in found.values() if row]
    missing = [name for name, row in found.items() if not row]
    print(f"{len(rows)} of {len(names)} cells finished; to run: {', '.join(missing) or '—'}")
    if not rows:
        print("--report-only: no finished cell of this grid in --out or --keep", file=sys.stderr)
        sys.exit(2)
    return rows
