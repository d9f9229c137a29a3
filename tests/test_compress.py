"""Lossless compression by bits-back ANS (vdm/compress/): exact round trips, the codelength
against the coded probabilities and an analytic answer, the .vdmz file's defences, the modes."""

import json
import math
import os
import subprocess
import sys

import constriction
import numpy as np
import pytest

from vdm import main
from vdm.compress import api, container, files
from vdm.compress import chain as chain_lib
from vdm.compress import coder as coder_lib
from vdm.config import load_file
from vdm.model import VDM

V = 17
SHIFT, SCALE = ((V - 1) / 2,), (V / 2,)


def point_mass_model(points: np.ndarray, chain: chain_lib.Chain):
    """The exact ε̂ of data uniform over `points` (integers), at every latent of the chain."""
    f = (2 * points.astype(np.float64) + 1) / V - 1

    def eps_hat(z, i):
        a, s = chain.alpha[i], chain.sigma[i]
        d2 = np.square(z[:, None] - a * f[None]).reshape(len(z), len(f), -1).sum(-1)
        w = np.exp(-(d2 - d2.min(1, keepdims=True)) / (2 * s * s))
        w /= w.sum(1, keepdims=True)
        return (z - a * np.tensordot(w, f, axes=(1, 0))) / s

    return eps_hat


def t_step_elbo_bits(points, chain, eps_hat, n_draws: int, rng) -> tuple[float, float]:
    """Monte-Carlo −ELBO_T in bits per image (mean, SE): recon + prior KL + the T KLs
    ½ (SNR_{i−1} − SNR_i) ‖f − x̂(z_i)‖² of eq. 13, each with a fresh z_i ~ q(z_i | x)."""
    x = points[rng.integers(0, len(points), n_draws)]
    f = (2 * x.astype(np.float64) + 1) / V - 1
    a, s = chain.alpha, chain.sigma
    snr = np.square(a / s)
    z0 = a[0] * f + s[0] * rng.normal(size=f.shape)
    probs = coder_lib.decoder_probs(z0, chain.gamma[0], SHIFT, SCALE, V)
    nats = -np.log(probs[np.arange(x.size), x.ravel()]).reshape(n_draws, -1).sum(1)
    kl = 0.5 * (s[-1] ** 2 + a[-1] ** 2 * f**2 - 1 - np.log(s[-1] ** 2))
    nats += kl.reshape(n_draws, -1).sum(1)
    for i in range(1, chain.T + 1):
        z = a[i] * f + s[i] * rng.normal(size=f.shape)
        x_hat = (z - s[i] * eps_hat(z, i)) / a[i]
        nats += 0.5 * (snr[i - 1] - snr[i]) * np.square(f - x_hat).reshape(n_draws, -1).sum(1)
    bits = nats / math.log(2)
    return bits.mean(), bits.std() / math.sqrt(n_draws)


@pytest.mark.parametrize(
    "steps,latent_bits,shrink", [(10, 3, 1.0), (40, 1, 1.0), (40, 6, 1.0), (6, 2, 0.7)]
)
def test_point_masses_code_at_the_t_step_elbo_and_the_coded_probabilities(
    steps, latent_bits, shrink
):
    """Data uniform over J = 4 images with the exact denoiser (or, `shrink` < 1, a poor one
    whose ε̂ is scaled down: each step's p misses q by far). The net codelength equals −log₂
    of the coded probabilities (pushes − pops) to 0.01 bits per image (+ the ANS state's few
    bits); its mean is the T-step −ELBO (≥ log₂ J = 2 bits for the exact model, eq. 13) within
    its standard error — for the poor model too, which needs the stack mixed before each pop —
    and so is the cost of the same latents under the unquantised Gaussians; the chunks decode
    exactly; the clean bits consumed are reported apart."""
    rng = np.random.default_rng(0)
    points = rng.integers(0, V, size=(4, 8, 8, 1))
    chain = chain_lib.make_chain(np.linspace(-8.0, 6.0, steps + 1), latent_bits, 8.0)
    exact = point_mass_model(points, chain)

    def eps_hat(z, i):
        return shrink * exact(z, i)

    cc = coder_lib.ChunkCoder(chain, SHIFT, SCALE, V, eps_hat)
    x = points[rng.integers(0, 4, 96)]
    msg = coder_lib.encode_message(cc, x, batch_size=32)
    n = len(x)
    assert abs(msg.net_bits - msg.ideal_bits.sum()) <= 0.01 * n + 64
    elbo, elbo_se = t_step_elbo_bits(points, chain, eps_hat, 2000, rng)
    assert elbo > 2.0 - 4 * elbo_se
    se = math.hypot(msg.ideal_bits.std() / math.sqrt(n), elbo_se)
    assert abs(msg.net_bits / n - elbo) < 4 * se + 0.05, (msg.net_bits / n, elbo, se)
    # The same latents under the unquantised Gaussians: the chain's own estimator of the
    # bound; the coded models (binned Gaussians + the 2^-24 floor) cost no more than them but
    # for the binning, O((δ/σ)²) per latent: 10^-3 bits per symbol bounds it here.
    gauss = msg.gaussian_bits.mean()
    assert abs(gauss - elbo) < 4 * math.hypot(msg.gaussian_bits.std() / math.sqrt(n), elbo_se)
    assert msg.ideal_bits.mean() <= gauss + 1e-3 * x[0].size * (steps + 1)
    assert 0 < msg.clean_bits <= 32 * msg.n_clean
    y = coder_lib.decode_message(cc, msg.words, msg.n_clean, msg.clean_kept, x.shape, 32)
    np.testing.assert_array_equal(y, x)


