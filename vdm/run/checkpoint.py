"""Checkpoints with orbax's CheckpointManager: periodic saves, rotation, auto-resume.

orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoints intact and the partial one is never restored.

Restore tells damage from a mismatch. Before reading a step's arrays, its tree metadata
(paths, shapes, dtypes) is compared with the state the config builds: a difference is a
`StructureMismatch` (nothing is moved: the checkpoint is fine, the config is not the run's).
A step that is proven unreadable (a missing or garbled file, a short or undecodable array) is
skipped with one line and the next older one is tried; once an older one has restored, the
damaged newer ones are moved to `checkpoints/corrupt/<step>` (never deleted) by the process
that trains (`move_damaged`; eval and sample read a live run and move nothing). If no step
restores, nothing is moved. A failure that is not damage (memory, a transient storage error)
is a `RestoreError` and moves nothing. With several processes, process 0 names each step to
try, every process checks it, all read it only if all found it sound, and it is taken only if
all read it, so all restore the same one.

Rotation keeps the newest `max_to_keep` steps and the step with the best eval bpd
(`record_eval`, kept in `checkpoints/best.json`). A save that fails (disk full, permission,
quota) is one `CheckpointWriteError` naming the path; orbax's threads print nothing.
Only healthy states are ever saved (vdm/run/health.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from vdm import sharding, storage
from vdm.run import orbax_quiet
from vdm.run.tree_signature import signature, tree_differences


class StructureMismatch(ValueError):
    """A readable checkpoint whose tree differs from the state the config builds."""

    def __init__(self, step: int, differences: list[str]):
        self.step, self.differences = step, differences
        shown = "; ".join(differences[:4]) + (" …" if len(differences) > 4 else "")
        super().__init__(f"checkpoint step {step} holds a different state: {shown}")


class CheckpointWriteError(OSError):
    """A save that could not be written; the earlier checkpoints are untouched."""


class UnreadableCheckpoint(FileNotFoundError):
    """No step could be restored; the message says which and why."""


class RestoreError(RuntimeError):
    """A restore that failed for a reason other than damage; nothing was moved."""


# What tensorstore and orbax say about files that are missing, short or garbled. Anything
# else (RESOURCE_EXHAUSTED, UNAVAILABLE, a sharding error, MemoryError) is not damage.
_DAMAGE_SIGNS = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "checksum", "corrupt", "Error reading")
_TRANSIENT_SIGNS = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED")


def _is_damage(e: BaseException) -> bool:
    """Whether a failed read proves the step's files damaged (missing, short, garbled)."""
    if isinstance(e, FileNotFoundError | json.JSONDecodeError):
        return True
    if isinstance(e, MemoryError):
        return False
    text = str(e)
    return not any(t in text for t in _TRANSIENT_SIGNS) and any(d in text for d in _DAMAGE_SIGNS)


class _LatestAndBest(preservation_policy.PreservationPolicy):
    """orbax's rotation: the newest `n` steps, and the step pinned as the best."""

    def __init__(self, n: int, best_step: int | None):
        self.n, self.best_step = n, best_step

    def should_preserve(self, checkpoints, *, context):
        k = len(checkpoints)
        return [i >= k - self.n or c.step == self.best_step for i, c in enumerate(checkpoints)]


