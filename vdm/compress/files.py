"""Images in and out of the compress modes: an .npz with an integer array `images`, or a
folder of PNGs (sorted by name; grey as one channel, RGB as three)."""

from __future__ import annotations

import glob
import os

import numpy as np
from PIL import Image

from vdm.compress.container import CompressError


def read_images(path: str) -> tuple[np.ndarray, list[str] | None]:
    """(images, PNG names or None) from an .npz (array `images`) or a folder of PNGs."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.png")))
        if not files:
            raise FileNotFoundError(f"{path}: a folder with no .png files")
        arrays = []
        for f in files:
            with Image.open(f) as im:
                a = np.asarray(im)
            arrays.append(a[..., None] if a.ndim == 2 else a)
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise CompressError(f"{path}: the PNGs differ in shape: {sorted(shapes)}")
        return np.stack(arrays), [os.path.basename(f) for f in files]
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        npz = np.load(path)
    except (OSError, ValueError) as e:
        raise CompressError(f"{path}: not an .npz file ({e})") from None
    if not hasattr(npz, "files"):
        raise CompressError(f"{path}: a bare array; save it with np.savez(path, images=…)")
    with npz:
        if "images" not in npz.files:
            raise CompressError(f"{path}: needs an array named 'images' (found {npz.files})")
        return np.asarray(npz["images"]), None


def write_images(path: str, images: np.ndarray, names: list[str] | None = None) -> str:
    """Write to an .npz (array `images`) or, for a path without .npz, a folder of PNGs
    (named as they were compressed, else 00000.png …). Never overwrites an existing file."""
    if path.endswith(".npz"):
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists: choose another --output")
        tmp = f"{path}.tmp{os.getpid()}.npz"
        np.savez(tmp, images=images)
        os.replace(tmp, path)
        return path
    os.makedirs(path, exist_ok=True)
    names = names or [f"{i:05d}.png" for i in range(len(images))]
    clash = [n for n in names if os.path.exists(os.path.join(path, n))]
    if clash:
        raise FileExistsError(f"{path}: {clash[0]} exists: choose another --output")
    for name, img in zip(names, images, strict=True):
        img = img[..., 0] if img.shape[-1] == 1 else img
        Image.fromarray(img.astype(np.uint8)).save(os.path.join(path, name))
    return path
