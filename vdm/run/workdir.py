"""A run directory: checked before anything is written, locked while a run trains in it.

`prepare` makes sure `--workdir` is a writable directory (or a reachable gs:// URL); the lock
a training run holds is vdm/run/lock.py. Every file goes through vdm/storage.py. A workdir
owns its run: `config.json` holds the config it trains with, `config_history.jsonl` every
accepted change; `run_config` gives eval, sample and compress the run's own config (their
sections from the command line); `mismatch_error` names the fields that differ when a
checkpoint does not fit a config; `reset` moves a previous run aside (never deletes it).
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from vdm import signals, storage

# The sections eval, sample and compress take from the command line; everything else comes
# from the run's config.json (data locations are the machine's, not the run's).
COMMAND_SECTIONS = ("eval", "sample", "compress")
# Fields that say how this machine runs the model, not what the run is: the command's own.
COMMAND_FIELDS = (
    "data.data_dir",
    "data.download",
    "data.mirror",
    "data.verify",
    "model.scan_blocks",
)


class WorkdirError(RuntimeError):
    """A workdir that cannot be used as asked; the message says why and what to do."""


class WriteError(OSError):
    """A file of the run that could not be written (disk full, permission, quota)."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def write_atomic(path: str, text: str) -> None:
    """Write `path` whole (vdm/storage.py: locally a temporary file, fsync and a rename; on
    Cloud Storage one object put): a reader sees the old file or the new one, never a half; a
    failed write leaves the old file and no temporary behind."""
    with writing(path):
        storage.makedirs(storage.dirname(path))
        storage.write_text(path, text)


def unused_path(path: str) -> str:
    """`path`, or `stem_1.ext`, `stem_2.ext`, … if it exists: a result is never replaced."""
    stem, ext = os.path.splitext(path)
    k = 1
    while storage.exists(path):
        path, k = f"{stem}_{k}{ext}", k + 1
    return path


@contextlib.contextmanager
def writing(path: str):
    """Name `path` in any OSError raised while writing it (a failed write() names no file);
    a signal lets the write finish before it ends the process (vdm/signals.py)."""
    try:
        with signals.writing(path):
            yield
    except (WriteError, storage.StorageError):
        raise  # already names the path
    except OSError as e:
        raise WriteError(e.errno, e.strerror or str(e), str(path)) from None


def prepare(workdir: str) -> str:
    """Create `workdir` if needed; one clear error if it is a file or not writable. A gs://
    URL is checked in one request (vdm/storage.py) and needs no folder."""
    if storage.is_url(workdir):
        storage.check_access(workdir)
        return storage.abspath(workdir)
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


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old: dict, new: dict) -> dict[str, tuple]:
    """{field: (old, new)} for every field whose value differs (missing = None)."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def read_config(workdir: str) -> dict | None:
    """The run's `config.json` as a dict, or None if the workdir has none."""
    path = storage.join(workdir, "config.json")
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        return None
    except storage.StorageError:
        raise
    except (OSError, ValueError) as e:
        raise WorkdirError(f"{path} cannot be read ({e}); pass --reset to start afresh") from None


def changed_fields(workdir: str, config) -> dict[str, tuple]:
    """The fields of `config` that differ from the run's `config.json` (empty without one).

    Whether a change is safe to resume with is decided by structure, not by field names: the
    checkpoint's tree is compared with the one `config` builds (vdm/run/checkpoint.py).
    """
    old = read_config(workdir)
    return {} if old is None else config_diff(old, json.loads(config.to_json_best_effort()))


# Sections whose fields never shape the train state: left out when a mismatch names fields.
NEVER_SHAPE_STATE = ("training", "eval", "sample", "compress")


