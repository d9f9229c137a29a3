"""Per-example eval results kept as they are made, so a stopped eval continues where it was.

An eval over 10,000 images under the PF-ODE with K importance samples is hours of accelerator
time: `Ledger` keeps each batch's per-example results (the example indices and one value per
example and quantity) as one numbered file, `<directory>/chunk_<c>.npz`, written whole or not
at all (a temporary file renamed into place) by process 0. A rerun after a preemption, Ctrl-C
or crash reads the chunks already written instead of computing them again; the batches, keys
and order are the same, so the number is the one an uninterrupted run gives.

The directory's name carries the hash of `spec` (what is evaluated: estimator and options,
checkpoint step and parameter fingerprint, the model's and data's config, a fingerprint of
the test images, batch size, devices, seed) and of this package's source (`code_fingerprint`),
written beside the chunks as `spec.json`: another eval, or the same one after a code change,
never reads these chunks. Each chunk also holds its examples' indices, checked on reading.
A multi-host eval resumes the chunks every process can read (the run directory is shared
storage, as for checkpoints); otherwise it computes them again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
import zipfile

import jax
import numpy as np

from vdm import sharding, storage


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


@functools.cache
def code_fingerprint() -> str:
    """Hash of every source file of the `vdm` package: results of other code never mix."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    h = hashlib.sha256()
    for dirpath, dirnames, files in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


class Ledger:
    """The chunks of one eval under `root/<name>_<hash of spec>/`; with `root` None, nothing is
    kept (an eval during training)."""

    def __init__(self, root: str | None, name: str, spec: dict):
        self.directory = None
        self.resumed = 0  # chunks read back instead of computed
        if root is None:
            return
        spec = {**spec, "code": code_fingerprint()}
        self.directory = storage.join(root, f"{name}_{spec_hash(spec)}")
        if jax.process_index() == 0:
            try:
                storage.makedirs(self.directory)
                path = storage.join(self.directory, "spec.json")
                if not storage.exists(path):
                    text = json.dumps(spec, indent=2, sort_keys=True, default=str)
                    storage.write_bytes(path, text.encode())
            except OSError as e:
                self._give_up(e)

    def _path(self, c: int) -> str:
        return storage.join(self.directory, f"chunk_{c:06d}.npz")

    def _read(self, c: int) -> dict[str, np.ndarray] | None:
        try:
            with np.load(io.BytesIO(storage.read_bytes(self._path(c)))) as f:
                return {k: f[k] for k in f.files}
        except storage.StorageError:
            raise  # the store is unreachable: not an absent chunk
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
            return None  # absent, or damaged: computed again

    def done(self, indices) -> int:
        """How many chunks from the first on are written whole and hold the examples
        `indices(c)` says chunk c holds, on every process (the fewest any process can read,
        so every process then computes the same chunks)."""
        count = 0
        if self.directory is not None:
            while True:
                want = indices(count)
                if want is None:  # past the last chunk
                    break
                rows = self._read(count)
                if rows is None or not np.array_equal(rows.get("index"), want):
                    break
                count += 1
        return int(sharding.gathered(count).min())

    def get(self, c: int) -> dict[str, np.ndarray]:
        rows = self._read(c)
        if rows is None:
            raise FileNotFoundError(f"{self._path(c)}: an eval chunk read a moment ago is gone")
        self.resumed += 1
        return rows

    def put(self, c: int, rows: dict[str, np.ndarray]) -> None:
        """Keep chunk c (process 0); a failed write (disk full, permissions) is one warning
        and the eval goes on without keeping anything more."""
        if self.directory is None or jax.process_index() != 0:
            return
        buf = io.BytesIO()
        np.savez(buf, **rows)
        try:
            storage.write_bytes(self._path(c), buf.getvalue())
        except OSError as e:
            self._give_up(e)

    def _give_up(self, e: OSError) -> None:
        print(
            f"vdm: cannot keep eval results in {self.directory} ({e.strerror or e}); the eval "
            "goes on, but a rerun will start it again",
            file=sys.stderr,
            flush=True,
        )
        self.directory = None
