"""The multi-device path: one Mesh over all devices, the batch sharded on 'data'.

The same code runs on one CPU and on a pod slice (after `jax.distributed.initialize()`): each
host passes its local slice of the global batch and jax assembles the global array.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Shard the batch axis (after `leading` unsharded axes, e.g. a steps-per-call axis)."""
    return NamedSharding(mesh, P(*([None] * leading), "data"))


def shard_batch(batch: dict, mesh: Mesh, leading: int = 0) -> dict:
    """Host-local numpy batch → global jax arrays sharded over the mesh's 'data' axis."""
    sharding = data_sharded(mesh, leading)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


# ---- Agreement between processes: every process calls these at the same point (no-ops with
# one process), so a decision one process makes is the one all act on. ----


def from_process_0(value: int) -> int:
    """Process 0's `value`, on every process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def gathered(value: int) -> np.ndarray:
    """Every process's integer `value`, in process order, on every process."""
    if jax.process_count() == 1:
        return np.asarray([value])
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.int32(value)))


def all_agree(ok: bool) -> bool:
    """True on every process if `ok` on every process."""
    return bool(np.all(gathered(int(ok))))


def any_true(flag: bool) -> bool:
    """True on every process if `flag` on any process."""
    return bool(np.any(gathered(int(flag))))


def barrier(name: str) -> None:
    """Wait until every process has reached `name`."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
