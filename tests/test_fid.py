"""The sample-quality metric (vdm/fid.py): the Fréchet distance against its closed form, and
the classifier's features ordering obviously different image sets."""

import numpy as np
import pytest

from vdm import data, fid
from vdm.config import load_file


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    """For diagonal covariances FID = ‖Δμ‖² + Σ (√a_i − √b_i)²; identical statistics give 0."""
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fid.frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # invariant to a common rotation
    rotated = fid.frechet_distance(q @ mu_a, q @ np.diag(a) @ q.T, q @ mu_b, q @ np.diag(b) @ q.T)
    np.testing.assert_allclose(rotated, expected, rtol=1e-8)
    assert fid.frechet_distance(mu_a, np.diag(a), mu_a, np.diag(a)) == pytest.approx(0, abs=1e-9)


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    import os

    os.environ["VDM_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        config = load_file("configs/digits.py")
        recipe = {**fid.RECIPES["digits"], "epochs": 12}
        return config, fid.load_or_train(config.data, recipe), recipe
    finally:
        os.environ.pop("VDM_CACHE_DIR")


def test_metric_orders_data_noisy_data_and_noise_and_is_zero_for_identical_sets(
    digits_classifier,
):
    config, clf, _ = digits_classifier
    assert clf.info["test_accuracy"] > 0.9
    test = data.load_split(config.data, "test")
    train = data.load_split(config.data, "train")
    x_test = test.get(np.arange(len(test)))["image"]
    x_train = train.get(np.arange(len(test)))["image"]
    rng = np.random.default_rng(1)
    noisy = np.clip(x_train.astype(int) + rng.integers(-3, 4, x_train.shape), 0, 16)
    uniform = rng.integers(0, 17, x_train.shape)
    ref = clf.features(x_test)
    d = [fid.fid(clf.features(x), ref) for x in (x_train, noisy, uniform)]
    assert fid.fid(ref, ref) == pytest.approx(0.0, abs=1e-6)
    assert 0 < d[0] < d[1] < d[2], d


def test_classifier_is_cached_by_its_recipe(digits_classifier, tmp_path, monkeypatch):
    config, clf, recipe = digits_classifier
    monkeypatch.setenv("VDM_CACHE_DIR", str(tmp_path))
    first = fid.load_or_train(config.data, {**recipe, "epochs": 1})
    files = sorted(p.name for p in (tmp_path / "classifiers").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".msgpack")
    again = fid.load_or_train(config.data, {**recipe, "epochs": 1})  # from the cache
    x = np.zeros((2, 8, 8, 1), np.uint8)
    np.testing.assert_array_equal(first.features(x), again.features(x))
    fid.load_or_train(config.data, {**recipe, "epochs": 2})  # another recipe, another file
    assert len(list((tmp_path / "classifiers").iterdir())) == 4


def test_fid_standard_error_over_seeds():
    """Sets shifted by 0.5 in 3 dimensions: FID ≈ 3 × 0.5² = 0.75, its SE over the sets small."""
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(20_000, 3))
    sets = [rng.normal(size=(2_000, 3)) + 0.5 for _ in range(4)]
    mean, se = fid.fid_se(sets, ref)
    assert mean == pytest.approx(0.75, abs=0.1) and 0 < se < 0.05


def test_sample_mode_reports_fid_beside_the_train_vs_test_floor(tmp_path, monkeypatch):
    import json

    from vdm import main

    monkeypatch.setenv("VDM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(fid.RECIPES, "digits", {**fid.RECIPES["digits"], "epochs": 2})
    config = load_file("configs/digits.py:smoke")
    main.run_mode(config, str(tmp_path / "run"), "train")
    config.sample.fid = True
    config.sample.n_samples = 8  # the grid
    config.sample.fid_n = 16  # the FID's N: drawn beyond the grid
    result = main.run_mode(config, str(tmp_path / "run"), "sample")
    assert result["fid_n"] == 16 and result["fid"] > 0 and result["fid_train_vs_test"] > 0
    written = json.loads(open(result["png"][:-4] + "_fid.json").read())
    assert written["fid"] == result["fid"] and written["step"] == 6
    assert len(np.load(result["png"][:-4] + ".npz")["samples"]) == 16


def test_random_affine_is_the_identity_at_zero_and_keeps_the_value_range():
    import jax

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6, 8, 8, 2)).astype(np.float32)
    same = fid.random_affine(jax.random.key(0), x, 0.0, 0.0, 0.0)
    np.testing.assert_allclose(same, x, atol=1e-5)
    for elastic in (0.0, 8.0):  # the elastic field keeps the affine map's randomness
        moved = np.asarray(fid.random_affine(jax.random.key(1), x, 15.0, 0.1, 2.0, elastic))
        assert moved.shape == x.shape and not np.allclose(moved, x)
        assert moved.min() >= -1 - 1e-5 and moved.max() <= x.max() + 1e-5  # bilinear
    warped = np.asarray(fid.random_affine(jax.random.key(1), x, 0.0, 0.0, 0.0, 8.0, 2.0))
    assert not np.allclose(warped, x) and warped.min() >= -1 - 1e-5
