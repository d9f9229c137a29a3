"""The path layer for run directories (vdm/storage.py), against a real Cloud Storage emulator
(fake-gcs-server, tests/gcs_emulator.py), and the command line's one-line refusals: never a
local folder named `gs:`. Whole runs on gs:// are tests/test_gcs_run.py."""

import os
import subprocess
import sys
import threading

import pytest

from tests.gcs_emulator import emulator
from vdm import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gcs():
    with emulator() as address:
        yield address


def test_other_schemes_and_malformed_urls_are_one_line():
    for path in ("s3://bucket/run", "hdfs://nn/run", "file:///tmp/run"):
        with pytest.raises(storage.StorageError, match=r"is not supported; give a local path"):
            storage.check(path)
    with pytest.raises(storage.StorageError, match=r"not a Cloud Storage URL"):
        storage.check("gs://A_B/run")
    for root in ("gs://bucket", "gs://bucket/"):
        with pytest.raises(storage.StorageError, match=r"a whole bucket; give a path inside"):
            storage.check(root)
    assert storage.check("runs/x") == "runs/x" and storage.check("gs://test-bucket/r") == (
        "gs://test-bucket/r"
    )
    assert storage.join("gs://b/run", "checkpoints", "3") == "gs://b/run/checkpoints/3"
    assert storage.abspath("gs://b/run/") == "gs://b/run"
    assert storage.dirname("gs://b/run/config.json") == "gs://b/run"


@pytest.mark.parametrize("root", ["local", "gs"])
def test_whole_writes_reads_listing_and_exclusive_create(gcs, tmp_path, root):
    base = str(tmp_path / "run") if root == "local" else "gs://test-bucket/run"
    storage.makedirs(base)
    path = storage.join(base, "config.json")
    storage.write_bytes(path, b'{"a": 1}')
    storage.write_bytes(path, b'{"a": 2}')  # replaced whole
    assert storage.read_text(path) == '{"a": 2}' and storage.exists(path)
    assert "config.json" in storage.listdir(base) and storage.isdir(base)
    lock = storage.join(base, ".lock")
    assert storage.create_exclusive(lock, b"pid 1 on a")
    assert not storage.create_exclusive(lock, b"pid 2 on b")  # refused: the first holds it
    assert storage.read_bytes(lock) == b"pid 1 on a"
    storage.remove(lock)
    assert not storage.exists(lock) and storage.create_exclusive(lock, b"pid 3")
    assert storage.listdir(storage.join(base, "nothing")) == []
    if root == "local":
        assert not [p for p in os.listdir(tmp_path / "run") if ".tmp" in p]


def test_racing_exclusive_creates_have_one_winner(gcs):
    """Eight threads create the same object at once: the service lets exactly one through."""
    wins = []

    def attempt(i):
        wins.append(storage.create_exclusive("gs://test-bucket/race/.lock", f"{i}".encode()))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_access_problems_are_one_line_naming_the_url(gcs, monkeypatch):
    storage.check_access("gs://test-bucket/run")  # reachable: nothing
    with pytest.raises(storage.StorageError) as e:
        storage.check_access("gs://no-such-bucket/run")
    assert str(e.value) == "--workdir=gs://no-such-bucket/run: bucket no-such-bucket does not exist"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing listens
    with pytest.raises(
        storage.StorageError, match=r"gs://test-bucket/run: Cloud Storage cannot be reached"
    ):
        storage.check_access("gs://test-bucket/run")


def vdm_main(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "vdm.main", *args],
        cwd=cwd,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
    )


def test_a_url_workdir_is_one_line_and_never_a_local_gs_folder(gcs, tmp_path):
    cases = {
        "gs://no-such-bucket/run": "bucket no-such-bucket does not exist",
        "s3://bucket/run": "s3:// is not supported; give a local path",
    }
    for workdir, expected in cases.items():
        proc = vdm_main(tmp_path, "--config=digits:smoke", f"--workdir={workdir}")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
        assert lines[0].startswith(f"error: --workdir={workdir}: ") and expected in lines[0]
    proc = vdm_main(tmp_path, "--config=digits:smoke", "--workdir=gs://test-bucket/run",
                    "--config.data.data_dir=gs://test-bucket/data")  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: data.data_dir=gs://test-bucket/data: the data sets are")
    assert os.listdir(tmp_path) == []  # no folder named gs: or s3:


@pytest.mark.parametrize("root", ["local", "gs"])
def test_move_tree_keeps_every_object_and_leaves_no_source(gcs, tmp_path, root):
    """What moving a damaged checkpoint step aside does (vdm/run/checkpoint.py): on Cloud
    Storage, which has no rename, every object copied before any is deleted."""
    base = str(tmp_path) if root == "local" else "gs://test-bucket/mv"
    names = ["_CHECKPOINT_METADATA", "default/_METADATA", "default/d/abc"]
    for n in names:
        storage.makedirs(storage.dirname(storage.join(base, "3", n)))
        storage.write_bytes(storage.join(base, "3", n), n.encode())
    storage.makedirs(storage.join(base, "corrupt"))
    storage.move_tree(storage.join(base, "3"), storage.join(base, "corrupt", "3"))
    assert "3" not in storage.listdir(base)
    for n in names:
        assert storage.read_bytes(storage.join(base, "corrupt", "3", n)) == n.encode()


@pytest.mark.parametrize("root", ["local", "gs"])
def test_a_png_folder_is_read_as_glob_lists_it_and_a_bad_png_is_named(gcs, tmp_path, root):
    import io

    import numpy as np
    from PIL import Image

    from vdm.compress import files
    from vdm.compress.container import CompressError

    base = str(tmp_path / "pngs") if root == "local" else "gs://test-bucket/pngs"
    storage.makedirs(base)
    for i in range(2):
        buf = io.BytesIO()
        Image.fromarray(np.full((4, 4), 10 * i, np.uint8)).save(buf, format="png")
        storage.write_bytes(storage.join(base, f"{i}.png"), buf.getvalue())
    storage.write_bytes(storage.join(base, "._0.png"), b"AppleDouble")  # hidden: skipped
    images, names = files.read_images(base)
    assert names == ["0.png", "1.png"] and images.shape == (2, 4, 4, 1)
    storage.write_bytes(storage.join(base, "2.png"), b"not a png")
    with pytest.raises(CompressError, match=r"2\.png: not a readable PNG"):
        files.read_images(base)
