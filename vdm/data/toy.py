"""Generated 2-D data: the official colab's swirl (integers), a spiral and a Gaussian ring
(continuous, in [−1, 1]²; vdm/data/datasets.py bins them with the bin-centre encoding)."""

from __future__ import annotations

import numpy as np

SWIRL_N = 1024


def swirl_official(n: int = SWIRL_N, seed: int = 0) -> np.ndarray:
    """The 8-bit 2-D swirl of the official VDM colab (google-research/vdm, 2D_VDM_Example).

    numpy's legacy RNG seeded with `seed`; θ = √U · 3π (the n uniforms drawn first),
    r = 2θ + π, x = 4 (r (cos θ, sin θ) + 0.25 N(0, I) + 30), cast to uint8 (truncation, as the
    colab's astype). With n = 1024, seed = 0 these are the colab's points, bit for bit.
    """
    rng = np.random.RandomState(seed)
    theta = np.sqrt(rng.rand(n)) * 3 * np.pi
    r = 2 * theta + np.pi
    x = np.array([np.cos(theta) * r, np.sin(theta) * r]).T
    x = 4 * (x + 0.25 * rng.randn(n, 2) + 30)
    return x.astype("uint8")


def spiral(n: int, seed: int) -> np.ndarray:
    """A noisy spiral arm in [−1, 1]² (the project's own generator, not the colab's swirl)."""
    rng = np.random.default_rng(seed)
    theta = 3.0 * np.pi * np.sqrt(rng.uniform(size=n))
    r = 0.15 + 0.75 * theta / (3.0 * np.pi)
    xy = np.stack([r * np.cos(theta), r * np.sin(theta)], -1)
    return xy + 0.02 * rng.normal(size=xy.shape)


def gaussian_mixture(n: int, seed: int, k: int = 8, radius: float = 0.6, std: float = 0.05):
    """k isotropic Gaussians evenly spaced on a circle in [−1, 1]²."""
    rng = np.random.default_rng(seed)
    comp = rng.integers(k, size=n)
    angle = 2 * np.pi * comp / k
    centres = radius * np.stack([np.cos(angle), np.sin(angle)], -1)
    return centres + std * rng.normal(size=(n, 2))