class Checkpointer:
    """The checkpoints of one run, under `<workdir>/checkpoints`."""

    def __init__(self, directory: str, max_to_keep: int = 3, move_damaged: bool = True):
        self.directory = storage.abspath(directory)
        self.max_to_keep = max_to_keep
        # Only the process that trains (and holds the workdir's lock) moves damaged steps:
        # eval and sample read a live run and skip them.
        self.move_damaged = move_damaged
        self.best = _read_json(storage.join(self.directory, "best.json"))
        self.policy = _LatestAndBest(max_to_keep, self.best.get("step"))
        self._saving: int | None = None  # the step of a save that may still be in flight
        # From here on, orbax's background threads print nothing (absl records, thread
        # exceptions, asyncio reports from orbax code): their failures are raised in the main
        # thread by save / wait / restore, and reported there in one line.
        orbax_quiet.silence_abandoned_reads()
        self.manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(preservation_policy=self.policy, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """Every step orbax lists, plus any stray step directory (e.g. an empty one)."""
        on_disk = set()
        on_disk = {int(d) for d in storage.listdir(self.directory) if d.isdigit()}
        return sorted(set(self.manager.all_steps()) | on_disk)

    # ---- saving ----

    def save(self, step: int, state) -> None:
        """Save `step` (asynchronously); an error of this or the previous save is one
        `CheckpointWriteError` line."""
        with _quiet_writes(self.directory, self._saving or step):
            self.manager.save(step, args=ocp.args.StandardSave(state))
        self._saving = step

    def wait(self) -> None:
        """Block until every save is on disk; a failed one raises `CheckpointWriteError`."""
        with _quiet_writes(self.directory, self._saving):
            self.manager.wait_until_finished()
        self._saving = None

    def record_eval(self, step: int, bpd: float) -> bool:
        """Pin `step` against rotation if its eval bpd is the best so far; True if it is."""
        if not np.isfinite(bpd) or ("bpd" in self.best and self.best["bpd"] <= bpd):
            return False
        self.wait()  # pin only a step that is on disk
        self.best = {"step": int(step), "bpd": float(bpd)}
        self.policy.best_step = int(step)
        if jax.process_index() == 0:
            _write_json(storage.join(self.directory, "best.json"), self.best)
        return True

    def _step_dir(self, step: int) -> str:
        return storage.join(self.directory, str(step))

    # ---- restoring ----

    def restore(self, abstract_state, step: int | None = None):
        """Restore `step`, or the newest readable step, into the structure and shardings given.

        Raises `StructureMismatch` (nothing moved) when a readable step holds a different tree,
        `UnreadableCheckpoint` when no step can be read (nothing moved), `RestoreError` for a
        failure that is not damage (memory, a transient storage error; nothing moved).
        """
        steps = self.steps()
        if step is not None:
            if step not in steps:
                listed = ", ".join(map(str, steps)) or "none"
                raise FileNotFoundError(
                    f"no checkpoint step {step} in {self.directory} (steps: {listed})"
                )
            self.check_structure(step, abstract_state)
            try:
                return self._restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - one line, whatever the reader raised
                raise UnreadableCheckpoint(
                    f"checkpoint step {step} in {self.directory} is unreadable: {_why(e)}"
                ) from None
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        # When a read fails, tensorstore's other pending reads call back into orbax's closed
        # event loop and print tracebacks, some after the next restore has begun: stderr is
        # held for the whole walk and, if anything failed, replaced by one line per step.
        held, self._read_failures = io.StringIO(), 0
        with contextlib.redirect_stderr(held):
            try:
                restored, failed = self._walk_back(steps, abstract_state)
            finally:
                if self._read_failures:  # let abandoned reads finish into the held buffer
                    orbax_quiet.wait_until_quiet(held)
        if not self._read_failures:
            sys.stderr.write(held.getvalue())
        if not restored and failed:
            listed = ", ".join(str(f[0]) for f in failed)
            raise UnreadableCheckpoint(
                f"no readable checkpoint in {self.directory}: step(s) {listed} unreadable "
                f"(step {failed[-1][0]}: {failed[-1][1]}); nothing was moved"
            )
        if jax.process_index() == 0:
            for s, why, dest in failed:
                done = f"moved to {dest}" if dest else "left in place (training moves it aside)"
                print(
                    f"warning: checkpoint step {s} in {self.directory} is unreadable ({why}); "
                    f"{done}; restored step {int(restored[1])} instead",
                    file=sys.stderr,
                    flush=True,
                )
        return restored[0]

    def _walk_back(self, steps: list[int], abstract_state):
        """Newest first: process 0 names a step, every process checks it, all read it only if
        all found it sound, and it is taken only if all read it. The damaged newer steps are
        moved aside (process 0, with `move_damaged`) only once an older one has restored.
        → ((state, step) or None, [(step, why, moved to or None)])."""
        failed, remaining = [], list(steps)
        while remaining:
            s, why = self._choose(remaining, abstract_state)
            if sharding.all_agree(why is None):
                try:
                    state = self._restore(s, abstract_state)
                except Exception as e:  # noqa: BLE001 - sorted into damage or not below
                    if not _is_damage(e):
                        raise RestoreError(
                            f"checkpoint step {s} in {self.directory} could not be restored "
                            f"({_why(e)}); this does not look like damage, so nothing was moved"
                        ) from None
                    why = _why(e)
                    self._read_failures += 1
                    orbax_quiet.after_a_failure()
                    self._renew_manager()  # a failed read can leave it unusable
                if sharding.all_agree(why is None):
                    moved = [(f, w, self._move_aside(f)) for f, w in failed]
                    return (state, s), moved
            failed.append((s, why or "unreadable on another process"))
            remaining.remove(s)
        return None, [(f, w, None) for f, w in failed]

    def _choose(self, remaining: list[int], abstract_state) -> tuple[int, str | None]:
        """Process 0's candidate (the newest remaining step) and what is wrong with it before
        any array is read (None: fine so far). A tree mismatch raises on every process."""
        s = int(sharding.from_process_0(remaining[-1]))
        problem = _structural_problem(self._step_dir(s))
        if problem is None and s not in self.manager.all_steps():
            problem = "an incomplete step directory"
        mismatch = None
        if problem is None:
            try:
                mismatch = self.compare(s, abstract_state)
            except Exception as e:  # noqa: BLE001 - metadata that cannot be read is damage
                problem = f"unreadable tree metadata ({_why(e)})"
        if sharding.any_true(bool(mismatch)):
            raise StructureMismatch(s, mismatch or ["differs on another process"])
        return s, problem

    def check_structure(self, step: int, abstract_state) -> None:
        """Raise `StructureMismatch` if `step`'s tree differs from `abstract_state`'s."""
        try:
            differences = self.compare(step, abstract_state)
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore will say so
            return
        if differences:
            raise StructureMismatch(step, differences)

    def compare(self, step: int, abstract_state) -> list[str]:
        """The differences between `step`'s saved tree (paths, shapes, dtypes) and
        `abstract_state`'s, one line each; empty when they match."""
        return tree_differences(self.saved_signature(step), signature(abstract_state))

    def saved_signature(self, step: int) -> dict[str, tuple]:
        """{path: (shape, dtype)} of `step`, from its metadata (no array is read).

        The paths come from the step's `_METADATA` file; shapes and dtypes from orbax's
        metadata reader, which reads the arrays' headers: a path it cannot describe means
        damaged array files (raised, so the step counts as unreadable), not another tree."""
        item = storage.join(self._step_dir(step), "default")
        tree = json.loads(storage.read_text(storage.join(item, "_METADATA")))["tree_metadata"]
        saved = [
            "/".join(str(k["key"]) for k in v["key_metadata"])
            for v in tree.values()
            if not v["value_metadata"].get("skip_deserialize")  # None, empty dicts
        ]
        with contextlib.redirect_stderr(io.StringIO()):
            described = signature(ocp.StandardCheckpointer().metadata(item).item_metadata)
        missing = sorted(set(saved) - set(described))
        if missing:
            raise FileNotFoundError(f"no array metadata for {missing[0]} ({len(missing)} in all)")
        return {p: described[p] for p in saved}

    def _restore(self, step: int, abstract_state):
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def _move_aside(self, step: int) -> str | None:
        """Move a damaged step to `corrupt/` (never deleted); None without `move_damaged`."""
        if not self.move_damaged:
            return None
        dest = storage.join(self.directory, "corrupt", str(step))
        if jax.process_index() == 0:
            storage.makedirs(storage.dirname(dest))
            k = 1
            while storage.exists(dest):
                dest, k = storage.join(self.directory, "corrupt", f"{step}.{k}"), k + 1
            storage.move_tree(self._step_dir(step), dest)
            if self.best.get("step") == step:  # pin the next best eval instead
                self.best, self.policy.best_step = {}, None
                storage.remove(storage.join(self.directory, "best.json"))
        sharding.barrier(f"vdm-moved-{step}")
        self._renew_manager()
        return dest

    def _renew_manager(self) -> None:
        self.manager.close()
        self.manager = self._new_manager()

    def close(self) -> None:
        with _quiet_writes(self.directory):
            self.manager.close()


@contextlib.contextmanager
def _quiet_writes(directory: str, step: int | None = None):
    """orbax/tensorstore errors of a save → one `CheckpointWriteError` naming the step's
    path and the OS's reason; their threads' reports are dropped (vdm/run/orbax_quiet.py)."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    except CheckpointWriteError:
        raise
    except Exception as e:  # noqa: BLE001 - orbax wraps OSErrors in several types
        path, reason = orbax_quiet.failed_write(e, directory, step)
        cause = storage.network_cause(e) if storage.is_url(directory) else None
        if cause is not None:  # the run ends at once (vdm/run/train.py): no wait for orbax
            orbax_quiet.after_a_failure()
            raise storage.StorageError(
                f"cannot save the checkpoint {path}: Cloud Storage cannot be reached ({cause}); "
                "the earlier checkpoints are intact"
            ) from None
        if reason is None:  # not an I/O failure: a bug, whose traceback is the report
            sys.stderr.write(held.getvalue())
            raise
        orbax_quiet.after_a_failure()
        raise CheckpointWriteError(
            f"cannot save the checkpoint {path}: {reason}; the earlier checkpoints are intact"
        ) from None
    sys.stderr.write(held.getvalue())


def _read_json(path: str) -> dict:
    try:
        return json.loads(storage.read_text(path))
    except (OSError, ValueError):
        return {}


def _write_json(path: str, obj) -> None:
    storage.makedirs(storage.dirname(path))
    storage.write_bytes(path, json.dumps(obj).encode())


def _structural_problem(step_dir: str) -> str | None:
    """A missing or garbled file that orbax would only discover mid-read, or None.

    Checked before orbax reads the step, so a damaged checkpoint fails fast and cleanly
    instead of inside tensorstore's concurrent reads.
    """
    entries = storage.listdir(step_dir)
    if not entries:
        return "an empty step directory"
    if "_CHECKPOINT_METADATA" not in entries:
        return "no _CHECKPOINT_METADATA"
    for item in entries:
        item_dir = storage.join(step_dir, item)
        if not storage.isdir(item_dir):
            continue
        inside = storage.listdir(item_dir)
        if "_METADATA" not in inside:
            return f"no {item}/_METADATA"
        try:
            json.loads(storage.read_text(storage.join(item_dir, "_METADATA")))
        except (OSError, ValueError):
            return f"a garbled {item}/_METADATA"
        if "d" in inside and "manifest.ocdbt" not in inside:
            return f"no {item}/manifest.ocdbt"
    return None


def _why(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:160]}"


def resolve(path: str) -> tuple[str, int | None]:
    """`--checkpoint=PATH` → (directory, step): a workdir, its checkpoints/, or one step."""
    path = storage.abspath(path)
    if storage.isdir(storage.join(path, "checkpoints")):
        return storage.join(path, "checkpoints"), None
    base = path.rstrip("/").rsplit("/", 1)[-1]
    if base.isdigit() and storage.isdir(storage.dirname(path)):
        return storage.dirname(path), int(base)
    if storage.isdir(path):
        return path, None
    raise FileNotFoundError(f"--checkpoint={path}: no such checkpoint directory")
