"""The codelength study behind VDM's Table 2: bits-back net codelength against the T-step bound.

`codelength_rows(run, params, images, steps)` codes the same images at each T (one message,
round trip checked bit-exact) and evaluates the T-step negative ELBO of the same images; the
script experiments/studies/compress_table.py and notebooks/compression_mnist.py both call it.
`merge_rows` pools the rows of runs over disjoint image ranges (a long T split across runs).
"""

from __future__ import annotations

import math
import os
import tempfile
import time

import jax
import numpy as np

from vdm import data
from vdm.compress import api, baselines, container
from vdm.eval import likelihood
from vdm.model import VDM


def t_step_elbo(run, params, images: np.ndarray, steps: int, repeats: int) -> tuple[float, float]:
    """−ELBO_T in bpd of `images` (eq. 13 with T steps; mean, SE over images × `repeats`)."""
    config = run.config.copy_and_resolve_references()
    config.model.n_timesteps = steps
    model = VDM.from_config(
        config,
        run.model.num_classes,
        n_cond_flags=int(config.data.random_flip),
        encoding=run.model.encoding,
    )
    eval_step = likelihood.make_eval_step(model, images[0].size, run.mesh)
    split = data.in_memory(images, None, 0)
    batch = config.eval.batch_size
    res = likelihood.elbo_bpd(eval_step, params, split, batch, jax.random.key(7), run.mesh, repeats)
    return res["bpd"], res["bpd_se"]


def code_once(codec: api.Codec, images: np.ndarray) -> dict:
    """Code `images` as one message and back: net bpd ± SE, clean bits, exactness, seconds."""
    n, dims = len(images), codec.dims
    t0 = time.perf_counter()
    msg = codec.encode(images.astype(np.int64))
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = codec.decode(msg.words, msg.n_clean, msg.clean_kept, n)
    t_dec = time.perf_counter() - t0
    return {
        "net_bpd": msg.net_bits / (n * dims),
        # SE from the per-image coded probabilities (they match the coder's bits to ~0.01 bits
        # per image: tests/test_compress.py).
        "net_se": float(np.std(msg.ideal_bits) / dims / np.sqrt(n)),
        "coded_prob_bpd": float(msg.ideal_bits.sum()) / (n * dims),
        # The same latents under the chain's Gaussians without the coder's probability floor
        # (≥ 2^-24 per symbol) and escapes: where p fits q badly (small T) the floor's
        # heavier tail makes the coded cost the lower of the two.
        "gaussian_bpd": float(msg.gaussian_bits.sum()) / (n * dims),
        "clean_bpd": msg.clean_bits / (n * dims),
        "round_trip_exact": bool(np.array_equal(back, images)),
        "encode_s_per_image": t_enc / n,
        "decode_s_per_image": t_dec / n,
    }


def file_by_n(codec: api.Codec, images: np.ndarray, ns: list[int], meta: dict) -> list[dict]:
    """The `.vdmz` file of the first n images, for each n in `ns`: written as `--mode=compress`
    writes it (header, words, CRCs) and measured in bits per dimension, beside the net
    codelength, the stored clean bits and the classical codecs' files of the same n images."""
    rows = []
    for n in ns:
        sub = images[:n].astype(np.int64)
        msg = codec.encode(sub)
        header = api.file_header(codec, images[:n], msg, meta)
        with tempfile.TemporaryDirectory() as d:
            size = container.write(os.path.join(d, "images.vdmz"), header, msg.words)
        dims = n * codec.dims
        rows.append(
            {
                "n": n,
                "file_bytes": size,
                "file_bpd": 8 * size / dims,
                "net_bpd": msg.net_bits / dims,
                "clean_bpd": msg.clean_bits / dims,
                "classical_bpd": baselines.classical_bpd(images[:n]),
            }
        )
    return rows


def crossover(rows: list[dict], dims: int) -> dict:
    """Per classical codec: the number of images from which the `.vdmz` file is the smaller.

    Once the message spans a chunk, the file is a fixed cost F (the stored clean bits, about
    one chunk's latents, the header and the CRCs) plus the net codelength per further image;
    F is read off the largest file measured, F = bits(N) − net · D · N. (A straight line
    through all sizes would be wrong: a message shorter than one chunk stores fewer clean
    bits.) Against a codec's bpd c at the largest N, the file is smaller from
    n = ⌊F / ((c − net) D)⌋ + 1; None where the codec costs less per image than the net
    codelength. Beyond N this is an extrapolation, and an optimistic one: a codec's bpd also
    falls as it sees more images."""
    last = max(rows, key=lambda r: r["n"])
    per_image = last["net_bpd"] * dims
    fixed = 8 * last["file_bytes"] - per_image * last["n"]
    out = {"fixed_bits": float(fixed), "bits_per_image": float(per_image), "by_codec": {}}
    for codec, bpd in last["classical_bpd"].items():
        margin = bpd * dims - per_image  # the codec's bits per image minus the file's
        smaller = math.floor(max(fixed, 0.0) / margin + 1e-9) + 1
        out["by_codec"][codec] = smaller if margin > 0 else None
    out["measured_up_to"] = int(last["n"])
    return out


