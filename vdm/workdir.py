"""A run directory: checked before anything is written, locked while a run trains in it.

`prepare` makes sure `--workdir` is a writable directory; `Lock` is an advisory `flock` on
`<workdir>/.lock` (released by the OS when the process dies, so a killed run never leaves a
stale lock); `check_config` compares the requested config with the run's `config.json` and
refuses changes that would not fit the saved parameters, listing the fields that differ.
`config.json` holds the latest config; `config_history.jsonl` keeps every accepted change;
`reset` moves a previous run aside (never deletes it).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

# Fields that may change when a run resumes: they do not alter any array in the checkpoint.
SAFE_SECTIONS = ("training", "eval", "sample", "compress", "objective")
SAFE_FIELDS = (
    "optimizer.learning_rate",
    "optimizer.b1",
    "optimizer.b2",
    "optimizer.eps",
    "optimizer.weight_decay",
    "optimizer.warmup_steps",
    "optimizer.decay",
    "optimizer.ema_decay",
    "data.data_dir",
    "data.download",
    "model.label_dropout",
    "model.dropout",
    "model.antithetic_time",
    "model.dtype",
    "model.remat",
)


class WorkdirError(RuntimeError):
    """A workdir that cannot be used as asked; the message says why and what to do."""


def prepare(workdir: str) -> str:
    """Create `workdir` if needed; one clear error if it is a file or not writable."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"--workdir={workdir} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"--workdir={workdir} cannot be created: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir={workdir} is not writable")
    return path


class Lock:
    """Advisory exclusive lock on `<workdir>/.lock`; the file records the holder."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self.fd: int | None = None

    def acquire(self) -> Lock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.read(fd, 256).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirError(
                f"{os.path.dirname(self.path)} is in use by a training run ({holder}); "
                "wait for it, or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _safe(field: str) -> bool:
    return field.split(".")[0] in SAFE_SECTIONS or field in SAFE_FIELDS


def config_diff(old: dict, new: dict) -> dict[str, tuple]:
    """{field: (old, new)} for every field whose value differs (missing = None)."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_config(workdir: str, config, step: int | None) -> dict[str, tuple]:
    """Refuse a config whose parameter-shaping fields differ from the run's `config.json`.

    Returns the (safe) differences. Only checked when the workdir holds checkpoints (`step`
    not None): a workdir without any may start afresh with any config. `optimizer.grad_clip`
    is safe unless it switches clipping on or off (that changes the optimizer state).
    """
    path = os.path.join(workdir, "config.json")
    if step is None or not os.path.exists(path):
        return {}
    with open(path) as f:
        old = json.load(f)
    new = json.loads(config.to_json_best_effort())
    diff = config_diff(old, new)
    unsafe = [k for k in diff if not _safe(k)]
    clip = diff.get("optimizer.grad_clip")
    if clip and bool(clip[0]) != bool(clip[1]):
        unsafe.append("optimizer.grad_clip")
    elif clip:
        unsafe = [k for k in unsafe if k != "optimizer.grad_clip"]
    noise = diff.get("objective.noise_dist")
    if noise and "adaptive" in noise:  # the adaptive p(λ) lives in the optimizer state
        unsafe.append("objective.noise_dist")
    if unsafe:
        listed = ", ".join(f"{k} {diff[k][0]!r} → {diff[k][1]!r}" for k in unsafe)
        raise WorkdirError(
            f"{workdir} holds a run (step {step}) with a different model: {listed}; "
            "use a new --workdir, or --reset to start this one afresh"
        )
    return diff


def record_config(workdir: str, config, step: int, diff: dict) -> None:
    """Write `config.json` (atomically) and append the change to `config_history.jsonl`."""
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, path)
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step}
    entry["changes"] = {k: [v[0], v[1]] for k, v in diff.items()}
    with open(os.path.join(workdir, "config_history.jsonl"), "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


RESET_ENTRIES = (
    "checkpoints",
    "metrics.jsonl",
    "config.json",
    "config_history.jsonl",
    "eval_final.json",
    "samples",
    "tb",
)


def reset(workdir: str) -> None:
    """Move everything a previous run wrote into `workdir/reset_<time>/`: nothing is deleted."""
    present = [e for e in os.listdir(workdir) if e in RESET_ENTRIES or e.startswith("eval_step_")]
    if not present:
        return
    dest = os.path.join(workdir, time.strftime("reset_%Y%m%d_%H%M%S"))
    os.makedirs(dest)
    for e in present:
        os.replace(os.path.join(workdir, e), os.path.join(dest, e))
    print(f"vdm: --reset moved the previous run to {dest}", flush=True)
