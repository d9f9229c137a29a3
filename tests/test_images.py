"""Sample grids people can read (vdm/data/images.py): tile size, gutters, captions, 2-D scatter."""

import numpy as np
import pytest
from PIL import Image

from vdm.core import elbo
from vdm.data import images


@pytest.mark.parametrize("hw", [8, 28, 32, 64])
def test_every_image_is_at_least_64_pixels_with_one_pixel_gutters(hw):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, hw, hw, 1))
    grid = images.image_grid(x, 256)
    s = int(np.ceil(64 / hw))
    tile = hw * s
    assert tile >= 64
    assert grid.shape == (2 * (tile + 1) + 1, 3 * (tile + 1) + 1)  # 5 images: 2 rows × 3 cols
    # gutters are white lines; each tile is its image upscaled by nearest neighbour
    assert np.all(grid[0] == 255) and np.all(grid[:, tile + 1] == 255)
    first = grid[1 : 1 + tile, 1 : 1 + tile]
    np.testing.assert_array_equal(first[::s, ::s], x[0, ..., 0].astype(np.uint8))
    np.testing.assert_array_equal(first, np.kron(x[0, ..., 0], np.ones((s, s))).astype(np.uint8))


def test_grey_levels_span_black_to_white_for_any_vocab():
    x = np.array([0, 16]).reshape(2, 1, 1, 1)
    grid = images.image_grid(x, 17, min_tile=1)
    assert grid[1, 1] == 0 and grid[1, 3] == 255


def test_caption_goes_under_the_grid(tmp_path):
    x, enc = np.zeros((4, 8, 8, 1), np.uint8), elbo.Encoding.bin_centres(17)
    plain = images.save_samples(str(tmp_path / "a.png"), x, enc)
    captioned = images.save_samples(str(tmp_path / "b.png"), x, enc, caption="ddim, 20 steps")
    a, b = np.asarray(Image.open(plain)), np.asarray(Image.open(captioned))
    assert b.shape[1] == a.shape[1] and b.shape[0] > a.shape[0]
    assert a.shape[0] >= 2 * 64  # 2 × 2 tiles of ≥ 64 px


def test_2d_samples_are_a_scatter_over_the_data(tmp_path):
    enc = elbo.Encoding.standardize(256, [100.0, 120.0], [40.0, 40.0])
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (200, 2))
    samples = rng.integers(0, 256, (50, 2))
    path = images.save_samples(str(tmp_path / "s.png"), samples, enc, "swirl", reference=data)
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    grey = np.all(np.abs(img - 178) < 8, axis=-1)  # the data, drawn in 0.7 grey
    blue = img[..., 2] > img[..., 0] + 60  # the samples, in blue
    assert grey.sum() > 50 and blue.sum() > 50
