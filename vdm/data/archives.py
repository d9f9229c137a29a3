"""The paper's data sets from their official archives, without TensorFlow: CIFAR-10 and the
two downsampled ImageNets, each under a name that says which.

A `Source` (vdm/data/sources.py) names a data set's version, its archive files, split sizes
and the reader of its format. `prepare` checks the archives once and writes their images into
a cache of uint8 `.npy` arrays under `data.data_dir`, which `load` then memory-maps: a host
reads only the rows of its own batches, so ImageNet 64 (1.28M × 12,288 bytes) never has to
fit in memory.

The cache is built in a temporary directory and renamed into place with its manifest (the
archives' sizes, checksums and whether they were verified), so a half-written cache is never
seen; a cache whose archives have changed since is rebuilt. Guards against the wrong set: the
archive's SHA-256 where one is known, and the split sizes (the old ImageNet's validation split
has 49,999 images, the new one's 50,000). `data.verify=False` skips both, for archives one made
oneself (tests, a subset); every eval record then says the data were unverified.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tarfile
import tempfile
import zipfile

import numpy as np

from vdm import signals
from vdm.data.download import DataError, check, fetch
from vdm.data.sources import CIFAR_FOLDER, SOURCES, Archive, Source

CACHE_FORMAT = 1


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
            if pid.isdigit() and signals.alive(int(pid)):
                continue
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


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
