"""The paper's data sets as their publishers distribute them: each `Source` names a version,
its archive files (with the size and SHA-256 that tensorflow-datasets records, where one is
known), its split sizes, where the files come from, and a reader of the archive's own format
(CIFAR-10's binary records, van den Oord et al.'s tars of PNGs, Chrabaszcz et al.'s zips of
npz batches). Preparing them into a cache is vdm/data/archives.py's job."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterator

import numpy as np

from vdm.data.download import DataError


@dataclasses.dataclass(frozen=True)
class Archive:
    """One file of a data set as its publisher distributes it."""

    name: str
    url: str | None  # None: no public download (a login, or gone)
    size: int | None
    sha256: str | None


@dataclasses.dataclass(frozen=True)
class Source:
    """A data set's version: its archives per split, split sizes, image shape, reader."""

    name: str
    version: str
    shape: tuple[int, int, int]
    num_classes: int  # 0: no labels are read
    archives: dict[str, tuple[Archive, ...]]
    sizes: dict[str, int]
    read: Callable[[list[str], tuple, str], Iterator[tuple[np.ndarray, np.ndarray]]]
    where: str  # where the files come from, for the line that asks for them


# ---- Readers: (archive paths of one split, image shape) → batches of (uint8 HWC, int32) ----


def _cifar_records(raw: bytes, shape) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's binary records: a label byte, then 1,024 red, green and blue bytes each."""
    h, w, c = shape
    record = 1 + h * w * c
    if len(raw) % record:
        raise DataError(f"a CIFAR-10 batch of {len(raw):,} bytes: not whole {record}-byte records")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    images = rows[:, 1:].reshape(-1, c, h, w).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), rows[:, 0].astype(np.int32)


CIFAR_MEMBERS = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
CIFAR_FOLDER = "cifar-10-batches-bin"


def _read_cifar(paths: list[str], shape, split: str):
    path = paths[0]
    if os.path.isdir(path):  # the archive's extracted folder
        for member in CIFAR_MEMBERS[split]:
            with open(os.path.join(path, member), "rb") as f:
                yield _cifar_records(f.read(), shape)
        return
    with tarfile.open(path, "r:*") as tar:
        for member in CIFAR_MEMBERS[split]:
            f = tar.extractfile(f"{CIFAR_FOLDER}/{member}")
            yield _cifar_records(f.read(), shape)


def _read_png_tar(paths: list[str], shape, split: str):
    """van den Oord et al.'s tars: one PNG per image, read in the order of their names."""
    from PIL import Image

    del split
    with tarfile.open(paths[0], "r:") as tar:
        members = sorted((m for m in tar if m.isfile()), key=lambda m: m.name)
        for start in range(0, len(members), 4096):
            batch = []
            for m in members[start : start + 4096]:
                with Image.open(io.BytesIO(tar.extractfile(m).read())) as im:
                    batch.append(np.asarray(im.convert("RGB")))
            images = np.stack(batch)
            if images.shape[1:] != shape:
                raise DataError(f"{paths[0]}: images of shape {images.shape[1:]}, not {shape}")
            yield images, np.zeros(len(images), np.int32)


def _natural(name: str) -> list:
    """`train_data_batch_2` before `train_data_batch_10`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _read_npz_zip(paths: list[str], shape, split: str):
    """Chrabaszcz et al.'s zips of npz batches: `data` (N, 3·H·W) as CHW, `labels` from 1."""
    del split
    h, w, c = shape
    for path in paths:
        with zipfile.ZipFile(path) as z:
            for name in sorted((n for n in z.namelist() if n.endswith(".npz")), key=_natural):
                with np.load(io.BytesIO(z.read(name)), allow_pickle=False) as batch:
                    data, labels = batch["data"], np.asarray(batch["labels"], np.int64)
                images = data.reshape(-1, c, h, w).transpose(0, 2, 3, 1)
                yield np.ascontiguousarray(images, np.uint8), (labels - 1).astype(np.int32)


# ---- The data sets ----

