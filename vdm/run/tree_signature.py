"""A state's tree as {path: (shape, dtype)}: what a checkpoint holds against what a config
builds, compared before any array is read (vdm/run/checkpoint.py), and the abstract restore
target of a tree."""

from __future__ import annotations

import jax
import numpy as np


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def signature(tree) -> dict[str, tuple]:
    """{"a/b/0": (shape, dtype name)} for every array leaf of `tree` (a state, its abstract
    form or orbax's tree metadata): dict keys, attributes and indices spelled alike."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(_key_name(k) for k in path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
        for path, leaf in leaves
        if hasattr(leaf, "shape")
    }


def tree_differences(saved: dict[str, tuple], wanted: dict[str, tuple]) -> list[str]:
    """One line per path that only one side has or whose shape / dtype differs."""
    out = []
    for p in sorted(set(saved) | set(wanted)):
        a, b = saved.get(p), wanted.get(p)
        if a is None:
            out.append(f"{p} is new")
        elif b is None:
            out.append(f"{p} is not in this config's state")
        elif a != b:
            out.append(f"{p} {a[1]}{list(a[0])} → {b[1]}{list(b[0])}")
    return out


def abstract_like(tree, sharding):
    """ShapeDtypeStructs with `sharding`, the restore target for `tree`'s structure."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
