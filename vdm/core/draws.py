"""Random draws of any shape, bit for bit `jax.random`'s, at a fraction of the compile time.

With jax's partitionable threefry (the default), a draw of a multi-dimensional shape counts
its elements with one iota per axis, and XLA:CPU takes seconds to compile that: 1.7 s for
the bits of an (8, 32, 32, 3) batch of images against 0.2 s for as many drawn flat
(docs/benchmarks.md#compile-time-and-memory-at-the-papers-size). A flat draw reshaped counts
the elements in the same row-major order, so the values are the same (tests/test_draws.py):
these functions draw flat and reshape.

In the train step on a mesh the flat draw is split like a per-axis one: with the batch
sharded, each device draws only its share (the compiled step on 2 CPU devices holds no
random bits of the whole batch's flat size; tests/two_devices.py,
experiments/benchmarks/check_sharding.py). The samplers' and the PF-ODE's draws are not
checked this way.
"""

from __future__ import annotations

import math

import jax


def _flat(shape) -> tuple[int]:
    return (math.prod(shape),)


def normal(key: jax.Array, shape, dtype=float) -> jax.Array:
    """`jax.random.normal(key, shape, dtype)`: ε ~ N(0, I)."""
    return jax.random.normal(key, _flat(shape), dtype).reshape(shape)


def uniform(key: jax.Array, shape, dtype=float, minval=0.0, maxval=1.0) -> jax.Array:
    """`jax.random.uniform(key, shape, dtype, minval, maxval)`: u ~ U[minval, maxval), for
    scalar bounds."""
    return jax.random.uniform(key, _flat(shape), dtype, minval, maxval).reshape(shape)


def rademacher(key: jax.Array, shape, dtype=int) -> jax.Array:
    """`jax.random.rademacher(key, shape, dtype)`: ±1 with probability ½ each."""
    return jax.random.rademacher(key, _flat(shape), dtype).reshape(shape)


def gumbel(key: jax.Array, shape, dtype=float) -> jax.Array:
    """`jax.random.gumbel(key, shape, dtype)`: standard Gumbel draws."""
    return jax.random.gumbel(key, _flat(shape), dtype).reshape(shape)
