"""Bits-back compression against the T-step bound and classical codecs (VDM Table 2's shape).

    python experiments/compress_table.py --config=configs/digits.py --workdir=runs/digits \
        --n=297 --steps=10,100,250,500,1000 --out=results/compress_digits.json

For each T: the net codelength of the first N test images coded as one message (bits pushed −
bits popped, ± its SE over images), the clean bits the message consumed (stored once,
amortised over the chunks), the T-step negative ELBO of the same images (`--repeats` draws
each, mean ± SE), the round trip checked bit-exact for every image, and encode/decode seconds
per image (vdm/compress/study.py). Beside them the classical codecs on the same images
(vdm/compress/baselines.py). `--latent_bits` and `--range_stds` may list several values to
sweep the latent grid at each T.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.bench_io import write_results  # noqa: E402
from vdm.compress import baselines, study  # noqa: E402
from vdm.config import load_file  # noqa: E402
from vdm.session import Run  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")] if text else []


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
    run = Run(config, a.workdir)
    state = run.restore()
    params, step = run.eval_params(state), int(state.step)
    n = min(a.n, len(run.test_split))
    images = run.test_split.get(np.arange(n))["image"]
    classical = baselines.classical_bpd(images) if run.model.vocab_size <= 256 else {}
    print(f"{config.data.name}: {n} test images, step {step}; classical bpd:", end=" ")
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
    head = {"data": config.data.name, "checkpoint_step": step, "classical_bpd": classical}
    write_results(a.out, __file__, [head, *rows])


if __name__ == "__main__":
    main()
