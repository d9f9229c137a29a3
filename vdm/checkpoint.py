"""Checkpoints with orbax's CheckpointManager: periodic saves, max_to_keep, auto-resume.

orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoints intact and the partial one is never restored. Restore
walks back: a step that cannot be read (any orbax/tensorstore error, a missing file, an empty
step directory) is reported in one line, moved aside to `checkpoints/corrupt/<step>` (never
deleted), and the next older one is tried. Only healthy states are ever saved (vdm/health.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import threading
import time

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """The checkpoints of one run, under `<workdir>/checkpoints`."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.max_to_keep = max_to_keep
        self.manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """Every step orbax lists, plus any stray step directory (e.g. an empty one)."""
        on_disk = set()
        if os.path.isdir(self.directory):
            on_disk = {int(d) for d in os.listdir(self.directory) if d.isdigit()}
        return sorted(set(self.manager.all_steps()) | on_disk)

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, abstract_state, step: int | None = None):
        """Restore `step`, or the newest readable step, into the structure and shardings given."""
        steps = self.steps()
        if step is not None:
            if step not in steps:
                listed = ", ".join(map(str, steps)) or "none"
                raise FileNotFoundError(
                    f"no checkpoint step {step} in {self.directory} (steps: {listed})"
                )
            try:
                return self._restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any reader error means "unreadable"
                raise FileNotFoundError(
                    f"checkpoint step {step} in {self.directory} is unreadable: {_why(e)}"
                ) from None
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        # When a read fails, tensorstore's other pending reads call back into orbax's closed
        # event loop and print tracebacks, some after the next restore has begun: stderr is
        # held for the whole walk and, if anything failed, replaced by one line per step.
        held, failed, restored = io.StringIO(), [], None
        with contextlib.redirect_stderr(held):
            for s in reversed(steps):
                try:
                    restored = self._restore(s, abstract_state)
                    break
                except Exception as e:  # noqa: BLE001 - walk back past any damage
                    failed.append((s, _why(e), self._move_aside(s)))
                    _silence_abandoned_reads()
            if failed:
                _wait_until_quiet(held)  # let the abandoned reads finish into the held buffer
        if not failed:
            sys.stderr.write(held.getvalue())
        elif jax.process_index() == 0:
            for s, why, dest in failed:
                print(
                    f"warning: checkpoint step {s} in {self.directory} is unreadable ({why}); "
                    f"moved to {dest}, restoring the previous one",
                    file=sys.stderr,
                    flush=True,
                )
        if restored is None:
            raise FileNotFoundError(
                f"no readable checkpoint in {self.directory} (damaged steps moved to corrupt/)"
            )
        return restored

    def _restore(self, step: int, abstract_state):
        problem = _structural_problem(os.path.join(self.directory, str(step)))
        if problem or step not in self.manager.all_steps():
            raise FileNotFoundError(problem or "an incomplete step directory")
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def _move_aside(self, step: int) -> str:
        dest = os.path.join(self.directory, "corrupt", str(step))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            k = 1
            while os.path.exists(dest):
                dest, k = os.path.join(self.directory, "corrupt", f"{step}.{k}"), k + 1
            shutil.move(os.path.join(self.directory, str(step)), dest)
        # A failed restore can leave the manager's handler state unusable for the next step:
        # start from a fresh one rather than reloading.
        self.manager.close()
        self.manager = self._new_manager()
        return dest

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _silence_abandoned_reads() -> None:
    """After a failed read, tensorstore's other pending reads fail later, on orbax's threads:
    their reports (asyncio / futures loggers, thread exceptions raised from orbax code) are
    not the user's business: the walk-back already said which step was unreadable."""
    for name in ("asyncio", "concurrent.futures"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Thread exceptions, and "Exception ignored in: <coroutine …>" reports of abandoned read
    # coroutines finalised later (sys.unraisablehook, which bypasses logging), from orbax.
    threading.excepthook = _quiet_hook(threading.excepthook)
    sys.unraisablehook = _quiet_hook(sys.unraisablehook)


def _from_orbax(args) -> bool:
    tb = args.exc_traceback
    while tb is not None:
        if "orbax" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return "orbax" in repr(getattr(args, "object", "")) or "_read_array" in str(args.exc_value)


def _quiet_hook(original):
    """`original`, except that reports of exceptions raised from orbax code are dropped."""
    if getattr(original, "_vdm_quiet", False):
        return original

    def hook(args):
        if not _from_orbax(args):
            original(args)

    hook._vdm_quiet = True
    return hook


def _wait_until_quiet(buffer: io.StringIO, quiet_s: float = 0.5, limit_s: float = 10.0) -> None:
    """Wait until nothing new has been written to `buffer` for `quiet_s` (at most `limit_s`):
    a fixed sleep loses the race on a loaded machine."""
    deadline, size = time.monotonic() + limit_s, -1
    while time.monotonic() < deadline and buffer.tell() != size:
        size = buffer.tell()
        time.sleep(quiet_s)


def _structural_problem(step_dir: str) -> str | None:
    """A missing or garbled file that orbax would only discover mid-read, or None.

    Checked before orbax reads the step, so a damaged checkpoint fails fast and cleanly
    instead of inside tensorstore's concurrent reads.
    """
    if not os.path.isdir(step_dir) or not os.listdir(step_dir):
        return "an empty step directory"
    if not os.path.exists(os.path.join(step_dir, "_CHECKPOINT_METADATA")):
        return "no _CHECKPOINT_METADATA"
    for item in sorted(os.listdir(step_dir)):
        item_dir = os.path.join(step_dir, item)
        if not os.path.isdir(item_dir):
            continue
        meta = os.path.join(item_dir, "_METADATA")
        if not os.path.exists(meta):
            return f"no {item}/_METADATA"
        try:
            with open(meta) as f:
                json.load(f)
        except (OSError, ValueError):
            return f"a garbled {item}/_METADATA"
        if os.path.isdir(os.path.join(item_dir, "d")) and not os.path.exists(
            os.path.join(item_dir, "manifest.ocdbt")
        ):
            return f"no {item}/manifest.ocdbt"
    return None


def _why(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:160]}"


def resolve(path: str) -> tuple[str, int | None]:
    """`--checkpoint=PATH` → (directory, step): a workdir, its checkpoints/, or one step."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), None
    base = os.path.basename(path.rstrip("/"))
    if base.isdigit() and os.path.isdir(os.path.dirname(path)):
        return os.path.dirname(path), int(base)
    if os.path.isdir(path):
        return path, None
    raise FileNotFoundError(f"--checkpoint={path}: no such checkpoint directory")


def abstract_like(tree, sharding):
    """ShapeDtypeStructs with `sharding`, the restore target for `tree`'s structure."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
