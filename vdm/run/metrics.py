"""Metrics to JSON lines and TensorBoard event files (tensorboardX: no TensorFlow needed).

`metrics.jsonl` is the source of truth. Rows are appended one whole line per write and
flushed; a crash mid-write can leave at most a partial last line, which `read_rows` skips and
the next resume removes. On resume, rows logged after the restored step are dropped: they will
be logged again, so no step appears twice.
"""

from __future__ import annotations

import json
import os

import numpy as np

from vdm.run.workdir import write_atomic, writing


def read_rows(path: str) -> list[dict]:
    """Every complete row of a metrics file; a partial or garbled line is skipped."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for ln in f:
            if not ln.endswith("\n"):
                continue  # the partial last line of a crash mid-write
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
    return rows


class MetricWriter:
    """Append-only `<workdir>/metrics.jsonl` plus TensorBoard events under `<workdir>/tb`.

    With `enabled=False` (every process but the first of a multi-host run) it writes nothing.
    """

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self._drop_after(resume_step)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def _drop_after(self, step: int) -> None:
        """On resume, forget rows logged after the checkpoint and any partial line."""
        if not os.path.exists(self.path):
            return
        rows = [r for r in read_rows(self.path) if r.get("step", 0) <= step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def write(self, step: int, scalars: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": prefix}
        row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        with writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        for k, v in scalars.items():
            self.tb.add_scalar(f"{prefix}/{k}", float(np.asarray(v)), int(step))
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
