"""Compress and decompress integer images with a trained VDM (the `compress` config section).

`Codec(model, params, ...)` binds a model's schedule and denoiser to the bits-back coder
(vdm/compress/coder.py): γ(i/T) for the chain and one jitted ε̂ call at a fixed batch shape,
so encoder and decoder compute identical network outputs. `compress` returns the header and
words of a `.vdmz` file (vdm/compress/container.py); `decompress` checks the header against
the model and the platform (vdm/compress/fingerprint.py) and returns the exact images, or
stops with one `CompressError` line; `decompress_file` writes its output only after that.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vdm import storage
from vdm.compress import chain as chain_lib
from vdm.compress import coder as coder_lib
from vdm.compress import fingerprint, portable
from vdm.compress.container import FORMAT_VERSION, GENERATORS, CompressError, images_crc
from vdm.compress.identity import (  # noqa: F401 - re-exported
    MULTIVARIATE_FIELDS,
    config_hash,
    earlier_config_hashes,
    params_fingerprint,
)
from vdm.networks.unet import GROUP_NORMS


@dataclasses.dataclass
class Codec:
    """The coder of one model, parameters and `compress` config section."""

    model: object  # vdm.model.VDM
    params: object
    x_shape: tuple[int, ...]
    steps: int
    latent_bits: int
    range_stds: float
    batch_size: int

    def __post_init__(self):
        gamma_fn = jax.jit(lambda p, t: self.model.gamma_fn(p)(t))
        t = jnp.arange(self.steps + 1, dtype=jnp.float32) / self.steps
        gamma = np.asarray(gamma_fn(self.params, t), np.float64)
        if gamma.ndim != 1:
            raise ValueError(
                "compress needs a scalar schedule γ(t) (its chain codes every dimension on one "
                "grid); this model has a γ per data dimension "
                "(schedule.name='learned_multivariate')"
            )
        self.chain = chain_lib.make_chain(gamma, self.latent_bits, self.range_stds)
        self._eps = jax.jit(lambda p, z, g: self.model.eps_hat_fn(p)(z, g))
        enc = self.model.encoding
        self.coder = coder_lib.ChunkCoder(
            self.chain, enc.shift, enc.scale, enc.vocab_size, self._eps_hat
        )

    def _eps_hat(self, z: np.ndarray, i: int) -> np.ndarray:
        """ε̂(z, γ_i) at the fixed batch shape (rows past len(z) are zeros), as float64."""
        n = len(z)
        zb = np.zeros((self.batch_size, *self.x_shape), np.float32)
        zb[:n] = z
        out = self._eps(self.params, zb, np.float32(self.chain.gamma[i]))
        return np.asarray(out, np.float64)[:n]

    @property
    def dims(self) -> int:
        return math.prod(self.x_shape)

    def _bar(self, n_images: int, desc: str, progress: bool):
        n_chunks = math.ceil(n_images / self.batch_size)
        bar = tqdm(total=n_chunks * self.steps, desc=desc, unit="step", disable=not progress)
        return bar, (lambda: bar.update(1))

    def encode(self, images: np.ndarray, progress: bool = False) -> coder_lib.Message:
        bar, step = self._bar(len(images), "compress", progress)
        with bar:
            return coder_lib.encode_message(self.coder, images, self.batch_size, step)

    def decode(
        self,
        words,
        n_clean: int,
        clean_kept: int,
        count: int,
        progress=False,
        generator: str = GENERATORS[FORMAT_VERSION],
        on_chunk=None,
    ):
        bar, step = self._bar(count, "decompress", progress)
        shape = (count, *self.x_shape)
        cc = dataclasses.replace(self.coder, generator=generator)
        with bar:
            return coder_lib.decode_message(
                cc, words, n_clean, clean_kept, shape, self.batch_size, step, on_chunk
            )


def header_group_norms(header: dict, model, path: str) -> list[str | None]:
    """The GroupNorm forms to decode a file with, in order: the one its header records; for a
    file coded before headers recorded it (before 2026-12-07), 'affine' (the network's form
    from 2026-12-03) and then 'flax' (before that). A wrong form fails at the first chunk's
    checksum (at the whole file's, for files older than the chunk checksums of 2026-12-03)
    and writes nothing. Files coded before 2026-12-03 may fail with either form: that day's
    attention and convolution changes also moved ε̂."""
    if "group_norm" in header:
        if header["group_norm"] not in GROUP_NORMS:
            raise CompressError(
                f"{path} records the GroupNorm form {header['group_norm']!r}; this vdm "
                f"decodes {list(GROUP_NORMS)}"
            )
        return [header["group_norm"]]
    if model.group_norm is None:
        return [None]
    return ["affine", "flax"]


def codec_from_config(model, params, x_shape, compress_cfg) -> Codec:
    c = compress_cfg
    if c.get("portable", False) and not portable.in_effect():
        raise CompressError(_NOT_PINNED)
    return Codec(model, params, tuple(x_shape), c.steps, c.latent_bits, c.range_stds, c.batch_size)


def check_images(images: np.ndarray, x_shape, vocab_size: int, source: str) -> np.ndarray:
    """Integer images of shape (N, *x_shape) with values in [0, vocab_size), else one line."""
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.integer):
        raise CompressError(f"{source}: images must be integers, got dtype {images.dtype}")
    if images.ndim != len(x_shape) + 1 or tuple(images.shape[1:]) != tuple(x_shape):
        raise CompressError(
            f"{source}: images must have shape (N, {', '.join(map(str, x_shape))}) for this "
            f"config's data, got {images.shape}"
        )
    if len(images) == 0:
        raise CompressError(f"{source}: no images")
    lo, hi = int(images.min()), int(images.max())
    if lo < 0 or hi >= vocab_size:
        raise CompressError(
            f"{source}: values must lie in [0, {vocab_size - 1}] (data.vocab_size={vocab_size}),"
            f" got [{lo}, {hi}]"
        )
    return images


def compress(codec: Codec, images: np.ndarray, meta: dict, progress=False):
    """(header, words, stats) of coding `images`; `meta` (model identity) joins the header."""
    t0 = time.perf_counter()
    try:
        msg = codec.encode(images.astype(np.int64), progress)
    except coder_lib.CoderError as e:
        raise CompressError(f"the model cannot code these images ({e})") from None
    seconds = time.perf_counter() - t0
    n, dims = len(images), codec.dims
    header = file_header(codec, images, msg, meta)
    stats = {
        "count": n,
        "dims": dims,
        "steps": codec.steps,
        "net_bpd": msg.net_bits / (n * dims),
        "ideal_bpd": float(msg.ideal_bits.sum()) / (n * dims),
        "clean_bits": msg.clean_bits,
        "payload_bpd": 32 * len(msg.words) / (n * dims),
        "encode_s_per_image": seconds / n,
    }
    return header, msg.words, stats


def file_header(codec: Codec, images: np.ndarray, msg, meta: dict) -> dict:
    """The .vdmz header of `images` coded as `msg` (a `coder.Message`) by `codec`."""
    n = len(images)
    return {
        "format_version": FORMAT_VERSION,
        **meta,
        "platform": fingerprint.current(),
        **({"group_norm": form} if (form := codec.model.group_norm) else {}),
        "steps": codec.steps,
        "latent_bits": codec.latent_bits,
        "range_stds": codec.range_stds,
        "batch_size": codec.batch_size,
        "image_shape": list(codec.x_shape),
        "dtype": str(images.dtype),
        "count": n,
        "n_clean": msg.n_clean,
        "clean_kept": msg.clean_kept,
        "n_words": len(msg.words),
        "images_crc32": images_crc(images),
        "chunk_crc32": [images_crc(images[sl]) for sl in coder_lib.chunks(n, codec.batch_size)],
    }


def check_header(header: dict, expected: dict, path: str) -> None:
    """Refuse a file coded by another model: one line naming what differs."""
    for key, what in (("config_hash", "config"), ("params_fingerprint", "checkpoint")):
        if header.get(key) != expected[key] and header.get(key) not in expected.get(
            f"earlier_{key}", ()
        ):
            raise CompressError(
                f"{path} was compressed with a different {what} ({key} {header.get(key)}, "
                f"checkpoint step {header.get('checkpoint_step')}); this one has "
                f"{expected[key]} at step {expected['checkpoint_step']}: decode with the same "
                "config and checkpoint"
            )


_NOT_PINNED = (
    "compress.portable needs this process to start under its pins (one core, AVX2, JAX on "
    "the CPU): --mode=compress and --mode=decompress re-execute themselves so; in Python, "
    "start the interpreter with vdm.compress.portable.pinned_environ() and one core"
)


def check_platform(header: dict, path: str, allow_mismatch: bool = False) -> list[str]:
    """Refuse, before decoding, a file whose ε̂ was computed on a numerically different
    platform (one line naming what differs); a difference that may not matter, or a file that
    records none, is one warning line. Returns the differences, for a failed decode's line."""
    recorded = header.get("platform")
    if recorded is None:
        print(
            f"warning: {path} records no platform (format {header.get('format_version')}): if "
            "this one's ε̂ differs from the encoder's, decoding fails and writes nothing",
            file=sys.stderr,
        )
        return []
    if recorded.get("portable") and not portable.in_effect():
        raise CompressError(f"{path} was written with compress.portable: {_NOT_PINNED}")
    numeric, info = fingerprint.differences(recorded, fingerprint.current())
    if numeric and not allow_mismatch:
        raise CompressError(
            f"{path} was compressed on another platform ({'; '.join(numeric)}), where ε̂ can "
            "differ in its last bits and decoding then fails: decode on that platform, or try "
            "anyway with --config.compress.allow_platform_mismatch=True (a failed decode "
            "writes nothing); a file written with --config.compress.portable=True decodes on "
            "any x86-64 CPU with AVX2"
        )
    if numeric or info:
        print(
            f"warning: {path} was compressed on another platform ({'; '.join(numeric + info)}):"
            " if ε̂ differs here, decoding fails and writes nothing",
            file=sys.stderr,
        )
    return numeric + info


def decompress(
    codec: Codec,
    header: dict,
    words: np.ndarray,
    path: str,
    progress=False,
    allow_platform_mismatch: bool = False,
):
    """The exact images of a .vdmz file's header and words. Refuses another platform's file
    before decoding; any failure while decoding, each chunk checked against its CRC-32 as it
    comes, is one `CompressError` line."""
    version = header.get("format_version")
    if version not in GENERATORS:
        raise CompressError(f"{path}: format version {version}, not one this vdm reads")
    differs = check_platform(header, path, allow_platform_mismatch)
    chunk_crcs = header.get("chunk_crc32")
    n_chunks = math.ceil(header["count"] / codec.batch_size)
    done = []

    def check_chunk(sl: slice, images: np.ndarray) -> None:
        if (
            chunk_crcs is not None
            and images_crc(images) != chunk_crcs[sl.start // codec.batch_size]
        ):
            raise coder_lib.CoderError(f"images {sl.start}–{sl.stop - 1} fail their checksum")
        done.append(sl)

    try:
        images = codec.decode(
            words,
            header["n_clean"],
            header["clean_kept"],
            header["count"],
            progress,
            GENERATORS[version],
            check_chunk,
        )
        if images_crc(images) != header["images_crc32"]:
            raise coder_lib.CoderError("the decoded images fail their checksum")
    except Exception as e:  # the coder's checks, constriction's and numpy's errors alike
        why = str(e) if isinstance(e, coder_lib.CoderError) else f"{type(e).__name__}: {e}"
        also = f"; it was compressed on another platform ({'; '.join(differs)})" if differs else ""
        raise CompressError(
            f"{path}: decoding failed after {len(done)} of {n_chunks} chunks "
            f"({' '.join(why.split())}): the decoder's ε̂ differs from the encoder's or the file "
            f"is damaged{also}"
        ) from e
    return images.astype(np.dtype(header["dtype"]))


# ---- The compress / decompress modes ----


def identity(run, params, step: int) -> dict:
    """The model identity a .vdmz header records and decompression checks."""
    return {
        "config_hash": config_hash(run.config),
        # of the parameters as checkpoints hold them, whatever form the model applies
        "params_fingerprint": params_fingerprint(run.model.stored_params(params)),
        "checkpoint_step": int(step),
        "data": run.config.data.name,
    }


def compress_file(run, params, step: int, input_path: str, output_path: str, progress=True):
    """--mode=compress: images at `input_path` → one .vdmz at `output_path`; returns stats."""
    from vdm.compress import container, files

    if storage.exists(output_path):
        raise CompressError(f"{output_path} exists: choose another --output")
    images, names = files.read_images(input_path)
    images = check_images(images, run.x_shape, run.model.vocab_size, input_path)
    codec = codec_from_config(run.model, params, run.x_shape, run.config.compress)
    meta = {**identity(run, params, step), "names": names}
    header, words, stats = compress(codec, images, meta, progress)
    stats["file_bytes"] = container.write(output_path, header, words)
    stats["file_bpd"] = 8 * stats["file_bytes"] / (stats["count"] * stats["dims"])
    return stats


def decompress_file(run, params, step: int, input_path: str, output_path: str, progress=True):
    """--mode=decompress: a .vdmz → the exact images (.npz or a folder of PNGs)."""
    from vdm.compress import container, files

    header, words = container.read(input_path)
    expected = identity(run, params, step)
    expected["earlier_config_hash"] = earlier_config_hashes(run.config)
    check_header(header, expected, input_path)
    if list(header["image_shape"]) != list(run.x_shape):
        raise CompressError(
            f"{input_path}: images of shape {header['image_shape']}, this config's data "
            f"{list(run.x_shape)}"
        )
    files.check_output(output_path, header.get("names"), header["count"], input_path)
    c = run.config.compress.copy_and_resolve_references()
    allow = bool(c.get("allow_platform_mismatch", False))
    with c.unlocked():
        for k in ("steps", "latent_bits", "range_stds", "batch_size"):
            c[k] = header[k]  # the file says how it was coded
    failed = []  # (form, error) of each decode that failed
    for form in header_group_norms(header, run.model, input_path):
        codec = codec_from_config(run.model.with_group_norm(form), params, run.x_shape, c)
        try:
            images = decompress(codec, header, words, input_path, progress, allow)
            break
        except CompressError as e:
            if e.__cause__ is None:  # refused before decoding: no other form can help
                raise
            failed.append((form, e))
    else:  # every form failed: the first (the likeliest) form's error, naming the others
        form, first = failed[0]
        others = ", ".join(str(f) for f, _ in failed[1:])
        also = f" (with the GroupNorm form {form}; {others} failed too)" if others else ""
        raise CompressError(f"{first}{also}") from first.__cause__
    return files.write_images(output_path, images, header.get("names"))
