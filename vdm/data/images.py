"""Writing samples: PNG grids for images, scatter plots for 2-D data, and .npz arrays.

Grids are readable on screen: every image is upscaled by an integer factor to at least
`MIN_TILE_PX` pixels (nearest neighbour, so pixels stay pixels), tiles are separated by a
1-pixel white gutter, and an optional caption (class, sampler, NFE, step) goes under the grid.
2-D samples are drawn as a scatter plot over the data they model.
"""

from __future__ import annotations

import math
import os
import textwrap

import numpy as np

from vdm.core import elbo

MIN_TILE_PX = 64


def image_grid(x: np.ndarray, vocab_size: int, min_tile: int = MIN_TILE_PX) -> np.ndarray:
    """Integer images (N, H, W, C) → one uint8 grid (rows × cols tiles, 1-pixel white gutters),
    each image upscaled by the smallest integer factor that makes it ≥ `min_tile` pixels."""
    n, h, w, c = x.shape
    s = max(1, math.ceil(min_tile / min(h, w)))
    x = np.repeat(np.repeat(x, s, axis=1), s, axis=2)
    h, w = h * s, w * s
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    scaled = (x.astype(np.float32) * (255.0 / max(vocab_size - 1, 1))).round().astype(np.uint8)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = 1 + r * (h + 1), 1 + q * (w + 1)
        grid[top : top + h, left : left + w] = scaled[i]
    return grid[..., 0] if c == 1 else grid


def save_samples(
    path,
    x: np.ndarray,
    encoding: elbo.Encoding,
    caption: str = "",
    reference: np.ndarray | None = None,
) -> str:
    """Save integer samples as a PNG: a grid for images, a scatter for 2-D points. `path` is
    a file's path or a binary file object (a buffer, for a gs:// workdir); returned as given.

    2-D points are drawn in model space (through `encoding`), over `reference` (integer data
    points, grey) when given.
    """
    import matplotlib.image
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    enc = elbo.check_encoding(encoding)
    if isinstance(path, str | os.PathLike):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if x.ndim == 4:
        grid = image_grid(x, enc.vocab_size)
        cmap = "gray" if grid.ndim == 2 else None
        if not caption:
            matplotlib.image.imsave(path, grid, cmap=cmap, vmin=0, vmax=255, format="png")
            return path
        dpi, width = 100, grid.shape[1]
        lines = textwrap.wrap(caption, max(12, width // 6))  # ≈ 6 px a character at 8 pt
        text_px = 14 * len(lines) + 8
        height = grid.shape[0] + text_px
        fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
        ax = fig.add_axes((0, text_px / height, 1, grid.shape[0] / height))
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        ax.axis("off")
        fig.text(
            0.5, 0.5 * text_px / height, "\n".join(lines), ha="center", va="center", fontsize=8
        )
        fig.savefig(path, dpi=dpi, format="png")
        return path
    points = np.asarray(enc.encode(x))
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    lim = float(np.abs(points).max())
    if reference is not None:
        data = np.asarray(enc.encode(reference))
        lim = max(lim, float(np.abs(data).max()))
        ax.scatter(data[:, 0], data[:, 1], s=3, c="0.7", alpha=0.5, label="data")
    ax.scatter(points[:, 0], points[:, 1], s=3, c="tab:blue", alpha=0.6, label="samples")
    lim = max(1.0, 1.05 * lim)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=caption or None)
    ax.legend(loc="lower right", fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    return path
