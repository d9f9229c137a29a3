"""The grid runner the resumable studies share: per cell, override the config → train →
measure → one row.

A study is a list of cells `(name, setting)`, a function from a setting to the cell's config,
and a function measuring a trained cell. `Grid.run` trains each cell in `out/cells/<name>/`
(`vdm.run.train.train_and_evaluate`, so an interrupted cell resumes from its last checkpoint),
writes its row there atomically as `row_file` (the row marks the cell done), and with `--keep`
copies the row and the training log into a lasting folder, read first on the next run. A
finished row counts only if it was measured under the grid's `key` (steps, eval sizes, …);
`--report-only` tabulates the finished cells and trains nothing. Used by
`studies/ablate_schedules.py`, `studies/fourier_ablation.py` and `studies/objectives_study.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable

from experiments.common import write_json


def add_arguments(parser) -> None:
    """The options every grid takes: --out is added by the study (its default differs)."""
    parser.add_argument("--keep", default="", help="folder that keeps each finished cell's row")
    parser.add_argument(
        "--report-only", action="store_true", help="tabulate the finished cells; train nothing"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="config override a.b=value (repeatable)"
    )


def override(config, items: list[str]):
    """`--set=section.field=value` items applied to `config` (the value cast to the field's
    type); a field the config does not have is a ValueError naming it."""
    for item in items:
        key, sep, value = item.partition("=")
        section, _, field = key.partition(".")
        if not (sep and field) or section not in config or field not in config[section]:
            raise ValueError(f"--set: {key!r} is not a config field (section.field=value)")
        old = config[section][field]
        if isinstance(old, bool):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"--set: {key} takes True or False, got {value!r}")
            config[section][field] = value.lower() == "true"
        elif isinstance(old, int | float | str):
            try:
                config[section][field] = type(old)(value)
            except ValueError:
                kind = type(old).__name__
                raise ValueError(f"--set: {key} takes a {kind}, got {value!r}") from None
        else:
            raise ValueError(f"--set: {key} is a {type(old).__name__}: set it in a config file")
    return config


def keep_cell(workdir: str, kept: str, row: dict, row_file: str) -> None:
    """A finished cell's training log (`metrics.jsonl`), then its row (`row_file`), from its
    workdir into `kept`: the row last, since it marks the cell done."""
    os.makedirs(kept, exist_ok=True)
    log = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(log):
        shutil.copyfile(log, os.path.join(kept, "metrics.jsonl.tmp"))
        os.replace(os.path.join(kept, "metrics.jsonl.tmp"), os.path.join(kept, "metrics.jsonl"))
    write_json(row, os.path.join(kept, row_file))


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


@dataclasses.dataclass
class Grid:
    """Where a study's cells live and what a finished row must have been measured under."""

    out: str
    row_file: str
    key: dict  # fields every row carries, and a finished row must match to count
    keep: str = ""
    legacy: Callable[[dict], bool] | None = None  # also accept rows of an earlier format

    def workdir(self, name: str) -> str:
        return os.path.join(self.out, "cells", name)

    def matches(self, row: dict) -> bool:
        if self.legacy is not None and self.legacy(row):
            return True
        return all(row.get(k) == v for k, v in self.key.items())

    def finished(self, name: str) -> dict | None:
        """Cell `name`'s row if it finished under this grid's key: from `keep` first, then
        its workdir; a row found only in the workdir is copied into `keep` (with its log)."""
        workdir = self.workdir(name)
        kept = os.path.join(self.keep, name) if self.keep else None
        paths = [os.path.join(kept, self.row_file)] if kept else []
        for path in [*paths, os.path.join(workdir, self.row_file)]:
            if os.path.exists(path):
                with open(path) as f:
                    row = json.load(f)
                if self.matches(row):
                    if kept and not path.startswith(kept + os.sep):
                        keep_cell(workdir, kept, row, self.row_file)
                    return row
        return None

    def run_cell(self, name: str, setting: dict, config, measure: Callable) -> dict:
        """Train cell `name` under `config` (or resume it) and write its row:
        `{**setting, name, **key, wall_s, **measure(setting, workdir, config, result)}`
        (`result`: the final eval of `train_and_evaluate`); a finished row is returned as it
        is."""
        from vdm.run import train

        if row := self.finished(name):
            print(f"[done] {name}", flush=True)
            return row
        workdir = self.workdir(name)
        t0 = time.time()
        result = train.train_and_evaluate(config, workdir)
        wall = time.time() - t0
        measured = measure(setting, workdir, config, result)
        row = {**setting, "name": name, **self.key, "wall_s": wall, **measured}
        write_json(row, os.path.join(workdir, self.row_file))
        if self.keep:
            keep_cell(workdir, os.path.join(self.keep, name), row, self.row_file)
        print(f"[new]  {name} in {wall:.0f} s", flush=True)
        return row

    def run(
        self,
        cells: Iterable[tuple[str, dict]],
        make_config: Callable[[dict], object],
        measure: Callable,
        report_only: bool = False,
    ) -> list[dict]:
        """Every cell's row, in order: trained where unfinished, or with `report_only` only
        the finished ones (see `report_finished`)."""
        cells = list(cells)
        if report_only:
            return report_finished([name for name, _ in cells], self.finished)
        os.makedirs(self.out, exist_ok=True)
        return [
            self.run_cell(name, setting, make_config(setting), measure) for name, setting in cells
        ]
