"""Classical lossless codecs on the same integer images, for comparison with bits-back coding.

Per image: PNG (Pillow, optimize=True, the smallest of its zlib levels) and WebP lossless
(method 6, the slowest and smallest). On the whole set as one raw uint8 array: gzip -9, bzip2
-9 and xz -9 (preset extreme). Sizes include each format's headers, as a file would.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma

import numpy as np
from PIL import Image


def _image(x: np.ndarray) -> Image.Image:
    x = x[..., 0] if x.shape[-1] == 1 else x
    return Image.fromarray(x.astype(np.uint8))


def png_bytes(x: np.ndarray) -> int:
    """Size of one image as an optimised PNG."""
    buf = io.BytesIO()
    _image(x).save(buf, format="PNG", optimize=True)
    return buf.tell()


def webp_bytes(x: np.ndarray) -> int:
    """Size of one image as lossless WebP (grey images are stored as RGB by WebP)."""
    buf = io.BytesIO()
    img = _image(x)
    img = img.convert("RGB") if img.mode == "L" else img
    img.save(buf, format="WEBP", lossless=True, quality=100, method=6)
    return buf.tell()


def classical_bpd(images: np.ndarray) -> dict[str, float]:
    """Bits per dimension of each classical codec on integer images (N, H, W, C) < 256."""
    images = np.asarray(images)
    if images.min() < 0 or images.max() > 255:
        raise ValueError("classical codecs need values in [0, 255]")
    n_dims = images.size
    raw = np.ascontiguousarray(images, np.uint8).tobytes()
    sizes = {
        "png": sum(png_bytes(x) for x in images),
        "webp": sum(webp_bytes(x) for x in images),
        "gzip": len(gzip.compress(raw, compresslevel=9)),
        "bzip2": len(bz2.compress(raw, compresslevel=9)),
        "xz": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
    }
    return {k: 8.0 * v / n_dims for k, v in sizes.items()}
