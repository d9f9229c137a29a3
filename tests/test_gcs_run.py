"""Run directories on Cloud Storage (gs://), against a real emulator (fake-gcs-server,
tests/gcs_emulator.py): the checkpoints' data-safety rules, the metrics' numbered parts, the
workdir lock's create-if-absent and stale rule, and, from the command line, a whole run:
train → SIGTERM → resume → eval → sample → compress/decompress, a second trainer refused by
the lock, and the emulator stopped mid-run (one line; the last good step restorable when it
returns). Nothing here ever creates a local folder named `gs:`."""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.gcs_emulator import emulator
from vdm import gcs as gcs_ops
from vdm import storage
from vdm.run import checkpoint, cloud_lock, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=configs/digits.py:smoke"


@pytest.fixture(scope="module")
def gcs():
    with emulator() as server:
        yield server


def _objects(url: str) -> dict[str, str]:
    """{name under url: sha256 of its bytes} of every object under the prefix `url`."""
    from google.cloud import storage as gcs_client

    bucket, _, prefix = url[len("gs://") :].partition("/")
    client = gcs_client.Client()
    return {
        b.name[len(prefix) + 1 :]: hashlib.sha256(b.download_as_bytes()).hexdigest()
        for b in client.list_blobs(bucket, prefix=prefix.rstrip("/") + "/")
    }


# ---- Checkpoints on gs:// keep the guarantees of docs/reliability.md. ----


def _state(k: float):
    return {"w": jnp.arange(6.0) + k, "b": {"c": jnp.full((2, 3), k)}}


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _saved(url: str, steps, keep=2, best=None) -> checkpoint.Checkpointer:
    ckpt = checkpoint.Checkpointer(url, max_to_keep=keep)
    for s in steps:
        ckpt.save(s, _state(float(s)))
        if s == best:
            ckpt.record_eval(s, 1.0)
    ckpt.wait()
    return ckpt


def test_checkpoints_rotate_keep_the_best_and_restore(gcs):
    url = "gs://test-bucket/ckpt-rotate/checkpoints"
    ckpt = _saved(url, [1, 2, 3, 4, 5], keep=2, best=2)
    assert ckpt.steps() == [2, 4, 5]  # the newest two and the pinned best
    assert json.loads(storage.read_text(f"{url}/best.json")) == {"step": 2, "bpd": 1.0}
    restored = ckpt.restore(_abstract(_state(0.0)))
    np.testing.assert_array_equal(restored["w"], np.arange(6.0) + 5)
    ckpt.close()
    run = url.rsplit("/", 1)[0]  # --checkpoint=gs://…: a run, its checkpoints/, or one step
    assert checkpoint.resolve(run) == (url, None) == checkpoint.resolve(url)
    assert checkpoint.resolve(f"{url}/2") == (url, 2)
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        checkpoint.resolve("gs://test-bucket/nothing-here")
    again = checkpoint.Checkpointer(url)  # a new process sees what the last one wrote
    np.testing.assert_array_equal(again.restore(_abstract(_state(0.0)), 2)["w"], np.arange(6.0) + 2)
    again.close()


def _garble_metadata(step_url: str) -> None:
    storage.write_bytes(f"{step_url}/default/_METADATA", b"{not json")