def test_mixing_the_stack_is_a_bijection_that_costs_nothing():
    coder = constriction.stream.stack.AnsCoder(coder_lib.clean_words(256))
    before, bits = coder.get_compressed().copy(), coder.num_valid_bits()
    coder_lib.mix(coder, 300, (3, 64))
    mixed = coder.get_compressed().copy()
    assert coder.num_valid_bits() == bits and not np.array_equal(mixed, before)
    coder_lib.mix(coder, 300, (3, 64), inverse=True)
    np.testing.assert_array_equal(coder.get_compressed(), before)


def test_gaussian_escape_codes_any_offset_exactly():
    """Under p, a latent far outside the model's range (a poor prediction) still round-trips:
    the edge symbol, then its excess in raw 16-bit words."""
    coder = constriction.stream.stack.AnsCoder(coder_lib.clean_words(64))
    before = coder.get_compressed().copy()
    k = np.array([0, 5, -7, 10**6, -(10**9), 2**40], np.int64)
    mean = np.zeros(len(k))
    coder_lib.push_gaussian(coder, k, mean, 1.0, 0.25, 32, escapes=True)
    out = coder_lib.pop_gaussian(coder, mean, 1.0, 0.25, 32, escapes=True)
    np.testing.assert_array_equal(out, k)
    np.testing.assert_array_equal(coder.get_compressed(), before)


def test_chain_constants_match_the_vdm_conditionals():
    """σ²_{t|s} = σ_t² − α²_{t|s} σ_s² (eq. 21) and p's variance σ²_{t|s} σ_s² / σ_t² (eq. 32)."""
    gamma = np.array([-6.0, -2.0, 1.0, 5.0])
    ch = chain_lib.make_chain(gamma, 3, 8.0)
    a2, s2 = 1 / (1 + np.exp(gamma)), 1 / (1 + np.exp(-gamma))
    var_ts = s2[1:] - a2[1:] / a2[:-1] * s2[:-1]
    np.testing.assert_allclose(ch.q_std()[1:] ** 2, var_ts, rtol=1e-12)
    np.testing.assert_allclose(ch.q_std()[0] ** 2, s2[0], rtol=1e-12)
    np.testing.assert_allclose(ch.p_std()[:-1] ** 2, var_ts * s2[:-1] / s2[1:], rtol=1e-12)
    assert ch.p_std()[-1] == 1.0
    np.testing.assert_allclose(ch.delta(), np.minimum(ch.q_std(), ch.p_std()) / 8)
    with pytest.raises(ValueError, match="increasing"):
        chain_lib.make_chain(gamma[::-1], 3, 8.0)


# ---- a real (tiny, untrained) network: random and real images, several T and precisions ----


@pytest.fixture(scope="module")
def tiny_model():
    import jax

    config = load_file("configs/digits.py:smoke")
    model = VDM.from_config(config)
    params = model.init(jax.random.key(0), (8, 8, 1))
    return model, params


@pytest.mark.parametrize("steps,latent_bits", [(3, 0), (3, 3), (12, 6)])
def test_round_trip_is_exact_for_random_and_real_images(tiny_model, steps, latent_bits):
    from sklearn.datasets import load_digits

    model, params = tiny_model
    codec = api.Codec(model, params, (8, 8, 1), steps, latent_bits, 8.0, batch_size=4)
    real = load_digits().images[:5].astype(np.int64)[..., None]
    noise = np.random.default_rng(steps).integers(0, V, size=(2, 8, 8, 1))
    images = np.concatenate([real, noise])  # 7 images: two chunks, the last one partial
    header, words, stats = api.compress(codec, images.astype(np.uint8), {"data": "digits"})
    out = api.decompress(codec, header, words, "mem")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)
    assert stats["net_bpd"] > 0 and stats["clean_bits"] > 0


