"""The residual block's 1×1 shortcut (2·n_embd → n_embd on the way up) two ways: as the
ScoreUNet computes it, a 1×1 convolution (`ResnetBlock`'s `skip`), against a matrix product
over the channels (google-research/vdm's `nin_shortcut`, a Dense layer), at the official
configuration's shape.

    python experiments/benchmarks/bench_shortcut.py [--batch 16] [--size 32] [--channels 128,64] \
        [--rounds 7] [--out results/bench_shortcut.json]
    python experiments/benchmarks/bench_shortcut.py --whole-step official_cifar [--steps 2] \
        [--rounds 3] [--batch 16]

Both forms are compiled in one process, forward and forward + gradient (w.r.t. the kernel
and the input), and timed in alternation, `--rounds` turns each. With `--whole-step CASES`
(bench_train.py's cases) it times whole train steps instead, `--steps` per turn: the
ScoreUNet as it is against the same network with every `skip` convolution computed as the
matrix product from the same kernel (a flax method interceptor, in this script only; the
library's network is unchanged). Runs under the environment it is given:
`VDM_XLA_CPU_DEFAULTS=0` for jaxlib's defaults, where XLA:CPU hands convolutions to YNNPACK.
Prints and saves the median milliseconds per form and part; with `--whole-step`, the steps/s
of every turn, the ratio of the medians and the compiled steps' convolution counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import vdm  # noqa: F401  (its XLA:CPU defaults, before JAX starts a backend)
from experiments import common as bench_io
from experiments.common import ROOT

FORMS = ("conv_1x1", "matmul")


def shortcut(form: str, kernel, x):
    """x (b, h, w, c_in) through the (1, 1, c_in, c_out) kernel, as `form` computes it."""
    import jax
    import jax.numpy as jnp

    if form == "conv_1x1":
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    return jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0])


def as_matmul(next_fun, args, kwargs, context):
    """A flax interceptor: a ResnetBlock's `skip` (1×1 convolution) as a matrix product with
    its own kernel and bias; every other call as it is."""
    import flax.linen as nn

    module = context.module
    if not (
        isinstance(module, nn.Conv) and module.name == "skip" and context.method_name == "__call__"
    ):
        return next_fun(*args, **kwargs)
    kernel = module.get_variable("params", "kernel")
    bias = module.get_variable("params", "bias")  # None without one (use_bias=False)
    promote = getattr(module, "promote_dtype", nn.dtypes.promote_dtype)  # as nn.Conv does
    x, kernel, bias = promote(args[0], kernel, bias, dtype=module.dtype)
    y = shortcut("matmul", kernel, x)
    return y if bias is None else y + bias


def whole_steps(case: str, steps: int, rounds: int, batch: int) -> dict:
    """Steps/s of the case's train step as it is and with the skip as a matrix product,
    alternated in this process."""
    import contextlib

    import flax.linen as nn
    import jax

    from experiments.benchmarks.bench_train import ab_row, build_case

    contexts = {
        "conv_1x1": contextlib.nullcontext,
        "matmul": lambda: nn.intercept_methods(as_matmul),
    }
    sides, n_conv = {}, {}
    for form in FORMS:
        step, state, data, key, *_ = build_case(case, "base", batch)
        with contexts[form]():  # the step is traced here, so the interceptor is in its program
            compiled = step.lower(state, data, key).compile()
        n_conv[form] = compiled.as_text().count(" convolution(")
        state, m = compiled(state, data, key)  # warm-up
        jax.block_until_ready(m)
        sides[form] = [compiled, state, data, key]
        print(f"{case} {form}: {n_conv[form]} convolutions in the compiled step", flush=True)
    if n_conv["matmul"] >= n_conv["conv_1x1"]:
        raise SystemExit(f"{case}: the interceptor replaced no convolution ({n_conv})")
    row = ab_row(case, sides, steps, rounds, ratio=("matmul", "conv_1x1"))
    row.update({f"convolutions_{form}": n_conv[form] for form in FORMS})
    row["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return row


def timed(fn, *args) -> float:
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def main(argv=None):
    import jax
    import jax.numpy as jnp

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", default="128,64", help="c_in,c_out")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--whole-step", default="", help="bench_train.py cases: whole train steps")
    p.add_argument("--steps", type=int, default=2, help="--whole-step: steps per turn")
    p.add_argument("--out", default="", help="results/bench_shortcut[_whole_step].json")
    a = p.parse_args(argv)
    name = "bench_shortcut_whole_step.json" if a.whole_step else "bench_shortcut.json"
    a.out = a.out or os.path.join(ROOT, "results", name)
    if a.whole_step:
        rows = []
        for case in bench_io.csv_list(a.whole_step):
            rows.append(whole_steps(case, a.steps, a.rounds, a.batch))
        bench_io.write_results(a.out, __file__, rows)
        return
    c_in, c_out = bench_io.csv_list(a.channels, int)
    x = jax.random.normal(jax.random.key(0), (a.batch, a.size, a.size, c_in))
    kernel = jax.random.normal(jax.random.key(1), (1, 1, c_in, c_out)) / c_in**0.5
    fns = {}
    for form in FORMS:

        def loss(k, x, form=form):
            return jnp.sum(shortcut(form, k, x) ** 2)

        fns[form] = {
            "forward": jax.jit(lambda k, x, form=form: shortcut(form, k, x)),
            "forward_and_gradient": jax.jit(jax.grad(loss, argnums=(0, 1))),
        }
        for fn in fns[form].values():
            timed(fn, kernel, x)  # compile and warm up
    ms = {form: {part: [] for part in fns[form]} for form in FORMS}
    for r in range(a.rounds):
        for form in FORMS if r % 2 == 0 else FORMS[::-1]:
            for part, fn in fns[form].items():
                ms[form][part].append(1e3 * timed(fn, kernel, x))
    rows = []
    for part in ("forward", "forward_and_gradient"):
        med = {form: statistics.median(ms[form][part]) for form in FORMS}
        row = {"part": part, **{f"{f}_ms": round(med[f], 2) for f in FORMS}}
        row["conv_over_matmul"] = round(med["conv_1x1"] / med["matmul"], 2)
        row["xla_flags"] = os.environ.get("XLA_FLAGS", "")
        rows.append(row)
        print(
            f"{part:22s} conv 1×1 {med['conv_1x1']:8.1f} ms   matmul {med['matmul']:8.1f} ms   "
            f"conv / matmul {row['conv_over_matmul']:.2f}×"
        )
    bench_io.write_results(a.out, __file__, rows)


if __name__ == "__main__":
    main()
