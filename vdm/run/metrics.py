"""Metrics to JSON lines and TensorBoard event files (tensorboardX: no TensorFlow needed).

The JSON lines are the source of truth. In a local workdir they are `metrics.jsonl`, one whole
line appended and flushed per write; a crash mid-write can leave at most a partial last line,
which `read_rows` skips and the next resume removes. Cloud Storage has no append (a write
replaces an object whole), so a gs:// workdir keeps them as numbered parts
`metrics/000000.jsonl`, `metrics/000001.jsonl`, … of at most `PART_ROWS` rows: each write puts
the current part whole, rows and all, so no row is ever lost and one write uploads at most one
part. `read_metrics(workdir)` reads either form. On resume, rows logged after the restored step
are dropped: they will be logged again, so no step appears twice.

TensorBoard events go to `<workdir>/tb`; on gs:// the event file is put whole at each flush
through vdm/storage.py (`_StorageEvents`, in place of tensorboardX's own gs:// writer, whose
flushes retry for minutes). They are a view of the JSON lines: a failed put is not an error
(the next flush puts the whole file again), and a last flush that fails while the run is
ending (storage unreachable) is dropped without a word.
"""

from __future__ import annotations

import json

import numpy as np

from vdm import storage
from vdm.run.workdir import write_atomic, writing

PART_ROWS = 1000  # rows per object of a gs:// workdir's metrics


def read_rows(path: str) -> list[dict]:
    """Every complete row of a metrics file; a partial or garbled line is skipped."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        return []
    rows = []
    for ln in text.splitlines(keepends=True):
        if not ln.endswith("\n"):
            continue  # the partial last line of a crash mid-write
        try:
            rows.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return rows


def parts(workdir: str) -> list[str]:
    """The numbered metric parts of a workdir, in order (a gs:// workdir's form)."""
    folder = storage.join(workdir, "metrics")
    names = [n for n in storage.listdir(folder) if n.endswith(".jsonl") and n[:-6].isdigit()]
    return [storage.join(folder, n) for n in sorted(names)]


def read_metrics(workdir: str) -> list[dict]:
    """Every row a run logged: `metrics.jsonl`, then any numbered parts."""
    rows = read_rows(storage.join(workdir, "metrics.jsonl"))
    for p in parts(workdir) if storage.is_url(workdir) else []:
        rows += read_rows(p)
    return rows


class MetricWriter:
    """Rows to the workdir's metrics (above) plus TensorBoard events under `<workdir>/tb`.

    With `enabled=False` (every process but the first of a multi-host run) it writes nothing.
    """

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
        self.workdir = workdir
        self.path = storage.join(workdir, "metrics.jsonl")
        self.cloud = storage.is_url(workdir)
        self.enabled = enabled
        self.tb = None
        self._part: list[str] = []  # gs://: the lines of the current part
        self._part_index = 0
        if not enabled:
            return
        self._drop_after(resume_step)
        from tensorboardX import SummaryWriter, record_writer

        record_writer.register_writer_factory("gs", _StorageEventsFactory())
        self.tb = SummaryWriter(storage.join(workdir, "tb"))

    def _drop_after(self, step: int) -> None:
        """On resume, forget rows logged after the checkpoint and any partial line."""
        if storage.exists(self.path):  # on gs://: a local run's file, copied to the bucket
            rows = read_rows(self.path)
            kept = [r for r in rows if r.get("step", 0) <= step]
            if not self.cloud or len(kept) < len(rows):
                write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if not self.cloud:
            return
        found = parts(self.workdir)
        for i, p in enumerate(found):
            rows = read_rows(p)
            lines = [json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step]
            if len(lines) < len(rows) or i == len(found) - 1:
                # this part holds the last kept row: later parts go (newest first, so an
                # interruption never leaves a gap before rows that remain)
                for later in reversed(found[i + 1 :]):
                    storage.remove(later)
                if len(lines) < len(rows):
                    write_atomic(p, "".join(lines))
                self._part, self._part_index = lines, i
                if len(lines) >= PART_ROWS:
                    self._part, self._part_index = [], i + 1
                return

    def write(self, step: int, scalars: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": prefix}
        row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        line = json.dumps(row) + "\n"
        if self.cloud:
            self._part.append(line)
            path = storage.join(self.workdir, "metrics", f"{self._part_index:06d}.jsonl")
            write_atomic(path, "".join(self._part))  # the part whole: never a lost row
            if len(self._part) >= PART_ROWS:
                self._part, self._part_index = [], self._part_index + 1
        else:
            with writing(self.path), open(self.path, "a") as f:
                f.write(line)
                f.flush()
        for k, v in scalars.items():
            self.tb.add_scalar(f"{prefix}/{k}", float(np.asarray(v)), int(step))
        with writing(storage.join(self.workdir, "tb")):
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            try:
                self.tb.close()
            except OSError:
                pass  # a view of metrics.jsonl, which holds every row (above)
            self.tb = None


class _StorageEvents:
    """An event file on Cloud Storage, held in memory and put whole at each flush."""

    def __init__(self, path: str):
        self.path, self.buffer = path, bytearray()

    def write(self, data: bytes) -> None:
        self.buffer += data

    def flush(self) -> None:
        try:
            storage.write_bytes(self.path, bytes(self.buffer))
        except OSError:
            pass  # the next flush puts the whole file again; the JSON lines hold every row

    def close(self) -> None:
        self.flush()


class _StorageEventsFactory:
    def open(self, path: str) -> _StorageEvents:
        return _StorageEvents(path)

    def directory_check(self, path: str) -> None:
        pass  # an object store has no folders to create
