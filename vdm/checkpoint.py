"""Checkpoints with orbax's CheckpointManager: periodic saves, max_to_keep, auto-resume.

orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoints intact and the partial one is never restored.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """The checkpoints of one run, under `<workdir>/checkpoints`."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, abstract_state, step: int | None = None):
        """Restore `step` (default: the latest) into the structure and shardings given."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def resolve(path: str) -> tuple[str, int | None]:
    """`--checkpoint=PATH` → (directory, step): a workdir, its checkpoints/, or one step."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), None
    base = os.path.basename(path.rstrip("/"))
    if base.isdigit():
        return os.path.dirname(path), int(base)
    if os.path.isdir(path):
        return path, None
    raise FileNotFoundError(f"--checkpoint={path}: no such checkpoint directory")


def abstract_like(tree, sharding):
    """ShapeDtypeStructs with `sharding`, the restore target for `tree`'s structure."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
