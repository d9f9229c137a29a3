"""The sample-quality metric (vdm/eval/fid.py): the Fréchet distance against its closed form, and
the classifier's features ordering obviously different image sets."""

import numpy as np
import pytest

from vdm import data
from vdm.eval import fid
from vdm.run.config import load_file


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


def _sqrt_psd(c):
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _fd_wrong(mu_a, cov_a, mu_b, cov_b):
    """The common mistake tr (C_a C_b)^{½} → tr C_a^{½} C_b^{½}: right only when they commute."""
    cross = np.trace(_sqrt_psd(cov_a) @ _sqrt_psd(cov_b))
    return np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross


def _rotation(theta):
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def test_frechet_distance_of_gaussians_on_two_lines_is_their_wasserstein_distance():
    """N(0, a) on the x axis against N(μ, b) on the line at angle θ: the optimal coupling maps
    one line onto the other, so FID = W₂² = ‖μ‖² + a + b − 2√(ab)|cos θ|. The wrong formula
    has cos²θ in place of |cos θ|: at θ = 60° with a = 4, b = ¼, μ = 0 it gives 3.75, not 3.25."""
    a, b = 4.0, 0.25
    shifted = np.array([0.3, -0.4])
    for theta, mu in ((np.pi / 3, np.zeros(2)), (2 * np.pi / 3, shifted), (0.2, shifted)):
        u = _rotation(theta)[:, 0]
        cov_a, cov_b = np.diag([a, 0.0]), b * np.outer(u, u)
        expected = mu @ mu + a + b - 2 * np.sqrt(a * b) * abs(np.cos(theta))
        got = fid.frechet_distance(np.zeros(2), cov_a, mu, cov_b)
        np.testing.assert_allclose(got, expected, rtol=1e-10)
        wrong = _fd_wrong(np.zeros(2), cov_a, mu, cov_b)
        gap = 2 * np.sqrt(a * b) * (abs(np.cos(theta)) - np.cos(theta) ** 2)
        np.testing.assert_allclose(wrong, expected + gap)
        if theta == np.pi / 3:
            assert got == pytest.approx(3.25) and wrong == pytest.approx(3.75)


def test_frechet_distance_matches_scipy_sqrtm_for_non_commuting_covariances():
    """Full-rank covariances that do not commute, against tr (C_a C_b)^{½} from scipy's
    general (Schur) sqrtm of the non-symmetric product, in float64; in 2-D also against the
    closed form tr √M = √(tr M + 2 √det M). Where the two covariances' long axes are crossed
    the wrong formula is 22% high, so this test tells them apart."""
    from scipy import linalg

    def reference(mu_a, cov_a, mu_b, cov_b):
        cross = np.trace(linalg.sqrtm(cov_a @ cov_b)).real
        return np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross

    rng = np.random.default_rng(3)
    d = 6
    q_a = np.linalg.qr(rng.normal(size=(d, d)))[0]
    q_b = np.linalg.qr(rng.normal(size=(d, d)))[0]
    spectrum = np.logspace(-2, 1, d)
    crossed = (q_a * spectrum) @ q_a.T, (q_b * spectrum[::-1]) @ q_b.T
    m = rng.normal(size=(2, d, d))
    generic = m[0] @ m[0].T / d + 0.1 * np.eye(d), m[1] @ m[1].T / d + 0.1 * np.eye(d)
    sq = rng.normal(size=(2, 2, 2))
    two_d = sq[0] @ sq[0].T + 0.1 * np.eye(2), sq[1] @ sq[1].T + 0.1 * np.eye(2)
    for cov_a, cov_b in (crossed, generic, two_d):
        k = len(cov_a)
        assert np.abs(cov_a @ cov_b - cov_b @ cov_a).max() > 0.05  # they do not commute
        mu_a, mu_b = rng.normal(size=k), rng.normal(size=k)
        got = fid.frechet_distance(mu_a, cov_a, mu_b, cov_b)
        np.testing.assert_allclose(got, reference(mu_a, cov_a, mu_b, cov_b), rtol=1e-9)
        np.testing.assert_allclose(got, fid.frechet_distance(mu_b, cov_b, mu_a, cov_a), rtol=1e-9)
    (cov_a, cov_b), mu = two_d, np.array([0.5, -1.0])
    m = cov_a @ cov_b
    closed = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expected = mu @ mu + np.trace(cov_a) + np.trace(cov_b) - 2 * closed
    np.testing.assert_allclose(fid.frechet_distance(mu, cov_a, 0 * mu, cov_b), expected, rtol=1e-9)
    zero = np.zeros(d)
    right = fid.frechet_distance(zero, crossed[0], zero, crossed[1])
    wrong = _fd_wrong(zero, crossed[0], zero, crossed[1])
    assert wrong > 1.2 * right, (right, wrong)


def test_frechet_distance_of_rank_deficient_sample_statistics():
    """Fewer examples than features (as a small FID set in 128 features): singular, non-commuting
    sample covariances, against Σ √eig(C_a C_b) from the general eigensolver (the product of two
    PSD matrices has real, non-negative eigenvalues)."""
    rng = np.random.default_rng(4)
    d = 6
    f_a = rng.normal(size=(5, d)) @ rng.normal(size=(d, d))
    f_b = rng.normal(size=(4, d)) @ rng.normal(size=(d, d)) + 1.0
    (mu_a, cov_a), (mu_b, cov_b) = fid.stats(f_a), fid.stats(f_b)
    assert np.linalg.matrix_rank(cov_a) == 4 and np.linalg.matrix_rank(cov_b) == 3
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)))
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    np.testing.assert_allclose(fid.fid(f_a, f_b), expected, rtol=1e-7)
    assert abs(_fd_wrong(mu_a, cov_a, mu_b, cov_b) - expected) > 0.01 * expected


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
