"""Per-example eval results kept as they are made, so a stopped eval continues where it was.

An eval over 10,000 images under the PF-ODE with K importance samples is hours of accelerator
time: `Ledger` keeps each batch's per-example results (the example indices and one value per
example and quantity) as one numbered file, `<directory>/chunk_<c>.npz`, written whole or not
at all (a temporary file renamed into place) by process 0. A rerun after a preemption, Ctrl-C
or crash reads the chunks already written instead of computing them again; the batches, keys
and order are the same, so the number is the one an uninterrupted run gives.

The directory's name carries the hash of `spec` (what is evaluated: estimator and options,
checkpoint step and parameter fingerprint, data, batch size, seed), written beside the chunks
as `spec.json`: another eval never reads these chunks. Every process of a multi-host eval
reads the chunks process 0 wrote (the run directory is shared storage, as for checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import jax
import numpy as np

from vdm import sharding


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Ledger:
    """The chunks of one eval under `root/<name>_<hash of spec>/`; with `root` None, nothing is
    kept (an eval during training)."""

    def __init__(self, root: str | None, name: str, spec: dict):
        self.directory = None
        self.resumed = 0  # chunks read back instead of computed
        if root is None:
            return
        self.directory = os.path.join(root, f"{name}_{spec_hash(spec)}")
        if jax.process_index() == 0:
            os.makedirs(self.directory, exist_ok=True)
            path = os.path.join(self.directory, "spec.json")
            if not os.path.exists(path):
                _write_whole(path, json.dumps(spec, indent=2, sort_keys=True, default=str).encode())

    def _path(self, c: int) -> str:
        return os.path.join(self.directory, f"chunk_{c:06d}.npz")

    def _read(self, c: int) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self._path(c)) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
            return None  # absent, or damaged: computed again

    def done(self, n_chunks: int) -> int:
        """How many chunks from the first on are already written (process 0's count, on
        every process)."""
        count = 0
        if self.directory is not None and jax.process_index() == 0:
            while count < n_chunks and self._read(count) is not None:
                count += 1
        return sharding.from_process_0(count)

    def get(self, c: int) -> dict[str, np.ndarray]:
        rows = self._read(c)
        if rows is None:
            raise FileNotFoundError(f"{self._path(c)}: an eval chunk process 0 wrote is missing")
        self.resumed += 1
        return rows

    def put(self, c: int, rows: dict[str, np.ndarray]) -> None:
        if self.directory is None or jax.process_index() != 0:
            return
        import io

        buf = io.BytesIO()
        np.savez(buf, **rows)
        _write_whole(self._path(c), buf.getvalue())


def _write_whole(path: str, blob: bytes) -> None:
    """`path` holds `blob` whole, or is left as it was."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
