"""Metrics to JSON lines and TensorBoard event files (tensorboardX: no TensorFlow needed)."""

from __future__ import annotations

import json
import os

import numpy as np


class MetricWriter:
    """Append-only `<workdir>/metrics.jsonl` plus TensorBoard events under `<workdir>/tb`."""

    def __init__(self, workdir: str, resume_step: int = 0):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._drop_after(resume_step)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def _drop_after(self, step: int) -> None:
        """On resume, forget lines logged after the checkpoint: they will be logged again."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.replace(tmp, self.path)

    def write(self, step: int, scalars: dict, prefix: str = "train") -> None:
        row = {"step": int(step), "split": prefix}
        row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in scalars.items():
            self.tb.add_scalar(f"{prefix}/{k}", float(np.asarray(v)), int(step))
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()
