"""Lossless compression by bits-back ANS (vdm/compress/): exact round trips, the codelength
against the coded probabilities and an analytic answer, the .vdmz file's defences, the modes."""

import copy
import dataclasses
import json
import math
import os
import struct
import subprocess
import sys
import zlib

import constriction
import numpy as np
import pytest

from vdm import main
from vdm.compress import api, container, files, fingerprint
from vdm.compress import chain as chain_lib
from vdm.compress import coder as coder_lib
from vdm.compress import words as words_lib
from vdm.model import VDM
from vdm.run.config import load_file

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


def _splitmix64_reference(seed: int, n: int) -> list[int]:
    """Vigna's splitmix64.c, sequentially, in Python integers."""
    out, m = [], 2**64 - 1
    for _ in range(n):
        seed = (seed + 0x9E3779B97F4A7C15) & m
        z = ((seed ^ (seed >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        out.append(z ^ (z >> 31))
    return out


def test_the_coders_words_are_a_fixed_hash_pinned_to_literal_values():
    """Counter-mode SplitMix64 is the published generator (seed 0: e220a8397b1dcdaf …) at
    every counter; the clean words and the mix's output are pinned, since a change to either
    changes what every .vdmz file of this format means."""
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    np.testing.assert_array_equal(words_lib.splitmix64(0, np.arange(4)), np.uint64(expected))
    for seed in (words_lib.CLEAN_SEED, 2**64 - 1):
        ref = np.array(_splitmix64_reference(seed, 300), np.uint64)
        np.testing.assert_array_equal(words_lib.splitmix64(seed, np.arange(300)), ref)
        np.testing.assert_array_equal(words_lib.splitmix64(seed, np.arange(299, 0, -1)), ref[:0:-1])
    clean = [0x8B0BF464, 0x167585CA, 0xCFBBFDC2, 0xE183B83A, 0x5EA92850, 0x0856D655]
    np.testing.assert_array_equal(coder_lib.clean_words(6), np.uint32(clean))
    coder = constriction.stream.stack.AnsCoder(coder_lib.clean_words(8))
    coder_lib.mix(coder, 6, (0, 4))
    mixed = [0x52994450, 0xECF6D09D, 0xB93678FD, 0x99964D29]
    np.testing.assert_array_equal(coder.get_compressed()[4:], np.uint32(mixed))


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


# ---- decoding that cannot half-fail: the platform, old files, the committed fixture ----

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FIXTURE_VDMZ = os.path.join(FIXTURES, "digits_smoke.vdmz")
FIXTURE_IMAGES = os.path.join(FIXTURES, "digits_smoke_images.npz")


@pytest.fixture(scope="module")
def init_run(tmp_path_factory):
    """digits:smoke untrained: its parameters are the deterministic init of key 0, step 0."""
    import jax

    from vdm.run.session import Run

    run = Run(load_file("configs/digits.py:smoke"), str(tmp_path_factory.mktemp("init_run")))
    return run, run.model.init(jax.random.key(0), run.x_shape)


@pytest.fixture(scope="module")
def init_file(init_run, tmp_path_factory):
    """6 digits (two chunks of 4, the last partial) compressed with the untrained model."""
    run, params = init_run
    root = tmp_path_factory.mktemp("init_file")
    images = run.test_split.get(np.arange(6))["image"]
    np.savez(root / "images.npz", images=images)
    api.compress_file(run, params, 0, str(root / "images.npz"), str(root / "x.vdmz"), False)
    return str(root / "x.vdmz"), images


def _altered(path, dest, platform=None, drop_platform=False):
    header, words = container.read(path)
    if platform:
        header["platform"] = {**header["platform"], **platform}
    if drop_platform:
        del header["platform"]
    container.write(str(dest), header, words)
    return str(dest)


@pytest.mark.parametrize(
    "platform,what",
    [
        ({"jaxlib": "0.0.1"}, "jaxlib 0.0.1 in the file"),
        ({"backend": "tpu", "device_kind": "TPU v5 lite"}, "backend tpu in the file"),
        ({"xla_flags": ["--xla_cpu_enable_fast_math=true"]}, "--xla_cpu_enable_fast_math=true"),
        ({"numpy": "1.26.4"}, "numpy 1.26.4 in the file"),
    ],
)
def test_a_file_of_another_platform_is_refused_before_decoding(
    init_run, init_file, tmp_path, monkeypatch, capsys, platform, what
):
    """A numerically different platform: one line naming the difference and the override,
    before any decoding; with compress.allow_platform_mismatch the same file decodes (here
    ε̂ is in fact the same) after one warning line."""
    run, params = init_run
    path, images = init_file
    bad = _altered(path, tmp_path / "bad.vdmz", platform)
    out = tmp_path / "out.npz"
    real_decode = api.Codec.decode

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoding started")

    monkeypatch.setattr(api.Codec, "decode", no_decoding)
    with pytest.raises(container.CompressError) as e:
        api.decompress_file(run, params, 0, bad, str(out), progress=False)
    line = str(e.value)
    assert "\n" not in line and what in line and "allow_platform_mismatch=True" in line
    assert sorted(os.listdir(tmp_path)) == ["bad.vdmz"]

    monkeypatch.setattr(api.Codec, "decode", real_decode)
    forced = copy.copy(run)
    forced.config = run.config.copy_and_resolve_references()
    with forced.config.unlocked():
        forced.config.compress.allow_platform_mismatch = True
    capsys.readouterr()
    api.decompress_file(forced, params, 0, bad, str(out), progress=False)
    np.testing.assert_array_equal(np.load(out)["images"], images)
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("warning: ") and what in warning


@pytest.mark.parametrize(
    "platform,what",
    [
        ({"cpu": "Another CPU"}, "cpu Another CPU in the file"),
        ({"vdm_xla_cpu_defaults": "off"}, "vdm_xla_cpu_defaults off in the file"),
        (None, "records no platform (format 2)"),
    ],
)
def test_an_informational_difference_or_no_record_is_one_warning_line(
    init_run, init_file, tmp_path, capsys, platform, what
):
    run, params = init_run
    path, images = init_file
    bad = _altered(path, tmp_path / "x.vdmz", platform, drop_platform=platform is None)
    capsys.readouterr()
    api.decompress_file(run, params, 0, bad, str(tmp_path / "out.npz"), progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["images"], images)
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("warning: ") and what in warning


def test_the_fingerprint_keeps_only_the_flags_that_change_this_backends_numbers():
    flags = (
        "--xla_dump_to=/tmp/d --xla_backend_optimization_level=0 --xla_gpu_autotune_level=0 "
        "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=8 "
        "--xla_backend_optimization_level=2 --xla_cpu_use_thunk_runtime"
    )
    assert fingerprint.numeric_xla_flags(flags, "cpu") == [
        "--xla_backend_optimization_level=2",
        "--xla_cpu_enable_fast_math=false",
        "--xla_cpu_use_thunk_runtime=true",
    ]
    assert fingerprint.numeric_xla_flags(flags, "gpu") == [
        "--xla_backend_optimization_level=2",
        "--xla_gpu_autotune_level=0",
    ]
    here = fingerprint.current()
    assert set(fingerprint.NUMERIC + fingerprint.INFORMATIONAL) == set(here)
    assert fingerprint.differences(here, dict(here)) == ([], [])
    numeric, info = fingerprint.differences({**here, "numpy": "1.0", "extra": 1}, here)
    assert numeric == [f"numpy 1.0 in the file, {here['numpy']} here"] and len(info) == 1


@pytest.mark.parametrize("output", ["out.npz", "pngs"])
def test_a_decode_that_goes_wrong_stops_after_one_chunk_and_writes_nothing(
    init_run, init_file, tmp_path, monkeypatch, output
):
    """ε̂ off by 1e-2 (far past any platform's rounding, so no chunk decodes by chance): the
    first chunk decoded fails its CRC-32 (or leaves q's range) and decoding stops there, with
    one line and no output."""
    run, params = init_run
    path, _ = init_file
    real, calls = api.Codec._eps_hat, []

    def eps_hat(self, z, i):
        calls.append(i)
        return real(self, z, i) + 1e-2

    monkeypatch.setattr(api.Codec, "_eps_hat", eps_hat)
    with pytest.raises(container.CompressError) as e:
        api.decompress_file(run, params, 0, path, str(tmp_path / output), progress=False)
    assert "\n" not in str(e.value) and "decoding failed after 0 of 2 chunks" in str(e.value)
    assert len(calls) <= run.config.compress.steps  # one chunk's steps, not the file's
    assert os.listdir(tmp_path) == []


def test_a_coder_error_mid_chunk_is_one_line(init_run, init_file, tmp_path, monkeypatch):
    """An error raised inside the coder (here: constriction refusing a symbol) is one line."""
    run, params = init_run
    path, _ = init_file

    def broken(*args, **kwargs):
        raise KeyError("Tried to encode symbol that has zero probability")

    monkeypatch.setattr(coder_lib, "push_gaussian", broken)
    with pytest.raises(container.CompressError) as e:
        api.decompress_file(run, params, 0, path, str(tmp_path / "o.npz"), progress=False)
    assert "\n" not in str(e.value) and "KeyError" in str(e.value)
    assert os.listdir(tmp_path) == []


def _write_format_1(path, header: dict, words: np.ndarray) -> None:
    """The version-1 layout (as vdm wrote it before the counter-mode words)."""
    head = json.dumps({**header, "format_version": 1}, sort_keys=True).encode()
    payload = np.asarray(words, "<u4").tobytes()
    with open(path, "wb") as f:
        f.write(b"VDMZ" + struct.pack("<HI", 1, len(head)) + head)
        f.write(
            struct.pack("<I", zlib.crc32(head)) + payload + struct.pack("<I", zlib.crc32(payload))
        )


def test_format_1_files_still_decode_with_their_numpy_words(init_run, init_file, tmp_path, capsys):
    """A file of format 1 (clean words and mix from numpy Generators, no platform record, no
    chunk CRCs) decodes exactly, after one warning line; an unknown version is one line."""
    run, params = init_run
    _, images = init_file
    codec = api.codec_from_config(run.model, params, run.x_shape, run.config.compress)
    codec.coder = dataclasses.replace(codec.coder, generator="numpy")
    meta = {
        "config_hash": api.config_hash(run.config),
        "params_fingerprint": api.params_fingerprint(params),
        "checkpoint_step": 0,
    }
    header, words, _ = api.compress(codec, images, meta)
    for key in ("platform", "chunk_crc32"):
        del header[key]
    _write_format_1(tmp_path / "v1.vdmz", header, words)
    capsys.readouterr()
    api.decompress_file(run, params, 0, str(tmp_path / "v1.vdmz"), str(tmp_path / "v1.npz"), False)
    np.testing.assert_array_equal(np.load(tmp_path / "v1.npz")["images"], images)
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert "records no platform (format 1)" in warning
    blob = bytearray((tmp_path / "v1.vdmz").read_bytes())
    blob[4:6] = struct.pack("<H", container.FORMAT_VERSION + 1)
    (tmp_path / "v3.vdmz").write_bytes(bytes(blob))
    with pytest.raises(container.CompressedFileError, match="written by a newer vdm"):
        container.read(str(tmp_path / "v3.vdmz"))


def test_files_coded_with_the_earlier_group_norm_still_decode(init_run, tmp_path):
    """ε̂ depends on the GroupNorm's float32 roundings, and the network's GroupNorm was the
    affine form from 2026-12-03 to 12-06: a file of then (no `group_norm` in its header)
    decodes bit-exactly, by trying that form first; a new file records its form; a wrong
    recorded form fails (at the first chunk or the second: where its float32 roundings first
    change a symbol is the CPU's business) and writes nothing."""
    import jax

    run, params = init_run
    # parameters away from the init, whose zero output convolution hides the GroupNorm
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    params = jax.tree.unflatten(
        tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )
    old = run.model.with_group_norm("affine")
    assert run.model.group_norm == "flax" and old.group_norm == "affine"
    z, g = jax.random.normal(jax.random.key(1), (4, *run.x_shape)), np.full((4,), 1.0, np.float32)
    eps_new = run.model.eps_hat_fn(params)(z, g)
    eps_old = old.eps_hat_fn(params)(z, g)
    assert not np.array_equal(eps_new, eps_old)  # the forms differ in their last bits
    np.testing.assert_allclose(eps_new, eps_old, atol=1e-5)

    images = run.test_split.get(np.arange(6))["image"]
    codec = api.codec_from_config(old, params, run.x_shape, run.config.compress)
    header, words, _ = api.compress(codec, images, api.identity(run, params, 0))
    assert header.pop("group_norm") == "affine"  # as files of 2026-12-03 to 12-06: no record
    container.write(str(tmp_path / "old.vdmz"), header, words)
    api.decompress_file(run, params, 0, str(tmp_path / "old.vdmz"), str(tmp_path / "old.npz"))
    np.testing.assert_array_equal(np.load(tmp_path / "old.npz")["images"], images)

    container.write(str(tmp_path / "wrong.vdmz"), {**header, "group_norm": "flax"}, words)
    with pytest.raises(container.CompressError, match=r"decoding failed after [01] of 2 chunks"):
        api.decompress_file(run, params, 0, str(tmp_path / "wrong.vdmz"), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")
    # a file of then that is damaged: the affine form's error is the one reported
    damaged = words.copy()
    damaged[len(damaged) // 2] ^= 1
    container.write(str(tmp_path / "damaged.vdmz"), header, damaged)
    with pytest.raises(container.CompressError, match="GroupNorm form affine; flax failed too"):
        api.decompress_file(run, params, 0, str(tmp_path / "damaged.vdmz"), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")
    container.write(str(tmp_path / "odd.vdmz"), {**header, "group_norm": "batch"}, words)
    with pytest.raises(container.CompressError, match=r"GroupNorm form 'batch'.*'flax', 'affine'"):
        api.decompress_file(run, params, 0, str(tmp_path / "odd.vdmz"), str(tmp_path / "w"))


def test_the_committed_vdmz_keeps_decoding_bit_exactly(init_run, tmp_path):
    """tests/fixtures/digits_smoke.vdmz, made once by digits:smoke's untrained model (the
    init of key 0), decodes to the committed images bit for bit, and coding those images
    again on the platform that made it gives the same words. A failure on that platform is a
    change to the format or the coder: bump container.FORMAT_VERSION and keep the old version
    decoding. On another platform a failed decode only skips (ε̂ may differ there).

    Remake it (only after such a bump, or after digits:smoke's model or data changed) with
    `VDM_REGENERATE_FIXTURES=1 pytest tests/test_compress.py -n 0 -k committed`.
    """
    run, params = init_run
    if os.environ.get("VDM_REGENERATE_FIXTURES") == "1":
        _regenerate_fixture(run, params)
    images = np.load(FIXTURE_IMAGES)["images"]
    header, words = container.read(FIXTURE_VDMZ)
    numeric, info = fingerprint.differences(header["platform"], fingerprint.current())
    forced = copy.copy(run)
    forced.config = run.config.copy_and_resolve_references()
    with forced.config.unlocked():
        forced.config.compress.allow_platform_mismatch = True
    out = str(tmp_path / "out.npz")
    try:
        api.decompress_file(forced, params, 0, FIXTURE_VDMZ, out, progress=False)
    except container.CompressError as e:
        # ε̂ is bit-exact only on the platform that made the fixture (jaxlib, XLA flags, …), so
        # elsewhere a failed decode is no evidence; a CPU model or Python version alone is not
        # another platform and must not hide a format regression.
        if numeric:
            pytest.skip(f"the fixture was made on another platform ({numeric}): {e}")
        raise
    back = np.load(out)["images"]
    assert back.dtype == images.dtype
    np.testing.assert_array_equal(back, images)
    if not numeric:
        codec = api.codec_from_config(run.model, params, run.x_shape, run.config.compress)
        np.testing.assert_array_equal(codec.encode(images.astype(np.int64)).words, words)


def _regenerate_fixture(run, params) -> None:
    os.makedirs(FIXTURES, exist_ok=True)
    images = run.test_split.get(np.arange(6))["image"]
    np.savez_compressed(FIXTURE_IMAGES, images=images)
    if os.path.exists(FIXTURE_VDMZ):
        os.remove(FIXTURE_VDMZ)
    api.compress_file(run, params, 0, FIXTURE_IMAGES, FIXTURE_VDMZ, progress=False)


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
    for key in ("config_hash", "latent_bits", "params_fingerprint", "dtype", "chunk_crc32"):
        assert key in header
    assert header["platform"] == fingerprint.current()
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


def test_decompress_takes_the_runs_own_config(trained):
    """A --config that differs from the run's config.json outside the eval / sample /
    compress sections is ignored, in one line: the file decodes with the model it was made by."""
    root, images = trained
    if not (root / "x.vdmz").exists():
        _cli(root, "--mode=compress", "--input=images.npz", "--output=x.vdmz")
    proc = _cli(
        root, "--mode=decompress", "--input=x.vdmz", "--output=own.npz",
        "--config.schedule.gamma_max=4.0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ignored from --config: schedule.gamma_max=4.0" in proc.stderr
    np.testing.assert_array_equal(np.load(root / "own.npz")["images"], images)


def test_a_file_of_another_config_is_refused_in_one_line():
    expected = {"config_hash": "a", "params_fingerprint": "p", "checkpoint_step": 6}
    header = dict(expected, config_hash="b")
    with pytest.raises(container.CompressError, match="different config"):
        api.check_header(header, expected, "x.vdmz")


@pytest.mark.parametrize("damage", ["platform", "words"])
def test_cli_decompress_that_cannot_succeed_is_one_line_and_writes_nothing(
    trained, tmp_path, damage
):
    """--mode=decompress: a file of another platform is refused before decoding; words that
    decode wrong (their CRC rewritten to match) fail mid-way; either way one `error:` line,
    no traceback, and nothing written."""
    root, _ = trained
    if not (root / "x.vdmz").exists():
        _cli(root, "--mode=compress", "--input=images.npz", "--output=x.vdmz")
    header, words = container.read(str(root / "x.vdmz"))
    if damage == "platform":
        header["platform"]["jaxlib"] = "0.0.1"
    else:
        words = words.copy()
        words[-1] ^= np.uint32(0x5A5A_5A5A)
    container.write(str(tmp_path / "bad.vdmz"), header, words)
    proc = _cli(
        root, "--mode=decompress", f"--input={tmp_path}/bad.vdmz", f"--output={tmp_path}/out"
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert ("jaxlib 0.0.1 in the file" if damage == "platform" else "decoding failed") in last
    assert os.listdir(tmp_path) == ["bad.vdmz"]


def _codec_and_run(root):
    from vdm.run.session import Run

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


def test_the_studys_file_size_is_the_file_compress_writes(trained, tmp_path):
    """compress_table --file_n measures the file `--mode=compress` writes, byte for byte
    (same header fields, words and CRCs), for the first n images."""
    from experiments.studies import compress_study as study

    root, images = trained
    run, params, step = _codec_and_run(root)
    stats = api.compress_file(
        run, params, step, str(root / "images.npz"), str(tmp_path / "s.vdmz"), progress=False
    )
    codec = api.codec_from_config(run.model, params, run.x_shape, run.config.compress)
    meta = {**api.identity(run, params, step), "names": None}
    rows = study.file_by_n(codec, np.asarray(images), [2, len(images)], meta)
    assert rows[-1]["file_bytes"] == stats["file_bytes"]
    assert rows[-1]["file_bpd"] == pytest.approx(stats["file_bpd"])
    assert rows[0]["n"] == 2 and rows[0]["file_bytes"] < rows[-1]["file_bytes"]
    assert set(rows[0]["classical_bpd"]) >= {"xz", "png"}


def test_crossover_is_where_a_fixed_cost_plus_a_cost_per_image_meets_the_codec():
    """File of 100 + 10 n bytes (800 + 80 n bits) with a net codelength of 10 bpd (80 bits an
    image of 8 dims): against 20 bpd (160 bits an image) it is equal at n = 10 and smaller from
    11 on; against 5 bpd (40 bits) never. The fixed cost is read off the largest file."""
    from experiments.studies import compress_study as study

    rows = [
        {
            "n": n,
            "file_bytes": 100 + 10 * n,
            "net_bpd": 10.0,
            "classical_bpd": {"xz": 20.0, "png": 5.0},
        }
        for n in (4, 16, 64)
    ]
    got = study.crossover(rows, dims=8)
    assert got["fixed_bits"] == pytest.approx(800) and got["bits_per_image"] == pytest.approx(80)
    assert got["by_codec"] == {"xz": 11, "png": None} and got["measured_up_to"] == 64
    assert study.crossover(rows[2:], dims=8) == got  # the largest file decides


def test_merging_runs_on_disjoint_images_pools_their_figures_exactly(tmp_path):
    """A table split over runs (experiments/studies/compress_table.py --merge) equals the table of
    one run over all the images: means, SEs as `code_once` and `elbo_bpd` define them."""
    from experiments.studies import compress_study as study

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
    from experiments.studies import compress_table

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
