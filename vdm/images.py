"""Writing samples: PNG grids for images, scatter plots for 2-D data, and .npz arrays."""

from __future__ import annotations

import math
import os

import numpy as np

from vdm import elbo


def image_grid(x: np.ndarray, vocab_size: int) -> np.ndarray:
    """Integer images (N, H, W, C) → one uint8 grid image (rows × cols tiles, 1-pixel gaps)."""
    n, h, w, c = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    scaled = (x.astype(np.float32) * (255.0 / max(vocab_size - 1, 1))).round().astype(np.uint8)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = scaled[
            i
        ]
    return grid[..., 0] if c == 1 else grid


def save_samples(path: str, x: np.ndarray, vocab_size) -> str:
    """Save integer samples as a PNG (grid for images, scatter for 2-D points in model space).

    `vocab_size` is an int (bin-centre encoding) or a `vdm.elbo.Encoding`.
    """
    enc = elbo.as_encoding(vocab_size)
    vocab_size = enc.vocab_size
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if x.ndim == 4:
        grid = image_grid(x, vocab_size)
        scale = max(1, 256 // max(grid.shape[:2]))
        grid = np.kron(grid, np.ones((scale, scale) + (1,) * (grid.ndim - 2), np.uint8))
        plt.imsave(path, grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255)
    else:
        centres = np.asarray(enc.encode(x))
        lim = max(1.0, float(np.abs(centres).max()) * 1.05)
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(centres[:, 0], centres[:, 1], s=2)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return path
