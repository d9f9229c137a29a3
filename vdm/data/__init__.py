"""Data: integer arrays in [0, vocab_size) and the batches the run feeds the model.

- `datasets`: every named dataset (digits, MNIST, Fashion-MNIST, the swirl, CIFAR-10, the
  two downsampled ImageNets, generated toy sets), splits, batching per host and step;
- `sources`: the paper's data sets as their publishers distribute them (versions, archive
  files and checksums, split sizes, format readers); `archives`: checked once and prepared
  into a memory-mapped cache; `download`: fetching and checking a file;
- `toy`: the generated low-dimensional sets (spiral, Gaussian mixture, the official swirl);
- `images`: image grids and PNGs of integer images.

The dataset API is re-exported here, so `from vdm import data; data.load_split(cfg, "test")`.
"""

from vdm.data.datasets import (
    DATASETS,
    FASHION_MNIST_DIR,
    SPLITS,
    VOCAB,
    Split,
    batch_indices,
    channel_stats,
    check_vocab,
    eval_batches,
    host_slice,
    in_memory,
    load_split,
    train_batch,
    train_batches,
    validate_batch,
    version_of,
)
from vdm.data.toy import swirl_official

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "SPLITS",
    "VOCAB",
    "Split",
    "batch_indices",
    "channel_stats",
    "check_vocab",
    "eval_batches",
    "host_slice",
    "in_memory",
    "load_split",
    "swirl_official",
    "train_batch",
    "train_batches",
    "validate_batch",
    "version_of",
]
