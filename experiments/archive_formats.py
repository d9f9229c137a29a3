"""Small archives in the exact formats their publishers distribute, for tests and smoke-size
notebooks (nothing to download): CIFAR-10's
binary tar.gz, van den Oord et al.'s tars of PNGs, Chrabaszcz et al.'s zips of npz batches.
Each returns the images (uint8, HWC) and labels it wrote, to compare with what is read."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import numpy as np
from PIL import Image


def _add(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def cifar10(data_dir, per_batch: int = 3, n_test: int = 4) -> dict:
    """`cifar-10-binary.tar.gz`: five train batches and a test batch of 3,073-byte records."""
    out = {}
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "cifar-10-binary.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for split, names in (
            ("train", [f"data_batch_{i}.bin" for i in range(1, 6)]),
            ("test", ["test_batch.bin"]),
        ):
            parts = []
            for k, name in enumerate(names):
                n = per_batch if split == "train" else n_test
                x = images(n, 32, seed=100 * (split == "test") + k)
                y = np.random.default_rng(k + 7).integers(0, 10, n).astype(np.uint8)
                records = np.concatenate([y[:, None], x.transpose(0, 3, 1, 2).reshape(n, -1)], 1)
                _add(tar, f"cifar-10-batches-bin/{name}", records.astype(np.uint8).tobytes())
                parts.append((x, y.astype(np.int32)))
            out[split] = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
    return out


def imagenet_oord(data_dir, size: int = 32, n_train: int = 6, n_valid: int = 5) -> dict:
    """`train_{s}x{s}.tar` / `valid_{s}x{s}.tar`: one PNG per image."""
    out = {}
    os.makedirs(data_dir, exist_ok=True)
    for split, prefix, n in (("train", "train", n_train), ("test", "valid", n_valid)):
        x = images(n, size, seed=len(prefix))
        with tarfile.open(os.path.join(data_dir, f"{prefix}_{size}x{size}.tar"), "w") as tar:
            for i, img in enumerate(x):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                _add(tar, f"{prefix}_{size}x{size}/{i:07d}.png", buf.getvalue())
        out[split] = (x, np.zeros(n, np.int32))
    return out


def imagenet_chrabaszcz(data_dir, size: int = 32, n_train: int = 7, n_valid: int = 4) -> dict:
    """`Imagenet{s}_train_npz.zip` (two batches) / `Imagenet{s}_val_npz.zip`: npz batches of
    `data` (N, 3·s·s, CHW) and `labels` from 1."""
    out = {}
    os.makedirs(data_dir, exist_ok=True)
    splits = (
        ("train", f"Imagenet{size}_train_npz.zip", n_train),
        ("test", f"Imagenet{size}_val_npz.zip", n_valid),
    )
    for split, name, n in splits:
        x = images(n, size, seed=n)
        y = np.random.default_rng(n).integers(0, 1000, n)
        members = (
            [
                ("train_data_batch_1.npz", slice(0, n // 2)),
                ("train_data_batch_2.npz", slice(n // 2, n)),
            ]
            if split == "train"
            else [("val_data.npz", slice(0, n))]
        )
        with zipfile.ZipFile(os.path.join(data_dir, name), "w") as z:
            for member, sl in members:
                buf = io.BytesIO()
                flat = x[sl].transpose(0, 3, 1, 2).reshape(len(x[sl]), -1)
                np.savez(buf, data=flat, labels=list(y[sl] + 1), mean=flat.mean(0))
                z.writestr(member, buf.getvalue())
        out[split] = (x, y.astype(np.int32))
    return out