_CIFAR = Archive(
    "cifar-10-binary.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    170052171,
    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
)
_OORD = "http://image-net.org/small/"  # gone; tensorflow-datasets' checksums check a mirror's
_OORD_FILES = {  # (split, size): (bytes, SHA-256), from tensorflow-datasets' checksums.tsv
    ("train", 32): (
        4_113_018_880,
        "244a323d48f8d72f65ad8b54658c01fed68d2d7bdc77ccb43da58c11e94224e5",
    ),
    ("valid", 32): (
        161_474_560,
        "862e559462b24cf736212a19f6b0d47b55c2dc8ebdaa95ccecfe71260124c8f7",
    ),
    ("train", 64): (
        12_112_588_800,
        "e2a2c1947a748d0d256e98e6d82800d855441dc9e4de2e71a773f1324c4524d7",
    ),
    ("valid", 64): (
        477_255_680,
        "eeac03ec4f585baf871d2b4cb9c974bfe345e74878a74e5820fe6eb1041629cd",
    ),
}
_CHRABASZCZ = "http://www.image-net.org/data/downsample/"  # behind image-net.org's login
_CHRABASZCZ_FILES = {
    "Imagenet32_train_npz.zip": (
        3580435279,
        "94226337ecc1b0309d9fcd0167127aaadc931587035fbcb53925235edbaec4fc",
    ),
    "Imagenet32_val_npz.zip": (
        139697668,
        "013990e6dec1237dcd1f9beadbab81ead6604cc119af5cacbfb59ae28148377a",
    ),
    "Imagenet64_train_part1_npz.zip": (
        6783426789,
        "9422dc1dc5d092e9814a70a1cb7fc74880d2db5d88a0cb8a34ee363b12bde3f1",
    ),
    "Imagenet64_train_part2_npz.zip": (
        6780506068,
        "9fafc115afb7e6c301e66dc16b2d737152b427bd5dab26e1293487a6819c7f30",
    ),
    "Imagenet64_val_npz.zip": (
        529522927,
        "e1e75133158a1924135a9c6f97a80d2d237b158945e0b34074e58e6c8430eeb8",
    ),
}


def _oord(size: int) -> Source:
    def archive(split):
        name = f"{split}_{size}x{size}.tar"
        return (Archive(name, _OORD + name, *_OORD_FILES[split, size]),)

    return Source(
        name=f"imagenet{size}_oord",
        version=(
            f"downsampled ImageNet {size}×{size} of van den Oord et al. 2016 (image-net.org/small,"
            " tfds downsampled_imagenet; the set of VDM's Table 1): 1,281,149 train / 49,999 "
            "validation images, unlabelled"
        ),
        shape=(size, size, 3),
        num_classes=0,
        archives={"train": archive("train"), "test": archive("valid")},
        sizes={"train": 1281149, "test": 49999},
        read=_read_png_tar,
        where=(
            "image-net.org/small no longer serves them; researchers use the academic-torrents "
            "mirror of `train_NxN.tar` and `valid_NxN.tar` (their SHA-256 are checked here)"
        ),
    )


def _chrabaszcz(size: int) -> Source:
    train = (
        [f"Imagenet{size}_train_npz.zip"]
        if size == 32
        else [f"Imagenet{size}_train_part1_npz.zip", f"Imagenet{size}_train_part2_npz.zip"]
    )

    def archives(names):
        return tuple(Archive(n, _CHRABASZCZ + n, *_CHRABASZCZ_FILES[n]) for n in names)

    return Source(
        name=f"imagenet{size}_chrabaszcz",
        version=(
            f"ImageNet {size}×{size} of Chrabaszcz et al. 2017 (box-resized; image-net.org's "
            "downsampled download, tfds imagenet_resized): 1,281,167 train / 50,000 validation "
            "images, 1,000 classes; not the set of VDM's Table 1"
        ),
        shape=(size, size, 3),
        num_classes=1000,
        archives={"train": archives(train), "test": archives([f"Imagenet{size}_val_npz.zip"])},
        sizes={"train": 1281167, "test": 50000},
        read=_read_npz_zip,
        where="image-net.org's download page (an account), 'Downsampled ImageNet' (npz)",
    )


SOURCES: dict[str, Source] = {
    "cifar10": Source(
        name="cifar10",
        version="CIFAR-10 (Krizhevsky 2009), the official binary archive: 50,000 train / "
        "10,000 test images",
        shape=(32, 32, 3),
        num_classes=10,
        archives={"train": (_CIFAR,), "test": (_CIFAR,)},
        sizes={"train": 50000, "test": 10000},
        read=_read_cifar,
        where="www.cs.toronto.edu/~kriz/cifar.html (`cifar-10-binary.tar.gz`, or its extracted "
        f"folder {CIFAR_FOLDER}/); --config.data.download=True fetches it",
    ),
    **{s.name: s for s in (_oord(32), _oord(64), _chrabaszcz(32), _chrabaszcz(64))},
}
