"""vdm/core/draws.py: the same values as jax.random's, drawn flat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.core import draws

SHAPES = [(), (5,), (5, 7), (2, 3, 4), (3, 4, 4, 3)]


@pytest.mark.parametrize("shape", SHAPES)
def test_each_draw_is_jax_randoms_bit_for_bit(shape):
    key = jax.random.key(3)
    pairs = [
        (draws.normal(key, shape), jax.random.normal(key, shape)),
        (draws.normal(key, shape, jnp.bfloat16), jax.random.normal(key, shape, jnp.bfloat16)),
        (draws.uniform(key, shape), jax.random.uniform(key, shape)),
        (
            draws.uniform(key, shape, minval=-1.0, maxval=1.0),
            jax.random.uniform(key, shape, minval=-1.0, maxval=1.0),
        ),
        (draws.rademacher(key, shape), jax.random.rademacher(key, shape)),
        (draws.gumbel(key, shape), jax.random.gumbel(key, shape)),
    ]
    for got, want in pairs:
        assert got.shape == want.shape == shape and got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_the_same_under_jit_and_vmap_over_keys():
    keys = jax.random.split(jax.random.key(0), 4)
    got = jax.jit(jax.vmap(lambda k: draws.normal(k, (4, 4, 3))))(keys)
    want = jax.vmap(lambda k: jax.random.normal(k, (4, 4, 3)))(keys)
    np.testing.assert_array_equal(got, want)


def test_an_image_batch_draw_compiles_without_one_iota_per_axis():
    """The reason for the module: the flat draw's program has a single iota."""
    shape = (8, 32, 32, 3)
    ours = jax.jit(lambda k: draws.normal(k, shape)).lower(jax.random.key(0)).as_text()
    theirs = jax.jit(lambda k: jax.random.normal(k, shape)).lower(jax.random.key(0)).as_text()
    assert ours.count("iota") < theirs.count("iota")
