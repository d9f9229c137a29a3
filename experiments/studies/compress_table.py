"""Bits-back compression against the T-step bound and classical codecs (VDM Table 2's shape).

    python experiments/studies/compress_table.py --config=configs/digits.py --workdir=runs/digits \
        --n=297 --steps=10,100,250,500,1000 --out=results/compress_digits.json

`--file_n=32,64,128,297` also writes the `.vdmz` file of the first n images at each T and
measures it (bpd of the whole file: net codelength + the stored clean bits + header), beside
the classical codecs' files of the same n images, and estimates from how many images the file
is the smaller for each codec (`compress_study.crossover`).

For each T: the net codelength of the first N test images coded as one message (bits pushed −
bits popped, ± its SE over images), the clean bits the message consumed (stored once,
amortised over the chunks), the T-step negative ELBO of the same images (`--repeats` draws
each, mean ± SE), the round trip checked bit-exact for every image, and encode/decode seconds
per image (experiments/studies/compress_study.py). Beside them the classical codecs on the same
images (vdm/compress/baselines.py). `--latent_bits` and `--range_stds` may list several values to
sweep the latent grid at each T.

A long T can be split over runs on disjoint images and pooled into one table:

    python experiments/studies/compress_table.py … --n=250 --steps=1000 --out=results/a.json
    python experiments/studies/compress_table.py … --n=250 --start=250 --steps=1000 \
        --out=results/b.json
    python experiments/studies/compress_table.py --merge=results/a.json,results/b.json \
        --out=results/ab.json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from experiments.common import write_results
from experiments.studies import compress_study as study
from vdm.compress import baselines  # noqa: E402
from vdm.run.config import load_file  # noqa: E402
from vdm.run.session import Run  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")] if text else []


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config")
    p.add_argument("--workdir")
    p.add_argument("--n", type=int, default=500, help="N test images from --start")
    p.add_argument("--start", type=int, default=0, help="index of the first test image")
    p.add_argument("--merge", default="", help="comma list of results of disjoint runs to pool")
    p.add_argument("--steps", default="10,100,250,500,1000")
    p.add_argument("--latent_bits", default="", help="comma list; default: the config's")
    p.add_argument("--range_stds", default="", help="comma list; default: the config's")
    p.add_argument("--batch_size", type=int, default=0, help="0: the config's")
    p.add_argument("--repeats", type=int, default=20, help="ELBO draws per image")
    p.add_argument(
        "--file_n",
        default="",
        help="comma list of n: the .vdmz file of the first n images at each T, against the "
        "classical codecs' files of the same n, and the n from which the file is smaller",
    )
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.merge:
        return merge(a.merge.split(","), a.out)
    if not (a.config and a.workdir):
        p.error("--config and --workdir are required (unless --merge)")

    config = load_file(a.config)
    run = Run(config, a.workdir)
    state = run.restore()
    params, step = run.eval_params(state), int(state.step)
    stop = min(a.start + a.n, len(run.test_split))
    if a.start < 0 or a.start >= stop:
        p.error(
            f"--start={a.start} with --n={a.n}: no test image (the split has {len(run.test_split)})"
        )
    images = run.test_split.get(np.arange(a.start, stop))["image"]
    file_ns = sorted({k for k in _ints(a.file_n) if 0 < k <= stop - a.start})
    if a.file_n and not file_ns:
        p.error(f"--file_n needs image counts in [1, {stop - a.start}], got {a.file_n!r}")
    n = len(images)
    classical = baselines.classical_bpd(images) if run.model.vocab_size <= 256 else {}
    print(
        f"{config.data.name}: {n} test images from {a.start}, step {step}; classical bpd:", end=" "
    )
    print(", ".join(f"{k} {v:.3f}" for k, v in classical.items()), flush=True)
    rows = study.codelength_rows(
        run,
        params,
        images,
        _ints(a.steps),
        _ints(a.latent_bits),
        [float(v) for v in a.range_stds.split(",")] if a.range_stds else None,
        a.batch_size or None,
        a.repeats,
        log=lambda line: print(line, flush=True),
    )
    for row in rows:
        row["start"] = a.start
    if a.file_n:
        from vdm.compress import api

        meta = {**api.identity(run, params, step), "names": None}  # as from an .npz
        ns = file_ns
        for row in rows:
            codec = api.Codec(
                run.model, params, run.x_shape, row["steps"], row["latent_bits"],
                row["range_stds"], row["batch_size"],
            )  # fmt: skip
            row["file_by_n"] = study.file_by_n(codec, images, ns, meta)
            row["file_crossover"] = study.crossover(row["file_by_n"], codec.dims)
            for f in row["file_by_n"]:
                print(
                    f"T={row['steps']:5d} n={f['n']:4d}: file {f['file_bpd']:.3f} bpd (net "
                    f"{f['net_bpd']:.3f} + clean {f['clean_bpd']:.3f} + header); "
                    + ", ".join(f"{k} {v:.3f}" for k, v in f["classical_bpd"].items()),
                    flush=True,
                )
            print(f"T={row['steps']:5d} file smaller from n = {row['file_crossover']}", flush=True)
    head = {"data": config.data.name, "checkpoint_step": step, "classical_bpd": classical}
    head.update(start=a.start, n=n)
    write_results(a.out, __file__, [head, *rows])


def merge(paths: list[str], out: str) -> None:
    """One table from runs on disjoint images of the same data and checkpoint."""
    heads, parts = [], []
    for path in paths:
        with open(path) as f:
            head, *rows = json.load(f)["results"]
        heads.append(dict(head, n=head.get("n", rows[0]["n"]), start=head.get("start", 0)))
        parts.append(rows)
    for field in ("data", "checkpoint_step"):
        if len({h[field] for h in heads}) != 1:
            sys.exit(f"--merge: the runs differ in {field}: {[h[field] for h in heads]}")
    spans = sorted((h["start"], h["start"] + h["n"]) for h in heads)
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)):
        sys.exit(f"--merge: the runs' image ranges overlap: {spans}")
    n = sum(h["n"] for h in heads)
    codecs = [dict(h["classical_bpd"], n=h["n"]) for h in heads]
    classical = study.image_mean(codecs, heads[0]["classical_bpd"])
    rows = study.merge_rows(parts)
    for r in rows:
        print(
            f"T={r['steps']:5d}: net {r['net_bpd']:.4f} ± {r['net_se']:.4f} bpd, −ELBO_T "
            f"{r['elbo_bpd']:.4f} ± {r['elbo_se']:.4f} ({100 * r['net_over_elbo']:+.2f}%), "
            f"{r['n']} images, exact={r['round_trip_exact']}"
        )
    head = dict(heads[0], classical_bpd=classical, n=n, start=None, spans=spans, merged=paths)
    write_results(out, __file__, [head, *rows])


if __name__ == "__main__":
    main()
