"""The paper's data sets from their official archives, without TensorFlow
(vdm/data/archives.py, vdm/data/download.py): archives made in the exact formats are read
back image for image, through the library and the command line; downloads go through a real
HTTP server on 127.0.0.1; a truncated or wrong archive, a wrong checksum, a wrong split size
and a half-written cache are one line each and leave no cache that could be used."""

import dataclasses
import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import ml_collections
import numpy as np
import pytest

from experiments import archive_formats
from vdm.compress import api
from vdm.configs import cifar10, imagenet32, imagenet32_chrabaszcz
from vdm.data import archives, datasets
from vdm.data.download import DataError, fetch, sha256_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_cfg(name: str, data_dir, **kw) -> ml_collections.ConfigDict:
    c = cifar10.get_config("smoke").data
    c.name, c.data_dir, c.verify = name, str(data_dir), False
    for k, v in kw.items():
        c[k] = v
    return c


def load(c, split):
    datasets._archive_cached.cache_clear()
    return datasets.load_split(c, split)


@pytest.mark.parametrize(
    "name, make",
    [
        ("cifar10", archive_formats.cifar10),
        ("imagenet32_oord", archive_formats.imagenet_oord),
        ("imagenet64_oord", functools.partial(archive_formats.imagenet_oord, size=64)),
        ("imagenet32_chrabaszcz", archive_formats.imagenet_chrabaszcz),
        ("imagenet64_chrabaszcz", None),
    ],
)
def test_each_format_reads_back_image_for_image(tmp_path, name, make):
    if make is None:  # 64×64 in two train parts
        make = _chrabaszcz64
    written = make(tmp_path)
    c = data_cfg(name, tmp_path)
    for split in ("train", "test"):
        got = load(c, split)
        x, y = written[split]
        assert len(got) == len(x) and got.shape == x.shape[1:]
        batch = got.get(np.arange(len(x)))
        np.testing.assert_array_equal(batch["image"], x)
        if archives.SOURCES[name].num_classes:
            np.testing.assert_array_equal(batch["label"], y)
        assert got.info == {"version": archives.SOURCES[name].version, "verified": False}
    cache = archives.cache_dir(archives.SOURCES[name], str(tmp_path))
    images = np.load(os.path.join(cache, "train_images.npy"), mmap_mode="r")
    assert isinstance(images, np.memmap)  # read row by row, never whole


def _chrabaszcz64(data_dir) -> dict:
    """Imagenet64's train archive comes in two parts; the reader concatenates them in order."""
    first = archive_formats.imagenet_chrabaszcz(data_dir, size=64, n_train=4, n_valid=3)
    os.rename(data_dir / "Imagenet64_train_npz.zip", data_dir / "Imagenet64_train_part1_npz.zip")
    second = archive_formats.imagenet_chrabaszcz(data_dir, size=64, n_train=6, n_valid=3)
    os.rename(data_dir / "Imagenet64_train_npz.zip", data_dir / "Imagenet64_train_part2_npz.zip")
    train = tuple(np.concatenate(p) for p in zip(first["train"], second["train"], strict=True))
    return {"train": train, "test": second["test"]}


def test_cifar10_from_its_extracted_folder(tmp_path):
    import tarfile

    written = archive_formats.cifar10(tmp_path)
    with tarfile.open(tmp_path / "cifar-10-binary.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    got = load(data_cfg("cifar10", tmp_path / "x"), "test")
    np.testing.assert_array_equal(got.get(np.arange(len(got)))["image"], written["test"][0])


def test_a_missing_archive_says_which_files_to_put_where(tmp_path):
    for name, needles in (
        ("imagenet32_oord", ["train_32x32.tar", "valid_32x32.tar", "academic-torrents"]),
        ("imagenet32_chrabaszcz", ["Imagenet32_train_npz.zip", "image-net.org"]),
        ("cifar10", ["cifar-10-binary.tar.gz", "data.download=True"]),
    ):
        with pytest.raises(DataError) as e:
            load(data_cfg(name, tmp_path), "train")
        text = str(e.value)
        assert "\n" not in text and str(tmp_path) in text, text
        assert all(n in text for n in needles), text
    made = os.listdir(tmp_path / "vdm_cache")
    assert all(f.endswith(".lock") for f in made), made  # nothing cached


def test_a_truncated_or_wrong_archive_is_one_line_and_caches_nothing(tmp_path):
    archive_formats.cifar10(tmp_path)
    blob = (tmp_path / "cifar-10-binary.tar.gz").read_bytes()
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"cannot read .*cifar-10-binary.tar.gz.*truncated"):
        load(data_cfg("cifar10", tmp_path), "train")
    # the new ImageNet's zip where the old one's tar of PNGs belongs
    archive_formats.imagenet_chrabaszcz(tmp_path)
    os.replace(tmp_path / "Imagenet32_train_npz.zip", tmp_path / "train_32x32.tar")
    os.replace(tmp_path / "Imagenet32_val_npz.zip", tmp_path / "valid_32x32.tar")
    with pytest.raises(DataError, match=r"cannot read .*train_32x32.tar.*another data set's"):
        load(data_cfg("imagenet32_oord", tmp_path), "train")
    leftovers = [f for f in os.listdir(tmp_path / "vdm_cache") if not f.endswith(".lock")]
    assert leftovers == []  # no cache, not even a temporary one


