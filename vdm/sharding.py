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
