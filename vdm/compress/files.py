"""Images in and out of the compress modes: an .npz with an integer array `images`, or a
folder of PNGs (sorted by name; grey as one channel, RGB as three).

Outputs never replace anything and, on a disk, appear whole or not at all: an .npz or a folder
is written under a temporary name beside its path, then renamed into place. On Cloud Storage
(gs://) an .npz is one object put (whole or absent); a folder's PNGs are one object each, and
a write stopped midway leaves the PNGs written so far (a signal lets the write finish)."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
from PIL import Image

from vdm import signals, storage
from vdm.compress.container import CompressError


def read_images(path: str) -> tuple[np.ndarray, list[str] | None]:
    """(images, PNG names or None) from an .npz (array `images`) or a folder of PNGs, local or
    gs://."""
    if storage.is_url(path) and not path.endswith(".npz") or os.path.isdir(path):
        names = sorted(  # as glob("*.png") lists them: no hidden files (macOS's ._a.png)
            n for n in storage.listdir(path) if n.endswith(".png") and not n.startswith(".")
        )
        if not storage.is_url(path):
            names = [n for n in names if os.path.isfile(os.path.join(path, n))]
        if not names:
            what = "a folder with no .png files" if storage.isdir(path) else "no such folder"
            raise FileNotFoundError(f"{path}: {what}")
        arrays = []
        for name in names:
            f = storage.join(path, name)
            try:
                with Image.open(io.BytesIO(storage.read_bytes(f))) as im:
                    a = np.asarray(im)
            except (OSError, ValueError) as e:
                if isinstance(e, storage.StorageError):
                    raise
                raise CompressError(f"{f}: not a readable PNG ({e})") from None
            arrays.append(a[..., None] if a.ndim == 2 else a)
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise CompressError(f"{path}: the PNGs differ in shape: {sorted(shapes)}")
        return np.stack(arrays), names
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        npz = np.load(io.BytesIO(storage.read_bytes(path)))
    except (OSError, ValueError) as e:
        raise CompressError(f"{path}: not an .npz file ({e})") from None
    if not hasattr(npz, "files"):
        raise CompressError(f"{path}: a bare array; save it with np.savez(path, images=…)")
    with npz:
        if "images" not in npz.files:
            raise CompressError(f"{path}: needs an array named 'images' (found {npz.files})")
        return np.asarray(npz["images"]), None


def check_output(path: str, names=None, count: int = 0, source: str = "") -> None:
    """Refuse, before any decoding, an output that exists (an .npz, or a folder that is not
    empty), and PNG names (from a .vdmz header: `source`) that are not distinct plain names."""
    if path.endswith(".npz"):
        if storage.exists(path):
            raise FileExistsError(f"{path} exists: choose another --output")
        return
    taken = (
        storage.exists(path)
        if storage.is_url(path)
        else os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path))
    )
    if taken:
        raise FileExistsError(f"{path} exists and is not an empty folder: choose another --output")
    if names is not None:
        plain = all(
            isinstance(n, str) and n.endswith(".png") and os.path.basename(n) == n and "\\" not in n
            for n in names
        )
        if not plain or len(set(names)) != len(names) or len(names) != count:
            raise CompressError(
                f"{source or path}: the PNG names are not {count} distinct plain file names"
            )


def write_images(path: str, images: np.ndarray, names: list[str] | None = None) -> str:
    """Write to an .npz (array `images`) or, for a path without .npz, a new (or empty) folder
    of PNGs named as they were compressed, else 00000.png …; atomically (a temporary name,
    then a rename), never over an existing file."""
    check_output(path, names, len(images))
    with signals.writing(path):  # a signal lets the write finish (vdm/signals.py)
        return _write_images(path, images, names)


def _write_images(path: str, images: np.ndarray, names: list[str] | None) -> str:
    if storage.is_url(path):  # whole objects; a folder's PNGs one object each (no rename)
        if path.endswith(".npz"):
            buf = io.BytesIO()
            np.savez(buf, images=images)
            storage.write_bytes(path, buf.getvalue())
            return path
        names = names or [f"{i:05d}.png" for i in range(len(images))]
        for name, img in zip(names, images, strict=True):
            buf = io.BytesIO()
            _png(img).save(buf, format="png")
            storage.write_bytes(storage.join(path, name), buf.getvalue())
        return path
    if path.endswith(".npz"):
        tmp = f"{path}.tmp{os.getpid()}.npz"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, images=images)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path
    path = path.rstrip(os.sep) or path
    names = names or [f"{i:05d}.png" for i in range(len(images))]
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    os.mkdir(tmp)
    try:
        for name, img in zip(names, images, strict=True):
            _png(img).save(os.path.join(tmp, name))
        if os.path.isdir(path):
            os.rmdir(path)  # the empty folder check_output allowed
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return path


def _png(img: np.ndarray) -> Image.Image:
    """An (H, W, C) integer image as PIL writes a PNG of it: grey for one channel."""
    return Image.fromarray((img[..., 0] if img.shape[-1] == 1 else img).astype(np.uint8))