def codelength_rows(
    run,
    params,
    images,
    steps_list,
    latent_bits=None,
    range_stds=None,
    batch_size=None,
    repeats: int = 20,
    log=print,
) -> list[dict]:
    """One row per (T, latent_bits, range_stds): the coder's figures beside −ELBO_T."""
    c = run.config.compress
    bits_list = latent_bits or [c.latent_bits]
    rs_list = range_stds or [c.range_stds]
    batch = batch_size or c.batch_size
    rows = []
    for steps in steps_list:
        elbo, elbo_se = t_step_elbo(run, params, images, steps, repeats)
        for bits in bits_list:
            for rs in rs_list:
                codec = api.Codec(run.model, params, run.x_shape, steps, bits, rs, batch)
                row = {"steps": steps, "latent_bits": bits, "range_stds": rs, "n": len(images)}
                row.update(batch_size=batch, **code_once(codec, images))
                row.update(elbo_bpd=elbo, elbo_se=elbo_se, elbo_repeats=repeats)
                row["net_over_elbo"] = row["net_bpd"] / elbo - 1.0
                rows.append(row)
                log(
                    f"T={steps:5d} bits={bits} range={rs:g}: net {row['net_bpd']:.4f} ± "
                    f"{row['net_se']:.4f} bpd, −ELBO_T {elbo:.4f} ± {elbo_se:.4f} "
                    f"({100 * row['net_over_elbo']:+.2f}%), same latents under the Gaussians "
                    f"{row['gaussian_bpd']:.4f}, clean {row['clean_bpd']:.3f} bpd, "
                    f"exact={row['round_trip_exact']}, enc "
                    f"{row['encode_s_per_image'] * 1e3:.1f} ms/img, dec "
                    f"{row['decode_s_per_image'] * 1e3:.1f} ms/img"
                )
    return rows


def _pool(parts: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Mean and population std of the union of samples given (count, mean, population std)."""
    n = sum(k for k, _, _ in parts)
    mean = sum(k * m for k, m, _ in parts) / n
    second = sum(k * (s * s + m * m) for k, m, s in parts) / n
    return mean, math.sqrt(max(second - mean * mean, 0.0))


def image_mean(rows: list[dict], fields) -> dict:
    """Per-image means over runs on disjoint images, Σ nᵢ·fᵢ / Σ nᵢ, for each field that every
    run reports (each row holds its run's image count `n` and per-image means)."""
    n = sum(r["n"] for r in rows)
    return {f: sum(r["n"] * r[f] for r in rows) / n for f in fields if all(f in r for r in rows)}


def _merge_one(rows: list[dict]) -> dict:
    n = sum(r["n"] for r in rows)
    out = dict(rows[0], n=n, starts=[r.get("start", 0) for r in rows], parts=len(rows))
    for field in ("file_by_n", "file_crossover"):  # one part's images, not the pooled set's
        out.pop(field, None)
    means = ("net_bpd", "coded_prob_bpd", "gaussian_bpd", "clean_bpd")
    out.update(image_mean(rows, (*means, "encode_s_per_image", "decode_s_per_image")))
    # net_se = std(per-image bits, ddof 0) / dims / sqrt(n)  (`code_once`).
    _, std = _pool([(r["n"], r["coded_prob_bpd"], r["net_se"] * math.sqrt(r["n"])) for r in rows])
    out["net_se"] = std / math.sqrt(n)
    # elbo_se = sqrt(var / (m − 1)) over m = n · repeats draws  (`likelihood.elbo_bpd`).
    draws = [r["n"] * r["elbo_repeats"] for r in rows]
    elbo, std = _pool(
        [
            (m, r["elbo_bpd"], r["elbo_se"] * math.sqrt(m - 1))
            for m, r in zip(draws, rows, strict=True)
        ]
    )
    out.update(elbo_bpd=elbo, elbo_se=std / math.sqrt(sum(draws) - 1))
    out["round_trip_exact"] = all(r["round_trip_exact"] for r in rows)
    out["net_over_elbo"] = out["net_bpd"] / elbo - 1.0
    return out


def merge_rows(parts: list[list[dict]]) -> list[dict]:
    """Rows of one table from runs that coded disjoint images (one message per run and row):
    codelengths, clean bits and times averaged over all the images, the SEs pooled exactly
    from each run's mean and SE, exactness the AND of the runs'. Rows are matched by
    (steps, latent_bits, range_stds); every run must have the same settings."""
    key = lambda r: (r["steps"], r["latent_bits"], r["range_stds"])  # noqa: E731
    tables = [{key(r): r for r in rows} for rows in parts]
    if any(t.keys() != tables[0].keys() for t in tables[1:]):
        raise ValueError("merge: the runs must code the same (steps, latent_bits, range_stds)")
    return [_merge_one([t[k] for t in tables]) for k in tables[0]]