# ---- the .vdmz file and the modes, on a trained smoke run ----


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """digits:smoke trained 6 steps (checkpoints at 2, 4, 6), and 5 test images as .npz."""
    root = tmp_path_factory.mktemp("compress")
    config = load_file("configs/digits.py:smoke")
    main.run_mode(config, str(root / "run"), "train")
    from vdm import data

    split = data.load_split(config.data, "test")
    images = split.get(np.arange(5))["image"]
    np.savez(root / "images.npz", images=images)
    return root, images


def _cli(root, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "vdm.main", "--config=digits:smoke", f"--workdir={root}/run"]
    return subprocess.run([*cmd, *args], cwd=root, env=env, capture_output=True, text=True)


def test_compress_then_decompress_restores_the_exact_arrays(trained):
    root, images = trained
    proc = _cli(root, "--mode=compress", "--input=images.npz", "--output=x.vdmz")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bits/dim" in proc.stdout and "compress" in proc.stderr  # the tqdm bar over T
    header, words = container.read(str(root / "x.vdmz"))
    assert header["format_version"] == container.FORMAT_VERSION
    assert header["checkpoint_step"] == 6 and header["count"] == 5
    assert header["image_shape"] == [8, 8, 1] and header["steps"] == 4
    for key in ("config_hash", "latent_bits", "params_fingerprint", "dtype"):
        assert key in header
    proc = _cli(root, "--mode=decompress", "--input=x.vdmz", "--output=out.npz")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = np.load(root / "out.npz")["images"]
    assert out.dtype == images.dtype and out.shape == images.shape
    np.testing.assert_array_equal(out, images)
    # Never overwrite: the same output again is one clear line.
    proc = _cli(root, "--mode=decompress", "--input=x.vdmz", "--output=out.npz")
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error:")


