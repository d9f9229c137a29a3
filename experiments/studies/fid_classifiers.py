"""Train (or load from the cache) the FID feature classifiers and report their test accuracy.

    python experiments/studies/fid_classifiers.py --data=digits,mnist,fashion_mnist \
        --out=results/fid_classifiers.json

Each is `vdm.eval.fid.FeatureNet` trained on the data's training split with the recipe in
`vdm.eval.fid.RECIPES` (fixed seed), cached under the user's cache directory by a hash of the
recipe and the data; the accuracy is on the whole test split. Also reports the train-vs-test
FID at N = min(test size, 10,000): the floor of any model's FID at that N.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from experiments.common import write_results
from vdm import data  # noqa: E402
from vdm.eval import fid  # noqa: E402
from vdm.run.config import load_file  # noqa: E402

CONFIGS = {"digits": "digits", "mnist": "mnist", "fashion_mnist": "fashion_mnist"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits,mnist,fashion_mnist")
    p.add_argument("--out", default="results/fid_classifiers.json")
    a = p.parse_args(argv)
    rows = []
    for name in a.data.split(","):
        config = load_file(CONFIGS[name])
        t0 = time.perf_counter()
        clf = fid.load_or_train(config.data, log=lambda line: print(line, flush=True))
        seconds = time.perf_counter() - t0
        train = data.load_split(config.data, "train")
        test = data.load_split(config.data, "test")
        n = min(len(test), len(train), 10_000)
        floor = fid.fid(
            clf.features(train.get(np.arange(n))["image"]),
            clf.features(test.get(np.arange(n))["image"]),
        )
        row = {
            "data": name,
            "test_accuracy": clf.info["test_accuracy"],
            "n_test": clf.info["n_test"],
            "recipe": clf.info["recipe"],
            "train_vs_test_fid": floor,
            "fid_n": n,
            "seconds_to_train_or_load": seconds,
        }
        rows.append(row)
        print(
            f"{name}: test accuracy {100 * row['test_accuracy']:.2f}% (n={row['n_test']}), "
            f"train-vs-test FID {floor:.3f} at N = {n}, {seconds:.0f} s",
            flush=True,
        )
    write_results(a.out, __file__, rows)


if __name__ == "__main__":
    main()