def test_checksums_and_split_sizes_guard_real_archives(tmp_path, monkeypatch):
    """With data.verify (the default) a file that is not the publisher's is refused, naming
    the expected and the found SHA-256; an archive of the right checksum but another split
    size (the new ImageNet's 50,000 validation images for the old set's 49,999) too."""
    archive_formats.imagenet_oord(tmp_path)
    c = data_cfg("imagenet32_oord", tmp_path, verify=True)
    expected = archives.SOURCES["imagenet32_oord"].archives["train"][0]
    with pytest.raises(DataError) as e:
        load(c, "train")
    assert f"expected {expected.size:,}" in str(e.value) and "\n" not in str(e.value)
    # the same guard with this archive's own size and SHA-256 recorded, and other split sizes
    source = archives.SOURCES["imagenet32_oord"]
    recorded = {}
    for split, (a,) in source.archives.items():
        path = str(tmp_path / a.name)
        own = dataclasses.replace(a, size=os.path.getsize(path), sha256=sha256_of(path))
        recorded[split] = (own,)
    own = dataclasses.replace(source, archives=recorded, sizes={"train": 6, "test": 4})
    monkeypatch.setitem(archives.SOURCES, "imagenet32_oord", own)
    with pytest.raises(DataError, match=r"test split of valid_32x32.tar has 5 images, expected 4"):
        load(c, "train")
    assert [f for f in os.listdir(tmp_path / "vdm_cache") if not f.endswith(".lock")] == []
    right = dataclasses.replace(own, sizes={"train": 6, "test": 5})
    monkeypatch.setitem(archives.SOURCES, "imagenet32_oord", right)
    split = load(c, "test")
    assert len(split) == 5 and "verified" not in split.info  # verified: the record says nothing


def test_a_half_written_or_stale_cache_is_never_used(tmp_path):
    written = archive_formats.cifar10(tmp_path)
    c = data_cfg("cifar10", tmp_path)
    cache = archives.cache_dir(archives.SOURCES["cifar10"], str(tmp_path))
    os.makedirs(cache + ".tmp999")  # a build that died: ignored
    os.makedirs(cache)  # a cache without its manifest: rebuilt
    np.save(os.path.join(cache, "test_images.npy"), np.zeros((4, 32, 32, 3), np.uint8))
    got = load(c, "test")
    np.testing.assert_array_equal(got.get(np.arange(4))["image"], written["test"][0])
    # a new archive (another mtime and size) makes the cache stale: rebuilt from it
    new = archive_formats.cifar10(tmp_path, per_batch=2, n_test=3)
    got = load(c, "test")
    assert len(got) == 3
    np.testing.assert_array_equal(got.get(np.arange(3))["image"], new["test"][0])


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving `tmp_path/served`."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_a_download_is_kept_only_with_the_right_checksum(server, tmp_path):
    root, url = server
    archive_formats.cifar10(root)
    blob = (root / "cifar-10-binary.tar.gz").read_bytes()
    good = sha256_of(str(root / "cifar-10-binary.tar.gz"))
    dest = tmp_path / "d" / "cifar-10-binary.tar.gz"
    with pytest.raises(DataError) as e:
        fetch(f"{url}/cifar-10-binary.tar.gz", str(dest), len(blob), "0" * 64)
    assert f"SHA-256 {good}, expected {'0' * 64}" in str(e.value) and url in str(e.value)
    assert os.listdir(tmp_path / "d") == []  # no file, no .part
    with pytest.raises(DataError, match=r"expected 999 \(longer than the original"):
        fetch(f"{url}/cifar-10-binary.tar.gz", str(dest), 999, None)
    with pytest.raises(DataError, match=r"cannot download .*missing.tar.gz.*HTTP 404"):
        fetch(f"{url}/missing.tar.gz", str(dest), None, None)
    assert fetch(f"{url}/cifar-10-binary.tar.gz", str(dest), len(blob), good) == str(dest)
    assert dest.read_bytes() == blob


