"""Shared network layers (vdm/networks/layers.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from vdm.networks.layers import fourier_features


def test_fourier_features_values_and_shape():
    z = jnp.array([[[0.25, -0.5, 0.125]]])  # (1, 1, 3): any leading shape, channels last
    h = fourier_features(z, 6, 8)
    assert h.shape == (1, 1, 3 * 3 * 2)
    n = np.arange(6, 9)
    expect_sin = np.sin(2.0**n * np.pi * np.asarray(z)[..., None]).reshape(1, 1, -1)
    np.testing.assert_allclose(h[..., :9], expect_sin, atol=1e-4)
    np.testing.assert_allclose(h[..., :9] ** 2 + h[..., 9:] ** 2, 1.0, atol=1e-5)


def test_fourier_features_resolve_adjacent_8bit_bins():
    """Neighbouring 8-bit bin centres (2/256 apart) differ strongly at n = 7 (period 1/64)."""
    a, b = jnp.array([[0.0]]), jnp.array([[2.0 / 256]])
    gap = jnp.abs(fourier_features(a, 7, 7) - fourier_features(b, 7, 7)).max()
    assert gap > 0.5


def test_fourier_bad_range_is_a_clear_error():
    with pytest.raises(ValueError, match="model.fourier_max must be >= model.fourier_min"):
        fourier_features(jnp.zeros((1, 1)), 8, 7)