@pytest.mark.parametrize(
    "flag,what",
    [
        ("--checkpoint={root}/run/checkpoints/4", "different checkpoint"),
        ("--config.schedule.gamma_max=4.0", "different config"),
    ],
)
def test_decompress_with_another_checkpoint_or_config_refuses_in_one_line(trained, flag, what):
    root, _ = trained
    if not (root / "x.vdmz").exists():
        _cli(root, "--mode=compress", "--input=images.npz", "--output=x.vdmz")
    proc = _cli(
        root, "--mode=decompress", "--input=x.vdmz", "--output=other.npz", flag.format(root=root)
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and what in last
    assert not (root / "other.npz").exists()


def _codec_and_run(root):
    from vdm.session import Run

    config = load_file("configs/digits.py:smoke")
    run = Run(config, str(root / "run"))
    state = run.restore()
    return run, run.eval_params(state), int(state.step)


@pytest.mark.parametrize("damage", ["truncate", "flip_payload", "flip_header", "not_vdmz"])
def test_damaged_file_is_one_clear_error_never_a_wrong_image(trained, damage, tmp_path):
    root, images = trained
    run, params, step = _codec_and_run(root)
    path = str(tmp_path / "x.vdmz")
    api.compress_file(run, params, step, str(root / "images.npz"), path, progress=False)
    blob = bytearray(open(path, "rb").read())
    if damage == "truncate":
        blob = blob[: len(blob) - 9]
    elif damage == "flip_payload":
        blob[-12] ^= 0x10
    elif damage == "flip_header":
        blob[20] ^= 0x01
    else:
        blob[:4] = b"PK\x03\x04"
    open(path, "wb").write(bytes(blob))
    with pytest.raises(container.CompressError) as e:
        api.decompress_file(run, params, step, path, str(tmp_path / "out.npz"), progress=False)
    assert "\n" not in str(e.value) and path in str(e.value)
    assert not (tmp_path / "out.npz").exists()


def test_png_folder_round_trip_keeps_names(trained, tmp_path):
    root, images = trained
    run, params, step = _codec_and_run(root)
    folder = tmp_path / "pngs"
    files.write_images(str(folder), images, [f"img_{i}.png" for i in range(len(images))])
    api.compress_file(run, params, step, str(folder), str(tmp_path / "p.vdmz"), progress=False)
    api.decompress_file(run, params, step, str(tmp_path / "p.vdmz"), str(tmp_path / "back"), False)
    back, names = files.read_images(str(tmp_path / "back"))
    assert names == [f"img_{i}.png" for i in range(len(images))]
    np.testing.assert_array_equal(back, images)


@pytest.mark.parametrize(
    "images,match",
    [
        (np.zeros((3, 8, 8), np.uint8), r"shape \(N, 8, 8, 1\)"),
        (np.full((3, 8, 8, 1), 17, np.uint8), r"\[0, 16\].*vocab_size=17"),
        (np.zeros((3, 8, 8, 1), np.float32), "integers"),
    ],
)
def test_bad_images_name_what_is_allowed(images, match):
    with pytest.raises(container.CompressError, match=match):
        api.check_images(images, (8, 8, 1), V, "in.npz")


def test_compressed_size_is_the_net_codelength_plus_clean_bits(trained, tmp_path):
    """The file holds the net codelength + the clean bits consumed + the ANS state + header."""
    root, _ = trained
    run, params, step = _codec_and_run(root)
    stats = api.compress_file(
        run, params, step, str(root / "images.npz"), str(tmp_path / "s.vdmz"), progress=False
    )
    header, words = container.read(str(tmp_path / "s.vdmz"))
    net_bits = stats["net_bpd"] * stats["count"] * stats["dims"]
    assert abs(32 * len(words) - (net_bits + stats["clean_bits"])) <= 64
    assert stats["file_bytes"] > 4 * len(words) and math.isfinite(stats["file_bpd"])


def test_merging_runs_on_disjoint_images_pools_their_figures_exactly(tmp_path):
    """A table split over runs (experiments/compress_table.py --merge) equals the table of
    one run over all the images: means, SEs as `code_once` and `elbo_bpd` define them."""
    from vdm.compress import study

    rng = np.random.default_rng(0)
    dims, repeats = 784, 3
    bits = rng.gamma(4.0, 300.0, 500)  # per-image coded bits
    draws = rng.normal(1.4, 0.3, (500, repeats))  # per-image ELBO draws in bpd

    def row(sl):
        b, d = bits[sl], draws[sl].ravel()
        n = len(b)
        return {
            "steps": 1000,
            "latent_bits": 2,
            "range_stds": 8.0,
            "n": n,
            "net_bpd": b.sum() / (n * dims),
            "coded_prob_bpd": b.mean() / dims,
            "net_se": b.std() / dims / math.sqrt(n),
            "clean_bpd": 2.0,
            "encode_s_per_image": 9.0,
            "decode_s_per_image": 7.0,
            "elbo_bpd": d.mean(),
            "elbo_se": d.std() / math.sqrt(len(d) - 1),
            "elbo_repeats": repeats,
            "round_trip_exact": True,
        }

    whole = row(slice(0, 500))
    (merged,) = study.merge_rows([[row(slice(0, 180))], [row(slice(180, 500))]])
    for field in ("net_bpd", "net_se", "elbo_bpd", "elbo_se"):
        assert merged[field] == pytest.approx(whole[field], rel=1e-12), field
    assert merged["n"] == 500 and merged["round_trip_exact"]
    with pytest.raises(ValueError, match="same"):
        study.merge_rows([[row(slice(0, 10))], [dict(row(slice(10, 20)), steps=500)]])

    # the script pools the files of the parts, the classical codecs' bpd by image too
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))
    import compress_table

    def part(path, start, stop, xz):
        head = {"data": "mnist", "checkpoint_step": 3000, "n": stop - start, "start": start}
        head["classical_bpd"] = {"xz": xz, "png": 2.0}
        with open(path, "w") as f:
            json.dump({"results": [head, row(slice(start, stop))]}, f)
        return str(path)

    a, b = part(tmp_path / "a.json", 0, 180, 1.0), part(tmp_path / "b.json", 180, 500, 2.0)
    compress_table.main([f"--merge={a},{b}", f"--out={tmp_path / 'ab.json'}"])
    head, pooled = json.loads((tmp_path / "ab.json").read_text())["results"]
    assert head["classical_bpd"]["xz"] == pytest.approx((180 * 1.0 + 320 * 2.0) / 500)
    assert head["n"] == 500 and head["spans"] == [[0, 180], [180, 500]]
    assert pooled["elbo_se"] == pytest.approx(whole["elbo_se"], rel=1e-12)
    overlap = part(tmp_path / "c.json", 100, 200, 1.0)
    with pytest.raises(SystemExit, match="overlap"):
        compress_table.main([f"--merge={a},{overlap}", f"--out={tmp_path / 'x.json'}"])
