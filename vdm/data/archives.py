"""The paper's data sets from their official archives, without TensorFlow: CIFAR-10 and the
two downsampled ImageNets, each under a name that says which.

A `Source` names a data set's version, its archive files (with the size and SHA-256 that
tensorflow-datasets records for them, where one is known), its split sizes and a reader of the
archive's own format. `prepare` checks the archives once and writes their images into a cache
of uint8 `.npy` arrays under `data.data_dir`, which `load` then memory-maps: a host reads only
the rows of its own batches, so ImageNet 64 (1.28M × 12,288 bytes) never has to fit in memory.

The cache is built in a temporary directory and renamed into place with its manifest (the
archives' sizes, checksums and whether they were verified), so a half-written cache is never
seen; a cache whose archives have changed since is rebuilt. Guards against the wrong set: the
archive's SHA-256 where one is known, and the split sizes (the old ImageNet's validation split
has 49,999 images, the new one's 50,000). `data.verify=False` skips both, for archives one made
oneself (tests, a subset); every eval record then says the data were unverified.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import re
import shutil
import socket
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator

import numpy as np

from vdm.data.download import DataError, check, fetch

CACHE_FORMAT = 1


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


def default_data_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "vdm", "datasets")


# ---- Finding, fetching and checking the archives ----


def _located(source: Source, data_dir: str) -> dict[str, str | None]:
    """Each archive's path in `data_dir` (CIFAR-10 also as its extracted folder), or None."""
    out = {}
    for archives in source.archives.values():
        for a in archives:
            path = os.path.join(data_dir, a.name)
            if os.path.isfile(path):
                out[a.name] = path
            elif source.name == "cifar10" and os.path.isdir(os.path.join(data_dir, CIFAR_FOLDER)):
                out[a.name] = os.path.join(data_dir, CIFAR_FOLDER)
            else:
                out[a.name] = None
    return out


def _obtain(source: Source, data_dir: str, download: bool, mirror: str, verify: bool):
    """The archives' paths, downloaded where allowed; one line naming what is missing."""
    paths = _located(source, data_dir)
    missing = [a for arcs in source.archives.values() for a in arcs if paths[a.name] is None]
    missing = list({a.name: a for a in missing}.values())
    for a in missing:
        way = ""
        url = (mirror.rstrip("/") + "/" + a.name) if mirror else a.url
        if not download or url is None:
            if a.url is None:
                way = "; or fetch them from a mirror with --config.data.download=True "
                way += "--config.data.mirror=URL"
            elif not download:
                way = "; or set --config.data.download=True"
            raise DataError(
                f"data.name={source.name}: {', '.join(m.name for m in missing)} not in "
                f"{data_dir} (data.data_dir): put them there ({source.where}){way}"
            )
        paths[a.name] = fetch(url, os.path.join(data_dir, a.name), *_expected(a, verify))
    return paths


def _expected(a: Archive, verify: bool) -> tuple[int | None, str | None]:
    return (a.size, a.sha256) if verify else (None, None)


# ---- The cache ----


def cache_dir(source: Source, data_dir: str) -> str:
    return os.path.join(data_dir, "vdm_cache", source.name)