def vdm_main(*args):
    return subprocess.run(
        [sys.executable, "-m", "vdm.main", *args],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
    )


def test_cifar10_downloads_from_a_mirror_trains_and_evaluates_from_the_cli(server, tmp_path):
    """`data.download` through a mirror (a real server), then train two steps and evaluate
    offline with the data moved elsewhere: where the data live is the machine's."""
    root, url = server
    archive_formats.cifar10(root)
    first, second, run = tmp_path / "data1", tmp_path / "data2", tmp_path / "run"
    proc = vdm_main(
        "--config=configs/cifar10.py:smoke",
        f"--workdir={run}",
        f"--config.data.data_dir={first}",
        "--config.data.download=True",
        f"--config.data.mirror={url}",
        "--config.training.num_steps=2",
        "--config.training.eval_every=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run / "eval_final.json").read_text())["elbo_record"]
    assert record["version"] == archives.SOURCES["cifar10"].version
    assert record["verified"] is False
    os.rename(first, second)
    proc = vdm_main(
        "--config=configs/cifar10.py:smoke",
        f"--workdir={run}",
        "--mode=eval",
        f"--config.data.data_dir={second}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ELBO   test bpd" in proc.stdout


@pytest.mark.parametrize(
    "config, make",
    [
        ("imagenet32", archive_formats.imagenet_oord),
        ("imagenet64", functools.partial(archive_formats.imagenet_oord, size=64)),
        ("imagenet32_chrabaszcz", archive_formats.imagenet_chrabaszcz),
    ],
)
def test_imagenet_trains_and_evaluates_offline_from_the_cli(tmp_path, config, make):
    make(tmp_path)
    proc = vdm_main(
        f"--config=configs/{config}.py:smoke",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={tmp_path}",
        "--config.training.num_steps=2",
        "--config.training.eval_every=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "eval_final.json").read_text())["elbo_record"]
    who = {
        "imagenet32": "downsampled ImageNet 32×32 of van den Oord",
        "imagenet64": "downsampled ImageNet 64×64 of van den Oord",
        "imagenet32_chrabaszcz": "ImageNet 32×32 of Chrabaszcz",
    }[config]
    assert record["version"].startswith(who) and record["verified"] is False


def test_the_configs_name_the_paper_benchmarks():
    assert cifar10.get_config().schedule.name == "learned_scalar"  # the official config's
    assert imagenet32.get_config().data.name == "imagenet32_oord"
    assert imagenet32_chrabaszcz.get_config().data.name == "imagenet32_chrabaszcz"
    with pytest.raises(ValueError, match="'imagenet32_chrabaszcz' is that set"):
        datasets.load_split(ml_collections.ConfigDict({"name": "imagenet32"}), "train")


def test_where_the_data_live_is_not_the_runs_identity():
    a, b = cifar10.get_config(), cifar10.get_config()
    b.data.data_dir, b.data.download, b.data.mirror, b.data.verify = "/x", False, "http://m", False
    assert api.config_hash(a) == api.config_hash(b)
    b.data.name = "imagenet32_oord"
    assert api.config_hash(a) != api.config_hash(b)


def test_a_ready_cache_is_served_without_writing_and_stale_builds_are_cleared(tmp_path):
    """A prepared cache is read without writing anything in data.data_dir (no lock file: a
    read-only mount works); a rebuild clears the temporary folders of this host's dead
    processes (a build stopped by a signal), not those of live ones."""
    import socket

    archive_formats.cifar10(tmp_path)
    c = data_cfg("cifar10", tmp_path)
    load(c, "test")
    cache = archives.cache_dir(archives.SOURCES["cifar10"], str(tmp_path))
    parent = os.path.dirname(cache)
    os.remove(cache + ".lock")
    before = sorted(os.listdir(parent))
    load(c, "train")
    assert sorted(os.listdir(parent)) == before
    host = socket.gethostname()
    dead = os.path.join(parent, f"cifar10.tmp-{host}-999999-x")
    live = os.path.join(parent, f"cifar10.tmp-{host}-{os.getpid()}-x")
    os.makedirs(dead), os.makedirs(live)
    new = archive_formats.cifar10(tmp_path, per_batch=2, n_test=3)  # the cache is stale
    got = load(c, "test")
    np.testing.assert_array_equal(got.get(np.arange(3))["image"], new["test"][0])
    assert not os.path.exists(dead) and os.path.exists(live)
