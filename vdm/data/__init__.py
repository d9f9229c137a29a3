"""Data: integer arrays in [0, vocab_size) and the batches the run feeds the model.

- `datasets`: every named dataset (digits, MNIST, Fashion-MNIST, the swirl, CIFAR-10 and
  ImageNet32 through tfds, generated toy sets), splits, batching per host and step;
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