def _stamp(path: str) -> dict:
    """Size and modification time of a file, or of every file of a folder (CIFAR-10's
    extracted batches): a change to any makes the cache stale."""
    if os.path.isdir(path):
        return {f: _stamp(os.path.join(path, f)) for f in sorted(os.listdir(path))}
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _manifest(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, "manifest.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if m.get("format") == CACHE_FORMAT else None


def _usable(m: dict | None, source: Source, paths: dict, verify: bool) -> bool:
    """A complete cache of these archives (as they are now), verified if `verify`."""
    if m is None or m.get("name") != source.name or (verify and not m.get("verified")):
        return False
    for name, path in paths.items():
        if path is not None and m["archives"].get(name, {}).get("stamp") != _stamp(path):
            return False  # the archive changed since the cache was made
    return True


def prepare(name: str, data_cfg) -> str:
    """The cache directory of data set `name`, built from its archives if needed (`data_cfg`:
    the config's `data` section, for `data_dir`, `download`, `mirror` and `verify`)."""
    source = SOURCES[name]
    data_dir = data_cfg.get("data_dir") or default_data_dir()
    directory = cache_dir(source, data_dir)
    verify = bool(data_cfg.get("verify", True))
    if _ready(source, data_dir, directory, verify):  # a read-only data_dir with its cache
        return directory
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    # processes of one host (one per accelerator) prepare one after the other
    with open(directory + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(source, data_dir, directory, verify):  # another process built it meanwhile
            return directory
        _remove_stale_builds(directory)
        return _build_from_archives(source, data_dir, directory, data_cfg, verify)


def _ready(source: Source, data_dir: str, directory: str, verify: bool) -> bool:
    existing = _manifest(directory)
    archived = _located(source, data_dir)
    if existing is not None and all(p is None for p in archived.values()):
        return not verify or bool(existing.get("verified"))  # archives removed since
    return _usable(existing, source, archived, verify)


def _build_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _remove_stale_builds(directory: str) -> None:
    """Temporary folders this host's dead processes left (a build stopped by a signal)."""
    parent, name = os.path.split(directory)
    prefix = f"{name}.tmp-{socket.gethostname()}-"
    for entry in os.listdir(parent):
        if entry.startswith(prefix) or entry.startswith(f"{name}.old-"):
            pid = entry[len(prefix) :].split("-")[0] if entry.startswith(prefix) else ""
            if pid.isdigit() and _alive(int(pid)):
                continue
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build_from_archives(source, data_dir: str, directory: str, data_cfg, verify: bool) -> str:
    paths = _obtain(
        source, data_dir, bool(data_cfg.get("download")), data_cfg.get("mirror", ""), verify
    )
    records = {}
    for name, path in paths.items():
        a = next(a for arcs in source.archives.values() for a in arcs if a.name == name)
        if verify and os.path.isfile(path):
            check(path, a.size, a.sha256)
        checked = verify and os.path.isfile(path)  # an extracted folder: its split sizes only
        records[name] = {"stamp": _stamp(path), "sha256": a.sha256 if checked else None}
    _build(source, paths, directory, records, verify)
    return directory


def _build(source: Source, paths: dict, directory: str, records: dict, verify: bool) -> None:
    tmp = tempfile.mkdtemp(
        prefix=f"{os.path.basename(directory)}.tmp-{_build_tag()}-", dir=os.path.dirname(directory)
    )
    try:
        counts = {}
        for split, archives in source.archives.items():
            counts[split] = _write_split(source, [paths[a.name] for a in archives], split, tmp)
            if verify and counts[split] != source.sizes[split]:
                raise DataError(
                    f"data.name={source.name}: the {split} split of "
                    f"{', '.join(a.name for a in archives)} has {counts[split]:,} images, "
                    f"expected {source.sizes[split]:,}: another version of the data set "
                    "(compare the names in vdm/data/archives.py's SOURCES)"
                )
        manifest = {
            "format": CACHE_FORMAT,
            "name": source.name,
            "version": source.version,
            "verified": verify,
            "splits": counts,
            "shape": list(source.shape),
            "archives": records,
        }
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        # a stale cache is moved aside before the new one is renamed into place: a reader
        # sees the old cache, none, or the new one, never half of either
        old = None
        if os.path.isdir(directory):
            old = tempfile.mkdtemp(
                prefix=f"{os.path.basename(directory)}.old-", dir=os.path.dirname(directory)
            )
            os.rename(directory, os.path.join(old, "cache"))
        os.rename(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_split(source: Source, paths: list[str], split: str, out: str) -> int:
    """Stream one split's images into `<split>_images.npy` (and labels); returns the count."""
    parts_dir = os.path.join(out, f"{split}_parts")
    os.makedirs(parts_dir)
    n, label_parts = 0, []
    batches = source.read(paths, source.shape, split)
    while True:
        try:  # errors of the archive; the cache's own writes below name the cache's path
            images, labels = next(batches)
        except StopIteration:
            break
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
            raise DataError(
                f"data.name={source.name}: cannot read {', '.join(paths)} "
                f"({type(e).__name__}: {' '.join(str(e).split())}): a damaged or truncated "
                "archive, or another data set's"
            ) from None
        if images.shape[1:] != source.shape:
            raise DataError(
                f"data.name={source.name}: images of shape {images.shape[1:]} in "
                f"{', '.join(paths)}, expected {source.shape}: another data set's archive"
            )
        np.save(os.path.join(parts_dir, f"{len(label_parts):06d}.npy"), images)
        label_parts.append(labels)
        n += len(images)
    images = np.lib.format.open_memmap(
        os.path.join(out, f"{split}_images.npy"), "w+", np.uint8, (n, *source.shape)
    )
    at = 0
    for k in range(len(label_parts)):
        part = np.load(os.path.join(parts_dir, f"{k:06d}.npy"))
        images[at : at + len(part)] = part
        at += len(part)
    images.flush()
    del images
    shutil.rmtree(parts_dir)
    labels = np.concatenate(label_parts) if label_parts else np.zeros(0, np.int32)
    np.save(os.path.join(out, f"{split}_labels.npy"), labels.astype(np.int32))
    return n


def load(directory: str, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The cache's memory-mapped images and labels of `split`, and its manifest."""
    m = _manifest(directory)
    images = np.load(os.path.join(directory, f"{split}_images.npy"), mmap_mode="r")
    labels = np.load(os.path.join(directory, f"{split}_labels.npy"))
    if m is None or images.shape[0] != m["splits"][split] or len(labels) != len(images):
        raise DataError(f"{directory}: an incomplete cache; remove it to prepare it again")
    return images, labels, m
