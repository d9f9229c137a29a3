"""What every benchmark and study script shares: the repository root, one measurement in its
own subprocess (its last stdout line is JSON), the results file (the command, the machine,
the rows), comma-separated arguments and atomic JSON writes. The grid studies' cell lifecycle
is `experiments/grid.py`."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def run_json(cmd: list[str], what: str, env: dict | None = None) -> dict:
    """Run `cmd` from the repository root; its last stdout line, parsed. Exits naming `what`
    with the end of its stderr if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode:
        sys.exit(f"{what} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checkout() -> str:
    """The repository's commit, short, with '+uncommitted' when tracked or new files differ
    from it ('unknown' outside a git checkout)."""
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", ROOT, "status", "--porcelain"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+uncommitted" if head and dirty else "")


def write_results(out: str, script: str, results: list[dict]) -> None:
    """`out` as JSON: the command that made it, the commit and date it ran at, the machine,
    and the result rows."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    record = {
        "command": " ".join([os.path.relpath(script, ROOT), *sys.argv[1:]]),
        "commit": checkout(),
        "date": datetime.date.today().isoformat(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    with open(out + ".tmp", "w") as f:  # a failed dump leaves an earlier file as it was
        json.dump(record, f, indent=2)
    os.replace(out + ".tmp", out)
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
