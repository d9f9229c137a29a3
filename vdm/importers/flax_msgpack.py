"""Reading a Flax msgpack checkpoint (`flax.serialization.to_bytes`) as a stream.

clu's checkpoints keep the whole train state in one `ckpt-N.flax` file: a msgpack map whose
arrays are msgpack extension records. `read_tree` unpacks it from the file in 16 MiB reads, so
the only copy of the data in memory is the arrays themselves (each array is a view of its
record's bytes): about the file's size, not the 2–3× of reading the file whole and then
restoring it. Any damage (a short, garbled or foreign file) is one `CheckpointImportError`.
"""

from __future__ import annotations

import contextlib
import os
import re

import msgpack
import numpy as np
from flax import serialization

READ_SIZE = 16 * 2**20  # bytes per read from the file
MAX_RECORD = 2**31 - 1  # the largest single array record msgpack may buffer


class CheckpointImportError(ValueError):
    """A checkpoint that cannot be imported; the message names the file and what is wrong."""


def find_checkpoint(src: str) -> str:
    """The `ckpt-N.flax` file of `src`: the file itself, or in a clu checkpoint directory the
    one its `checkpoint` state file names (else the highest N)."""
    if os.path.isfile(src):
        return src
    if not os.path.isdir(src):
        raise CheckpointImportError(f"{src}: no such file or directory")
    state = os.path.join(src, "checkpoint")
    if os.path.isfile(state):
        with open(state, errors="replace") as f:
            named = re.search(r'model_checkpoint_path:\s*"([^"]+)"', f.read())
        if named:
            path = os.path.join(src, os.path.basename(named[1]) + ".flax")
            if os.path.isfile(path):
                return path
    found = [
        (int(m[1]), name)
        for name in os.listdir(src)
        if (m := re.fullmatch(r"ckpt-(\d+)\.flax", name))
    ]
    if not found:
        raise CheckpointImportError(
            f"{src} holds no ckpt-*.flax file: give clu's checkpoint directory (such as "
            "…/checkpoint-final/checkpoints-0) or its ckpt-N.flax"
        )
    return os.path.join(src, max(found)[1])


def read_tree(path: str, stream=None) -> dict:
    """The nested dict of numpy arrays (and Python scalars) in a Flax msgpack file, read from
    `stream` (a binary file-like object of `path`'s bytes) if given."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") if stream is None else contextlib.nullcontext(stream) as f:
            unpacker = msgpack.Unpacker(
                f,
                ext_hook=serialization._msgpack_ext_unpack,
                raw=False,
                strict_map_key=False,
                read_size=READ_SIZE,
                max_buffer_size=MAX_RECORD,
            )
            tree = unpacker.unpack()
            try:
                unpacker.unpack()
            except msgpack.OutOfData:
                pass
            else:
                raise CheckpointImportError(
                    f"{path}: data after the checkpoint's map (not one Flax msgpack state)"
                )
    except msgpack.OutOfData:
        raise CheckpointImportError(
            f"{path} is truncated: its {size:,} bytes end inside the checkpoint (an "
            "interrupted download?); fetch it again"
        ) from None
    except CheckpointImportError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CheckpointImportError(
            f"{path} is damaged or not a Flax checkpoint: {' '.join(str(e).split())[:200]}"
        ) from None
    if not isinstance(tree, dict):
        raise CheckpointImportError(
            f"{path} is not a Flax train state: it holds a {type(tree).__name__}, not a map"
        )
    try:
        return serialization._unchunk_array_leaves_in_place(tree)
    except Exception as e:  # noqa: BLE001 - a garbled chunked array
        raise CheckpointImportError(f"{path} is damaged: {e}") from None


def flatten(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
    """{path tuple: leaf} of a nested dict (empty dicts drop out)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, (*prefix, str(k))))
        else:
            out[(*prefix, str(k))] = v
    return out


def as_array(leaf) -> np.ndarray:
    """A leaf as a numpy array (Flax writes arrays as records, Python numbers as themselves)."""
    return leaf if isinstance(leaf, np.ndarray) else np.asarray(leaf)
