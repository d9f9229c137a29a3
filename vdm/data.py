"""Datasets as integer batches. Validation happens here, on the host, before any jit."""

from __future__ import annotations

import numpy as np


def validate_batch(x: np.ndarray, vocab_size: int, name: str = "data") -> np.ndarray:
    """Check that `x` holds integers in [0, vocab_size); return it as an integer array.

    Raises a ValueError naming what was found (dtype, non-integer values, the range) rather
    than letting a bad value reach the model, where it would give a silently wrong bound.
    """
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (batch, ...), got shape {x.shape}")
    if x.dtype == bool or not (
        np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    ):
        raise ValueError(f"{name} must hold integers in [0, {vocab_size}), got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        bad = x[~(np.isfinite(x) & (x == np.round(x)))]
        if bad.size:
            raise ValueError(
                f"{name} must hold integers in [0, {vocab_size}) (the discrete decoder's vocab); "
                f"found {bad.size} non-integer values, e.g. {bad[:3]}"
            )
    lo, hi = x.min(), x.max()
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"{name} values must lie in [0, {vocab_size}) for data.vocab_size={vocab_size}; "
            f"found range [{lo}, {hi}]"
        )
    return x.astype(np.uint8 if vocab_size <= 256 else np.int32)