def mismatch_error(workdir: str, config, err, resume: bool = True) -> WorkdirError:
    """One line for a checkpoint whose tree does not fit `config`: what differs in the tree,
    the config fields outside `NEVER_SHAPE_STATE` that differ from the run's `config.json`,
    and the way out."""
    shown = "; ".join(err.differences[:2]) + (" …" if len(err.differences) > 2 else "")
    diff = {
        k: v for k, v in changed_fields(workdir, config).items()
        if k.split(".")[0] not in NEVER_SHAPE_STATE
    }  # fmt: skip
    fields = ", ".join(f"{k} {v[0]!r} → {v[1]!r}" for k, v in diff.items())
    why = (
        f"the config differs from its config.json in {fields}"
        if diff
        else ("no config field differs from its config.json (the code or the data changed?)")
    )
    way = (
        "use a new --workdir, or --reset to start this one afresh"
        if resume
        else ("evaluate it with the code it was trained with")
    )
    return WorkdirError(
        f"{workdir} holds a run (step {err.step}) that does not fit: {why}; its checkpoint "
        f"holds another state ({shown}); {way}"
    )


def run_config(workdir: str, config):
    """`config` with every field the run recorded in `config.json` put back, except the
    sections `COMMAND_SECTIONS` and fields `COMMAND_FIELDS`; and the fields it ignored.

    eval, sample, compress and decompress use this: a workdir knows what it trained. Fields
    the code has gained since the run keep their defaults; fields it no longer has are dropped.
    """
    old = read_config(workdir)
    if old is None:
        return config, {}
    merged = config.copy_and_resolve_references()
    ignored = {}
    recorded = _flatten(old)
    current = _flatten(json.loads(config.to_json_best_effort()))
    with merged.unlocked():
        for field, value in recorded.items():
            if field.split(".")[0] in COMMAND_SECTIONS or field in COMMAND_FIELDS:
                continue
            if field not in current:
                continue
            if current[field] != value:
                ignored[field] = (current[field], value)
                _set(merged, field, value)
    return merged, ignored


def _set(config, field: str, value) -> None:
    *path, leaf = field.split(".")
    node = config
    for k in path:
        node = node[k]
    if isinstance(node[leaf], tuple) and isinstance(value, list):
        value = tuple(value)
    node[leaf] = value


def record_config(workdir: str, config, step: int, diff: dict) -> None:
    """Write `config.json` (atomically) and append the change to `config_history.jsonl` (on
    Cloud Storage, which has no append, the history rewritten whole: it is small)."""
    write_atomic(storage.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step}
    entry["changes"] = {k: [v[0], v[1]] for k, v in diff.items()}
    line = json.dumps(entry, default=str) + "\n"
    history = storage.join(workdir, "config_history.jsonl")
    if storage.is_url(history):
        try:
            before = storage.read_text(history)
        except FileNotFoundError:
            before = ""
        write_atomic(history, before + line)
        return
    with writing(history), open(history, "a") as f:
        f.write(line)


RESET_ENTRIES = (
    "checkpoints",
    "metrics.jsonl",
    "metrics",  # a gs:// run's numbered metric parts
    "config.json",
    "config_history.jsonl",
    "eval_final.json",
    "eval_records",
    "samples",
    "tb",
)


def reset(workdir: str) -> None:
    """Move everything a previous run wrote into `workdir/reset_<time>/`: nothing is deleted."""
    present = [
        e for e in storage.listdir(workdir) if e in RESET_ENTRIES or e.startswith("eval_step_")
    ]
    if not present:
        return
    stem, k = storage.join(workdir, time.strftime("reset_%Y%m%d_%H%M%S")), 1
    dest = stem
    while storage.exists(dest):  # an earlier reset in the same second: never merged into
        dest, k = f"{stem}_{k}", k + 1
    with signals.writing(dest):  # a signal waits: the run is never left half moved
        storage.makedirs(dest)
        for e in present:  # on Cloud Storage: each object copied, then deleted
            storage.move(storage.join(workdir, e), storage.join(dest, e))
    print(f"vdm: --reset moved the previous run to {dest}", flush=True)
