"""Bits-back compression against the T-step bound and classical codecs (VDM Table 2's shape).

    python experiments/compress_table.py --config=configs/digits.py --workdir=runs/digits \
        --n=297 --steps=10,100,250,500,1000 --out=results/compress_digits.json

For each T: the net codelength of the first N test images coded as one message (bits pushed −
bits popped), the clean bits the message consumed (stored once, amortised over the chunks), the
T-step negative ELBO of the same images (`--repeats` draws each, mean ± SE), the round trip
checked bit-exact for every image, and encode/decode seconds per image. Beside them the
classical codecs on the same images (vdm/compress/baselines.py). `--latent_bits` and
`--range_stds` may list several values to sweep the latent grid at each T.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.bench_io import write_results  # noqa: E402
from vdm import data, likelihood  # noqa: E402
from vdm.compress import api, baselines  # noqa: E402
from vdm.config import load_file  # noqa: E402
from vdm.session import Run  # noqa: E402


def t_step_elbo(run: Run, params, images: np.ndarray, steps: int, repeats: int) -> tuple:
    """−ELBO_T in bpd of `images` (eq. 13 in T steps; mean, SE over images × `repeats` draws)."""
    config = run.config.copy_and_resolve_references()
    config.model.n_timesteps = steps
    run_t = Run(config, run.workdir)
    split = data.in_memory(images, None, 0)
    key = jax.random.key(7)
    res = likelihood.elbo_bpd(
        run_t.eval_step, params, split, config.eval.batch_size, key, run_t.mesh, repeats
    )
    return res["bpd"], res["bpd_se"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--n", type=int, default=500, help="first N test images")
    p.add_argument("--steps", default="10,100,250,500,1000")
    p.add_argument("--latent_bits", default="", help="comma list; default: the config's")
    p.add_argument("--range_stds", default="", help="comma list; default: the config's")
    p.add_argument("--batch_size", type=int, default=0, help="0: the config's")
    p.add_argument("--repeats", type=int, default=20, help="ELBO draws per image")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    config = load_file(a.config)
    c = config.compress
    bits_list = [int(b) for b in a.latent_bits.split(",")] if a.latent_bits else [c.latent_bits]
    rs_list = [float(r) for r in a.range_stds.split(",")] if a.range_stds else [c.range_stds]
    batch = a.batch_size or c.batch_size
    run = Run(config, a.workdir)
    state = run.restore()
    params, step = run.eval_params(state), int(state.step)
    n = min(a.n, len(run.test_split))
    images = run.test_split.get(np.arange(n))["image"]
    dims = images[0].size
    classical = baselines.classical_bpd(images) if run.model.vocab_size <= 256 else {}
    print(f"{config.data.name}: {n} test images, step {step}; classical bpd:", end=" ")
    print(", ".join(f"{k} {v:.3f}" for k, v in classical.items()))

    rows = []
    for steps in (int(s) for s in a.steps.split(",")):
        elbo, elbo_se = t_step_elbo(run, params, images, steps, a.repeats)
        for bits in bits_list:
            for rs in rs_list:
                codec = api.Codec(run.model, params, run.x_shape, steps, bits, rs, batch)
                t0 = time.perf_counter()
                msg = codec.encode(images.astype(np.int64))
                t_enc = time.perf_counter() - t0
                t0 = time.perf_counter()
                back = codec.decode(msg.words, msg.n_clean, msg.clean_kept, n)
                t_dec = time.perf_counter() - t0
                exact = bool(np.array_equal(back, images))
                net = msg.net_bits / (n * dims)
                # SE of the net codelength from the per-image coded probabilities (they match
                # the coder's bits to ~0.01 bits per image: tests/test_compress.py).
                net_se = float(np.std(msg.ideal_bits) / dims / np.sqrt(n))
                row = {
                    "steps": steps,
                    "latent_bits": bits,
                    "range_stds": rs,
                    "batch_size": batch,
                    "n": n,
                    "net_bpd": net,
                    "net_se": net_se,
                    "coded_prob_bpd": float(msg.ideal_bits.sum()) / (n * dims),
                    "clean_bpd": msg.clean_bits / (n * dims),
                    "elbo_bpd": elbo,
                    "elbo_se": elbo_se,
                    "net_over_elbo": net / elbo - 1.0,
                    "round_trip_exact": exact,
                    "encode_s_per_image": t_enc / n,
                    "decode_s_per_image": t_dec / n,
                }
                rows.append(row)
                print(
                    f"T={steps:5d} bits={bits} range={rs:g}: net {net:.4f} ± {net_se:.4f} bpd, "
                    f"−ELBO_T {elbo:.4f} ± {elbo_se:.4f} ({100 * row['net_over_elbo']:+.2f}%), "
                    f"clean {row['clean_bpd']:.3f} bpd, exact={exact}, "
                    f"enc {row['encode_s_per_image'] * 1e3:.1f} ms/img, "
                    f"dec {row['decode_s_per_image'] * 1e3:.1f} ms/img",
                    flush=True,
                )
    write_results(
        a.out,
        __file__,
        [{"data": config.data.name, "checkpoint_step": step, "classical_bpd": classical}, *rows],
    )


if __name__ == "__main__":
    main()
