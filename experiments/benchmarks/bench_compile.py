"""Compile time and memory at the paper's size: the project (blocks scanned or unrolled, with
and without remat) against google-research/vdm, each function in its own process.

    python experiments/benchmarks/bench_compile.py --official DIR [--rounds 2] [--batch 8] \
        [--functions train,eval,sample] [--variants scan,unrolled] \
        [--memory-variants scan_remat,unrolled_remat] [--out results/bench_compile.json]

The case is `paper` (experiments/benchmarks/bench_train.py): the paper's CIFAR-10 ScoreUNet,
n_embd 128, n_layer 32, Fourier features, attention in the middle, the learned γ_η network
(the official `learnable_nnet`), batch 8. DIR holds the official, unmodified `model_vdm.py`
(fetched by the user, with `chex` installed; nothing of it is in this repository).

Functions, each as its side jits it:
- `train`: one train step (loss, gradient, AdamW, EMA): the project's `make_train_step`, the
  official experiment's `train_step` (bench_train.py's `build_official`).
- `eval`: the ELBO of one batch: the project's `likelihood.make_eval_step`, the official
  `loss_fn(..., is_train=False)` under `jax.jit`.
- `sample`: 1,000 ancestral steps and the decoder: the project's `generate.make_sampler` with
  the config's sampler, the official `sample_fn` (a `fori_loop` over `model.sample`, then
  `generate_x`), one device.
- `pf_ode` (project only): the PF-ODE bpd function `likelihood.make_pf_ode_step`.

Each (side, function) runs in a fresh subprocess (no compilation cache, no warm JIT), the
sides alternated over `--rounds` with the order swapped every round, all under the same
runtime flags (the project's XLA:CPU defaults, `vdm/runtime.py`, on both sides). Reported:
trace + lowering seconds, XLA compile seconds, their sum, and XLA's memory analysis of the
compiled function (arguments, outputs, temporaries; peak = arguments + outputs + temporaries
− aliased). `--memory-variants` are compiled once each for the memory table only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from experiments import common as bench_io
from experiments.benchmarks.bench_train import build_case, build_official, runtime_env
from experiments.common import ROOT

FUNCTIONS = ("train", "eval", "sample", "pf_ode")


def _measure(fn, *args) -> dict:
    """Lower and compile `fn(*args)`; seconds of each and XLA's memory analysis, in MiB."""
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out = {"lower_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0}
    mem = compiled.memory_analysis()
    if mem is not None:
        mib = 1024**2
        for k in ("argument", "output", "temp", "alias", "generated_code"):
            out[f"{k}_mib"] = getattr(mem, f"{k}_size_in_bytes") / mib
        out["peak_mib"] = out["argument_mib"] + out["output_mib"] + out["temp_mib"]
        out["peak_mib"] -= out["alias_mib"]
    return out


def project(function: str, variant: str, batch: int) -> dict:
    """The project's `function` on the paper case under `variant` (bench_train.VARIANTS)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vdm import sharding
    from vdm.eval import likelihood
    from vdm.model import VDM
    from vdm.run import generate

    step, state, data, key, c, shape, n_params = build_case("paper", variant, batch)
    model, mesh, n_dims = VDM.from_config(c, 10), sharding.make_mesh(), int(np.prod(shape))
    b = c.training.batch_size
    if function == "train":
        got = _measure(step, state, data, key)
    elif function == "eval":
        fn = likelihood.make_eval_step(model, n_dims, mesh)
        images = {"image": data["image"][0], "mask": jnp.ones((b,), jnp.float32)}
        got = _measure(fn, state.ema_params, sharding.shard_batch(images, mesh), key)
    elif function == "sample":
        fn = generate.make_sampler(model, c.sample, shape, b, mesh)
        got = _measure(fn, state.ema_params, key, jnp.zeros((), jnp.int32), jnp.zeros((b,), int))
    elif function == "pf_ode":
        fn = likelihood.make_pf_ode_step(model, jax.random.key(3), mesh)
        got = _measure(fn, state.ema_params, data["image"][0], jnp.zeros((), jnp.int32))
    else:
        raise SystemExit(f"--functions must be drawn from {FUNCTIONS}, got {function!r}")
    settings = {k: c.model[k] for k in ("scan_blocks", "remat")}
    return {"side": "project", "variant": variant, **settings, "n_params": n_params, **got}


def official(function: str, directory: str, batch: int) -> dict:
    """google-research/vdm's `function` on the paper case."""
    import jax
    import jax.numpy as jnp

    built = build_official(directory, batch, case="paper", parts=True)
    train_step, state, images, key, b, n_params, model, loss_fn = built
    params = state[1]
    if function == "train":
        got = _measure(train_step, state, images, key)
    elif function == "eval":
        got = _measure(
            jax.jit(lambda p, x, k: loss_fn(p, x, k, is_train=False)), params, images, key
        )
    elif function == "sample":

        def sample_fn(params, rng):  # experiment_vdm.Experiment_VDM.sample_fn, one device
            cond = jnp.zeros((b,), "uint8")
            rng, sample_rng = jax.random.split(rng)
            z = jax.random.normal(sample_rng, images.shape)

            def body(i, z_t):
                return model.apply(
                    {"params": params}, i=i, T=1000, z_t=z_t, conditioning=cond, rng=rng,
                    method=model.sample,
                )  # fmt: skip

            z_0 = jax.lax.fori_loop(0, 1000, body, z)
            return model.apply({"params": params}, z_0=z_0, method=model.generate_x)

        got = _measure(jax.jit(sample_fn), params, key)
    else:
        raise SystemExit(f"the official side has no {function!r} function here")
    return {"side": "official", "variant": "google-research/vdm", "n_params": n_params, **got}


def one(spec: str, directory: str | None, batch: int) -> dict:
    """`side:function[:variant]` measured in this process."""
    side, function, *variant = spec.split(":")
    if side == "official":
        return official(function, directory, batch)
    return project(function, variant[0] if variant else "base", batch)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--official", help="directory holding google-research/vdm's model_vdm.py")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--functions", default="train,eval,sample,pf_ode")
    p.add_argument("--variants", default="scan,unrolled")
    p.add_argument("--memory-variants", default="scan_remat,unrolled_remat")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_compile.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: side:function[:variant]
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.one, a.official, a.batch)))
        return None
    if a.official and not os.path.exists(os.path.join(a.official, "model_vdm.py")):
        sys.exit(f"--official: {a.official!r} holds no model_vdm.py (google-research/vdm)")
    functions = bench_io.csv_list(a.functions)
    for f in functions:
        if f not in FUNCTIONS:
            sys.exit(f"--functions must be drawn from {list(FUNCTIONS)}, got {f!r}")
    env = runtime_env(project_defaults=True)

    def measure(spec: str) -> dict:
        cmd = [sys.executable, __file__, "--one", spec, "--batch", str(a.batch)]
        cmd += ["--official", a.official] if a.official else []
        row = bench_io.run_json(cmd, spec, env=env)
        print(f"{spec}: {row['total_s']:.1f} s ({row['compile_s']:.1f} s XLA), "
              f"peak {row.get('peak_mib', float('nan')):.0f} MiB", flush=True)  # fmt: skip
        return {"spec": spec, "function": spec.split(":")[1], **row}

    rows = []
    for r in range(a.rounds):
        for function in functions:
            specs = [f"project:{function}:{v}" for v in bench_io.csv_list(a.variants)]
            if a.official and function != "pf_ode":
                specs.append(f"official:{function}")
            for spec in specs if r % 2 == 0 else specs[::-1]:
                rows.append({"round": r, **measure(spec)})
    for v in bench_io.csv_list(a.memory_variants):
        rows.append({"round": "memory", **measure(f"project:train:{v}")})
    bench_io.write_results(a.out, __file__, rows)
    print(table(rows))
    return rows


def table(rows: list[dict]) -> str:
    """Median seconds per (function, side), the ratio to the official side, and memory."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["function"], r["variant"]), []).append(r)
    out = [
        "| function | side | lower + compile s (median) | XLA compile s | vs official "
        "| peak MiB | temp MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for (function, variant), rs in groups.items():
        total = float(np.median([r["total_s"] for r in rs]))
        ref = groups.get((function, "google-research/vdm"))
        ratio = total / float(np.median([r["total_s"] for r in ref])) if ref else None
        out.append(
            f"| {function} | {variant} | {total:.1f} | "
            f"{float(np.median([r['compile_s'] for r in rs])):.1f} | "
            f"{f'{ratio:.2f}×' if ratio else ''} | {rs[0].get('peak_mib', 0):.0f} | "
            f"{rs[0].get('temp_mib', 0):.0f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