def _truncate_arrays(step_url: str) -> None:
    for name in _objects(step_url):
        if name.startswith("default/d/"):
            data = storage.read_bytes(f"{step_url}/{name}")
            storage.write_bytes(f"{step_url}/{name}", data[: len(data) // 3])


@pytest.mark.parametrize("damage", [_garble_metadata, _truncate_arrays])
def test_a_damaged_step_is_walked_past_and_moved_only_by_training(gcs, damage):
    url = f"gs://test-bucket/ckpt-{damage.__name__}/checkpoints"
    _saved(url, [1, 2, 3], keep=3).close()
    damage(f"{url}/3")
    before = _objects(url)
    reader = checkpoint.Checkpointer(url, move_damaged=False)  # eval and sample: move nothing
    np.testing.assert_array_equal(reader.restore(_abstract(_state(0.0)))["w"], np.arange(6.0) + 2)
    reader.close()
    assert _objects(url) == before
    trainer = checkpoint.Checkpointer(url)  # training moves it aside, every object copied
    np.testing.assert_array_equal(trainer.restore(_abstract(_state(0.0)))["w"], np.arange(6.0) + 2)
    trainer.close()
    after = _objects(url)
    moved = {k[len("corrupt/3/") :]: v for k, v in after.items() if k.startswith("corrupt/3/")}
    assert moved == {k[2:]: v for k, v in before.items() if k.startswith("3/")}
    assert not any(k.startswith("3/") for k in after)


def test_a_mismatch_moves_nothing_and_no_readable_step_is_one_line(gcs):
    url = "gs://test-bucket/ckpt-mismatch/checkpoints"
    _saved(url, [1, 2], keep=2).close()
    before = _objects(url)
    other = {"w": jax.ShapeDtypeStruct((7,), jnp.float32), "b": _abstract(_state(0.0))["b"]}
    ckpt = checkpoint.Checkpointer(url)
    with pytest.raises(checkpoint.StructureMismatch, match="w"):
        ckpt.restore(other)
    assert _objects(url) == before
    for s in (1, 2):
        _garble_metadata(f"{url}/{s}")
    before = _objects(url)
    with pytest.raises(checkpoint.UnreadableCheckpoint, match="nothing was moved"):
        ckpt.restore(_abstract(_state(0.0)))
    ckpt.close()
    assert _objects(url) == before


# ---- Metrics: numbered whole parts, never a lost row. ----


def test_metrics_on_gs_are_whole_parts_and_resume_drops_later_rows(gcs, monkeypatch):
    monkeypatch.setattr(metrics, "PART_ROWS", 3)
    run = "gs://test-bucket/metrics-run"
    w = metrics.MetricWriter(run)
    for s in range(1, 8):
        w.write(s, {"loss": s / 10})
    w.close()
    assert [p.rsplit("/", 1)[1] for p in metrics.parts(run)] == [
        "000000.jsonl", "000001.jsonl", "000002.jsonl"
    ]  # fmt: skip
    assert [r["step"] for r in metrics.read_metrics(run)] == list(range(1, 8))
    assert storage.listdir(f"{run}/tb")  # the TensorBoard events, put whole
    w = metrics.MetricWriter(run, resume_step=4)  # resumed from the step-4 checkpoint
    assert [r["step"] for r in metrics.read_metrics(run)] == [1, 2, 3, 4]
    w.write(5, {"loss": 0.5})
    w.write(6, {"loss": 0.6})
    w.close()
    assert [r["step"] for r in metrics.read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert len(metrics.parts(run)) == 2


# ---- The workdir lock: create-if-absent, renewed, taken over only when provably stale. ----


def _lock_object(run: str, host: str, pid: int, **more) -> None:
    storage.write_bytes(f"{run}/.lock", json.dumps({"host": host, "pid": pid, **more}).encode())


def test_the_lock_refuses_a_live_holder_and_takes_over_a_dead_one(gcs):
    run = "gs://test-bucket/lock-run"
    first = cloud_lock.CloudLock(run).acquire()
    with pytest.raises(cloud_lock.LockHeld, match=rf"in use by a training run \(pid {os.getpid()}"):
        cloud_lock.CloudLock(run).acquire()
    first.release()
    assert not storage.exists(f"{run}/.lock")
    # a run killed on this host (its pid gone): taken over at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # the same host name but another boot or pid namespace (a container sharing the VM's
    # name): its pid means nothing here, so only the renewal rule applies
    _lock_object(run, socket.gethostname(), dead.pid, machine="another-boot pid:[1]")
    with pytest.raises(cloud_lock.LockHeld):
        cloud_lock.CloudLock(run).acquire()
    _lock_object(run, socket.gethostname(), dead.pid, machine=cloud_lock._machine())
    lock = cloud_lock.CloudLock(run).acquire()
    assert json.loads(storage.read_bytes(f"{run}/.lock"))["pid"] == os.getpid()
    # a write whose answer was lost and was retried (412 on its own write) is its own
    gen = gcs_ops.stat(f"{run}/.lock")[1]
    assert lock._put(gen + 12345) == gen
    lock.release()
    assert not storage.exists(f"{run}/.lock")


def test_a_lock_not_renewed_is_taken_over_and_its_holder_learns_it(gcs):
    run = "gs://test-bucket/lock-stale"
    _lock_object(run, "another-vm", 1)  # a live-looking owner on another host
    with pytest.raises(cloud_lock.LockHeld, match="pid 1 on another-vm"):
        cloud_lock.CloudLock(run, stale_after=30).acquire()
    time.sleep(1.2)
    lock = cloud_lock.CloudLock(run, stale_after=1.0).acquire()  # not renewed for 1 s: stale
    lock.release()
    # the holder renews every heartbeat; another process that took the lock over is noticed
    holder = cloud_lock.CloudLock(run, heartbeat=0.2).acquire()
    time.sleep(0.5)
    assert holder.lost is None
    storage.remove(f"{run}/.lock")
    assert storage.create_exclusive(f"{run}/.lock", b'{"host": "vm-2", "pid": 7}')
    deadline = time.time() + 10
    while holder.lost is None and time.time() < deadline:
        time.sleep(0.1)
    assert holder.lost and "taken over" in holder.lost
    holder.release()  # never deletes the new owner's lock
    assert json.loads(storage.read_bytes(f"{run}/.lock"))["host"] == "vm-2"


def test_reset_on_gs_moves_every_file_of_the_run_aside(gcs):
    from vdm.run import workdir as workdir_lib

    run = "gs://test-bucket/reset-run"
    names = ["config.json", "metrics/000000.jsonl", "checkpoints/2/x", "eval_step_2.json"]
    for n in names:
        storage.write_bytes(f"{run}/{n}", n.encode())
    before = _objects(run)
    workdir_lib.reset(run)
    for n in ["config.json", "metrics/000000.jsonl"]:  # a second run, reset the same second
        storage.write_bytes(f"{run}/{n}", b"second")
    workdir_lib.reset(run)
    after = _objects(run)
    dests = sorted({k.split("/")[0] for k in after})
    assert len(dests) == 2 and all(d.startswith("reset_") for d in dests), dests
    first = {k.split("/", 1)[1]: v for k, v in after.items() if k.startswith(dests[0] + "/")}
    assert first == before  # every object of the first run, unchanged, nothing merged into it


# ---- A released checkpoint imported into a gs:// workdir. ----


def test_an_import_into_gs_equals_the_local_one_and_never_overwrites(gcs, tmp_path):
    from tests.test_import import restored, src
    from vdm.importers.flax_msgpack import CheckpointImportError
    from vdm.importers.workdir import import_checkpoint

    run = "gs://test-bucket/imported"
    import_checkpoint(src("learnable_scalar"), run, log=lambda _: None)
    import_checkpoint(src("learnable_scalar"), str(tmp_path / "local"), log=lambda _: None)
    on_gs, local = restored(run)[2], restored(str(tmp_path / "local"))[2]
    jax.tree.map(np.testing.assert_array_equal, on_gs, local)
    assert not [n for n in storage.listdir("gs://test-bucket") if "importing" in n]
    before = _objects(run)
    with pytest.raises(CheckpointImportError, match="already exists and is not empty"):
        import_checkpoint(src("learnable_scalar"), run, log=lambda _: None)
    assert _objects(run) == before


# ---- The command line on gs://: a whole run, the lock, an outage. ----


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, VDM_STORAGE_RETRY_SECONDS="5")


def vdm_main(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "vdm.main", SMOKE.replace("configs/", f"{ROOT}/configs/"), *args],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _start(cwd, workdir, *args):
    long = ["--config.training.num_steps=100000", "--config.training.eval_every=100000"]
    return subprocess.Popen(
        [sys.executable, "-m", "vdm.main", f"{SMOKE.replace('configs/', f'{ROOT}/configs/')}",
         f"--workdir={workdir}", *long, *args],
        cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_until(cond, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("the run ended: " + proc.communicate()[1][-3000:])
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError("timed out")


def _errors(stderr: str) -> list[str]:
    """stderr without progress bars and tensorstore's note on the emulator's test token."""
    return [
        ln for ln in re.split(r"[\r\n]+", stderr)
        if ln.strip() and not re.search(r"\d+%\|", ln) and "GOOGLE_AUTH_TOKEN_FOR_TESTING" not in ln
    ]  # fmt: skip


def test_a_run_on_gs_does_what_a_local_run_does(gcs, tmp_path):
    run = "gs://test-bucket/cli-run"
    proc = _start(
        tmp_path, run, "--config.training.log_every=100", "--config.training.save_every=100000"
    )
    _wait_until(lambda: metrics.read_metrics(run), proc)
    second = vdm_main(tmp_path, f"--workdir={run}")  # a second trainer: refused, one line
    assert second.returncode == 1 and len(_errors(second.stderr)) == 1, second.stderr[-2000:]
    assert f"in use by a training run (pid {proc.pid} on " in second.stderr
    proc.send_signal(signal.SIGTERM)  # preempted: the step in flight is saved
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    last = _errors(err)[-1]
    assert "(SIGTERM); saved; rerun the same command to resume" in last, last
    step = int(last.split("preempted at step ")[1].split()[0])
    assert [s for s in storage.listdir(f"{run}/checkpoints") if s.isdigit()] == [str(step)]
    assert metrics.read_metrics(run)[-1]["step"] == step
    assert not storage.exists(f"{run}/.lock")  # released on the way out
    resumed = vdm_main(tmp_path, f"--workdir={run}", f"--config.training.num_steps={step + 2}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"starting at step {step}" in resumed.stdout
    assert json.loads(storage.read_text(f"{run}/eval_final.json"))["step"] == step + 2
    history = storage.read_text(f"{run}/config_history.jsonl").splitlines()
    assert len(history) == 2 and "training.num_steps" in json.loads(history[1])["changes"]
    # eval, sample, compress and decompress read and write the bucket
    ev = vdm_main(tmp_path, f"--workdir={run}", "--mode=eval")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads(storage.read_text(f"{run}/eval_step_{step + 2}.json"))["step"] == step + 2
    assert storage.listdir(f"{run}/eval_records")
    sa = vdm_main(tmp_path, f"--workdir={run}", "--mode=sample")
    assert sa.returncode == 0, sa.stderr[-3000:]
    assert any(n.endswith(".png") for n in storage.listdir(f"{run}/samples"))
    from sklearn.datasets import load_digits

    images = load_digits().images[:3].astype(np.uint8)[..., None]
    np.savez(tmp_path / "in.npz", images=images)
    co = vdm_main(tmp_path, f"--workdir={run}", "--mode=compress", f"--input={tmp_path}/in.npz",
                  f"--output={run}/out/in.vdmz")  # fmt: skip
    assert co.returncode == 0, co.stderr[-3000:]
    de = vdm_main(tmp_path, f"--workdir={run}", "--mode=decompress", f"--input={run}/out/in.vdmz",
                  f"--output={run}/out/back.npz")  # fmt: skip
    assert de.returncode == 0, de.stderr[-3000:]
    import io

    back = np.load(io.BytesIO(storage.read_bytes(f"{run}/out/back.npz")))["images"]
    np.testing.assert_array_equal(back, images)
    from vdm.run import plot

    assert plot.main([run, f"--out={run}/metrics.png"]) == 0  # `vdm plot` reads the bucket
    assert storage.read_bytes(f"{run}/metrics.png")[:4] == b"\x89PNG"
    assert sorted(os.listdir(tmp_path)) == ["in.npz"]  # no local folder named gs:


def test_storage_stopped_mid_run_is_one_line_and_the_last_step_survives(gcs, tmp_path):
    run = "gs://test-bucket/outage"
    proc = _start(
        tmp_path, run, "--config.training.log_every=50", "--config.training.save_every=100"
    )
    _wait_until(lambda: storage.exists(f"{run}/checkpoints/100/commit_success.txt"), proc)
    gcs.stop()
    stopped = time.time()
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        gcs.start()  # the same port, the same objects
    assert time.time() - stopped < 120  # 5 s of retries, then no wait for orbax's threads
    assert proc.returncode == 1, err[-3000:]
    lines = _errors(err)
    assert len(lines) == 1 and lines[0].startswith("error: cannot "), err[-3000:]
    assert f"{run}/" in lines[0] and "Cloud Storage cannot be reached" in lines[0]
    ev = vdm_main(tmp_path, f"--workdir={run}", "--mode=eval")  # the last good step restores
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads(storage.read_text(f"{run}/eval_step_{100}.json"))["step"] >= 100
    assert os.listdir(tmp_path) == []


def test_two_hosts_train_and_resume_one_gs_run(gcs, tmp_path):
    """A TPU pod's way: every process computes, process 0 writes the run's files and holds the
    lock, orbax writes the checkpoint from all (jax.distributed over gloo, one CPU each)."""
    from tests.test_multihost import _env as host_env
    from tests.test_multihost import _free_port

    run = "gs://test-bucket/two-hosts"

    def two(*args):
        port = _free_port()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vdm.main",
                    SMOKE,
                    f"--workdir={run}",
                    *args,
                    f"--coordinator=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                ],
                cwd=ROOT,
                env={**host_env(1), **_env()},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i in range(2)
        ]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err[-3000:]
        return outs

    two("--config.training.num_steps=4")
    assert [s for s in storage.listdir(f"{run}/checkpoints") if s.isdigit()] == ["2", "4"]
    (out, _), _ = two("--config.training.num_steps=6")
    assert "starting at step 4" in out and "2 device(s)" in out
    assert [r["step"] for r in metrics.read_metrics(run) if r["split"] == "train"] == [2, 4, 6]
    assert json.loads(storage.read_text(f"{run}/eval_final.json"))["step"] == 6
    assert not storage.exists(f"{run}/.lock")


def test_jax_compilation_cache_on_gs(gcs):
    """docs/cli.md says JAX_COMPILATION_CACHE_DIR may be a gs:// URL: JAX writes it itself
    (through etils and gcsfs), and a second process reads its entries back."""
    cache = "gs://test-bucket/xla-cache"
    env = dict(
        _env(), JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
    )
    code = (
        "import vdm, jax, jax.numpy as jnp\n"
        "hits = []\n"
        "jax.monitoring.register_event_listener(\n"
        "    lambda e, **k: hits.append(e) if 'cache_hits' in e else None)\n"
        "print(float(jax.jit(lambda x: jnp.sin(x) * 3)(jnp.ones(2))[0]), len(hits))\n"
    )
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            for _ in range(2)]  # fmt: skip
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    assert any(n.endswith("-cache") for n in storage.listdir(cache))
    assert int(runs[0].stdout.split()[-1]) == 0 and int(runs[1].stdout.split()[-1]) > 0
