"""Datasets and batches (vdm/data/datasets.py): deterministic order, exact eval passes, sources."""

import gzip
import struct

import numpy as np
import pytest

from vdm import data
from vdm.configs import cifar10, default, fashion_mnist, mnist, swirl2d
from vdm.data import datasets


def test_batches_are_a_pure_function_of_seed_and_step_and_cover_each_epoch():
    n, b = 10, 4
    first = np.concatenate([data.batch_indices(n, b, s, seed=3) for s in range(5)])  # 2 epochs
    again = np.concatenate([data.batch_indices(n, b, s, seed=3) for s in range(5)])
    np.testing.assert_array_equal(first, again)
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert not np.array_equal(first[:10], first[10:20])  # reshuffled each epoch
    assert not np.array_equal(
        first, np.concatenate([data.batch_indices(n, b, s, seed=4) for s in range(5)])
    )


def test_hosts_take_disjoint_slices_of_the_global_batch():
    split = data.in_memory(np.arange(16, dtype=np.uint8)[:, None], None, 0)
    whole = data.train_batch(split, 8, 5, 0, False)["image"]
    parts = [data.train_batch(split, 8, 5, 0, False, i, 2)["image"] for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_random_flip_flips_exactly_the_flagged_images():
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4, 1).repeat(8, 0)
    split = data.in_memory(imgs, None, 0)
    idx = data.batch_indices(len(split), 16, 0, 0)
    batch = data.train_batch(split, 16, 0, 0, True)
    flip = batch["flip"].astype(bool)
    assert 0 < flip.sum() < 16
    np.testing.assert_array_equal(batch["image"][flip], imgs[idx][flip][:, :, ::-1])
    np.testing.assert_array_equal(batch["image"][~flip], imgs[idx][~flip])


def test_eval_batches_visit_every_example_once():
    split = data.in_memory(np.arange(10, dtype=np.uint8)[:, None], None, 0)
    seen = []
    for batch in data.eval_batches(split, 4):
        seen += batch["image"][batch["mask"] == 1, 0].tolist()
        assert batch["image"].shape[0] == 4
    assert seen == list(range(10))


def test_train_batches_resume_exactly():
    split = data.in_memory(np.arange(50, dtype=np.uint8)[:, None], None, 0)
    it = data.train_batches(split, 4, 0, 1, False, steps_per_call=2)
    full = [next(it)["image"] for _ in range(3)]
    it.close()
    it2 = data.train_batches(split, 4, 2, 1, False, steps_per_call=2)
    np.testing.assert_array_equal(next(it2)["image"], full[1])
    it2.close()


def test_digits_and_mnist_are_offline_validated_and_held_out():
    d_train = data.load_split(default.get_config().data, "train")
    d_test = data.load_split(default.get_config().data, "test")
    assert (len(d_train), len(d_test)) == (1500, 297) and d_train.shape == (8, 8, 1)
    assert d_train.get(np.arange(1500))["image"].max() == 16
    c = mnist.get_config().data
    m_train, m_test = data.load_split(c, "train"), data.load_split(c, "test")
    assert (len(m_train), len(m_test)) == (4000, 1000) and m_train.shape == (28, 28, 1)
    labels = m_test.get(np.arange(1000))["label"]
    assert len(np.unique(labels)) == 10 and not np.all(np.diff(labels) >= 0)  # shuffled


def test_generated_2d_data_are_the_generator_binned_to_the_nearest_centre():
    """Each integer's bin centre is within half a bin of the continuous point it came from
    (inside [−1, 1]; outside, the nearest end bin), for the spiral and the Gaussian ring."""
    from vdm.data import toy as toy_data

    c = swirl2d.get_config("smoke")
    vocab = c.data.vocab_size = 256
    c.data.n_examples = 2000
    for name, fn in (
        ("spiral2d", toy_data.spiral),
        ("gaussian_mixture", toy_data.gaussian_mixture),
    ):
        c.data.name = name
        x = data.load_split(c.data, "train").get(np.arange(2000))["image"]
        y = np.clip(fn(2000, seed=0), -1, 1)
        centres = (2 * x.astype(np.float64) + 1) / vocab - 1
        assert np.all(np.abs(centres - y) <= 1 / vocab + 1e-12)
        assert len(np.unique(x)) > vocab // 2  # the data spread over the range


def _write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    c = fashion_mnist.get_config().data
    c.data_dir = str(tmp_path)
    train, test = data.load_split(c, "train"), data.load_split(c, "test")
    assert (len(train), len(test), train.shape) == (12, 5, (28, 28, 1))


def test_missing_fashion_mnist_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    c = fashion_mnist.get_config().data
    c.data_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_split(c, "train")


def test_cifar10_from_its_official_archive_with_flips(tmp_path):
    from experiments import archive_formats

    archive_formats.cifar10(tmp_path, per_batch=3)
    c = cifar10.get_config("smoke").data
    c.data_dir = str(tmp_path)
    split = data.load_split(c, "train")
    batch = data.train_batch(split, 4, 0, 0, True)
    assert len(split) == 15 and split.shape == (32, 32, 3)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 32, 32, 3)
    assert batch["label"].dtype == np.int32 and batch["flip"].shape == (4,)


def test_unknown_dataset_and_wrong_vocab_are_clear_errors():
    c = default.get_config().data
    c.name = "cifar100"
    with pytest.raises(ValueError, match=r"data.name must be one of \[.*'digits'.*got 'cifar100'"):
        data.load_split(c, "train")
    c = default.get_config().data
    c.vocab_size = 256
    with pytest.raises(ValueError, match=r"data.vocab_size must be 17 for data.name='digits'"):
        data.load_split(c, "train")
