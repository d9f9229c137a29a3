"""Training-step benchmark: steps/s, images/s, compile time, GFLOP/s, peak RSS.

    python experiments/benchmarks/bench_train.py [--cases digits,fashion_mnist,cifar_small] \
        [--steps 50] [--variants base,remat,bf16] [--batch 64] [--out results/bench_train.json]
    python experiments/benchmarks/bench_train.py --official DIR [--rounds 3] [--steps 10] \
        [--batch 16] [--interleave]

`--official DIR`: the project's train step against google-research/vdm's, side by side on the
official ScoreUNet configuration (`official_cifar`: 32×32×3, n_embd 64, n_layer 4, learned
scalar γ from −13.3/5, Fourier features, dropout 0.1, antithetic t; AdamW 2e-4, β₂ 0.99, weight
decay 0.01, 100 warm-up steps; EMA 0.9999). DIR holds the official, unmodified `model_vdm.py`
(fetched by the user, with `chex` installed; nothing of it is in this repository); its train
step is the official one (experiment.py's `train_step` and `loss_fn`, train_state.py's EMA)
written out for one device. Each side runs in its own subprocess, alternated over `--rounds`
(the order swapped every round), once with both sides under the project's XLA:CPU flag and once
with both under jaxlib's defaults, so each ratio compares the code alone under the same runtime.
The flag's own effect is reported on its own line (each side's throughput with the flag over
without it), and the ratio "as shipped" (project with the flag, official without) beside it.
Both sides report XLA's cost analysis of the compiled step (GFLOP/step), so equal work per step
is measured, not assumed. `--interleave` adds both steps in one process, timed in alternating
turns. Writes `--out` (JSON) and a Markdown table beside it.

Each (case, variant) runs in its own subprocess (so peak RSS is its own) with the config's
real model and a batch of the config's shape; FLOPs come from XLA's cost analysis of the
compiled step. Variants: `base` (the config), `remat` (model.remat=True), `bf16`
(model.dtype=bfloat16); every other variant is also reported as ratios to `base` measured in
the same run (throughput, peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

USER_XLA_FLAGS = os.environ.get("XLA_FLAGS")  # before `import vdm` adds its CPU defaults


from experiments import common as bench_io  # noqa: E402
from experiments.common import ROOT  # noqa: E402

CASES = ("digits", "fashion_mnist", "cifar_small", "official_cifar", "paper")


def case_config(name: str):
    from vdm.configs import cifar10, digits, fashion_mnist

    if name == "digits":
        return digits.get_config(), (8, 8, 1), 10
    if name == "fashion_mnist":
        return fashion_mnist.get_config(), (28, 28, 1), 10
    if name == "cifar_small":  # the CIFAR-10 ScoreUNet, shrunk to fit a CPU benchmark
        c = cifar10.get_config()
        c.model.n_embd, c.model.n_layer, c.training.batch_size = 64, 4, 32
        return c, (32, 32, 3), 10
    if name == "official_cifar":  # google-research/vdm's ScoreUNet at a CPU size (--official)
        c = cifar10.get_config()
        c.model.n_embd, c.model.n_layer, c.training.batch_size = 64, 4, 16
        c.schedule.name = "learned_scalar"
        c.optimizer.warmup_steps = 100
        return c, (32, 32, 3), 10
    if name == "paper":  # the paper's CIFAR-10 ScoreUNet (n_embd 128, n_layer 32, γ_η), batch 8
        c = cifar10.get_config()
        c.training.batch_size = 8
        c.optimizer.warmup_steps = 100
        return c, (32, 32, 3), 10
    raise ValueError(f"--cases must be drawn from {CASES}, got {name!r}")


VARIANTS = {
    "base": {},
    "remat": {"remat": True},
    "bf16": {"dtype": "bfloat16"},
    "scan": {"scan_blocks": "true"},
    "unrolled": {"scan_blocks": "false"},
    "scan_remat": {"scan_blocks": "true", "remat": True},
    "unrolled_remat": {"scan_blocks": "false", "remat": True},
}


def runtime_env(project_defaults: bool) -> dict:
    """The environment of a measuring subprocess: with `vdm`'s XLA:CPU defaults
    (`vdm/runtime.py`, what `import vdm` sets) or without them (jaxlib's own defaults, what
    a user of the official code runs with); the user's own XLA_FLAGS either way."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if USER_XLA_FLAGS is not None:
        env["XLA_FLAGS"] = USER_XLA_FLAGS
    env["VDM_XLA_CPU_DEFAULTS"] = "1" if project_defaults else "0"
    return env


def compile_and_time(step, state, batch, key, steps: int):
    """(compiled step, compile seconds, seconds for `steps` steps after one warm-up, last
    metrics): the one timing both sides of every benchmark here share."""
    import jax

    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch, key)  # warm-up
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, batch, key)
    jax.block_until_ready(m)
    return compiled, compile_s, time.perf_counter() - t0, m


def _gflop(compiled) -> float:
    """GFLOP of one call of a compiled function, by XLA's cost analysis (0 if it has none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) / 1e9 if cost else 0.0


def build_case(name: str, variant: str = "base", batch: int = 0, group_norm: str = "flax"):
    """(train step, state, batch, key, config, image shape, n_params) of the project's case;
    `group_norm` picks the ScoreUNet's GroupNorm form (bench_group_norm.py)."""
    import jax
    import numpy as np

    from vdm import sharding
    from vdm.model import VDM, count_params
    from vdm.run import train_step

    c, shape, num_classes = case_config(name)
    c.training.steps_per_call = 1
    c.model.update(VARIANTS[variant])
    if batch:
        c.training.batch_size = batch
    model = VDM.from_config(c, num_classes).with_group_norm(group_norm)
    optimizer = train_step.make_optimizer(c.optimizer, c.training.num_steps)
    mesh = sharding.make_mesh()
    n_dims = int(np.prod(shape))
    step = train_step.make_train_step(model, optimizer, c, n_dims, mesh)
    init = jax.jit(
        lambda k: train_step.init_state(model, optimizer, k, shape),
        out_shardings=sharding.replicated(mesh),
    )
    state = init(jax.random.key(0))
    rng = np.random.default_rng(0)
    b = c.training.batch_size
    batch = {
        "image": rng.integers(0, c.data.vocab_size, (1, b, *shape), dtype=np.uint8),
        "label": rng.integers(0, num_classes, (1, b), dtype=np.int32),
    }
    batch = sharding.shard_batch(batch, mesh, leading=1)
    return step, state, batch, jax.random.key(1), c, shape, count_params(state.params)


def alternate(sides: dict, steps: int, rounds: int) -> dict[str, list[float]]:
    """Steps/s per turn of each side's compiled train step, timed in alternation in this
    process: `sides` {name: [compiled, state, batch, key]}, each already warmed up; `steps`
    steps per turn, `rounds` turns each, the order reversed every turn."""
    import jax

    names = list(sides)
    rates = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            compiled, state, data, key = sides[name]
            t0 = time.perf_counter()
            for _ in range(steps):
                state, m = compiled(state, data, key)
            jax.block_until_ready(m)
            rates[name].append(steps / (time.perf_counter() - t0))
            sides[name][1] = state
    return rates


def ab_row(case: str, sides: dict, steps: int, rounds: int, ratio: tuple[str, str]) -> dict:
    """`alternate` two forms' warmed-up steps and print and return the row: steps/s per turn
    of each, and the ratio of the medians, ratio[0] over ratio[1]."""
    import statistics

    rates = alternate(sides, steps, rounds)
    med = {form: statistics.median(v) for form, v in rates.items()}
    a, b = ratio
    row = {
        "case": case,
        "steps_per_turn": steps,
        "turns": rounds,
        **{f"{form}_steps_per_s": rates[form] for form in sides},
        f"{a}_over_{b}": med[a] / med[b],
    }
    print(
        f"{case}: {a} {med[a]:.3f} steps/s, {b} {med[b]:.3f}: {a} / {b} {med[a] / med[b]:.3f}×",
        flush=True,
    )
    return row


def run_case(name: str, steps: int, variant: str = "base", batch: int = 0) -> dict:
    import jax

    step, state, batch, key, c, shape, n_params = build_case(name, variant, batch)
    compiled, compile_s, dt, _ = compile_and_time(step, state, batch, key, steps)
    flops = _gflop(compiled) * 1e9
    return {
        "case": name,
        "variant": variant,
        "image_shape": list(shape),
        "batch_size": c.training.batch_size,
        "n_params": n_params,
        "steps_per_s": steps / dt,
        "images_per_s": steps * c.training.batch_size / dt,
        "compile_s": compile_s,
        "gflop_per_step": flops / 1e9,
        "achieved_gflop_per_s": flops * steps / dt / 1e9,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def build_official(directory: str, batch: int = 0, case: str = "official_cifar", parts=False):
    """(train step, state, images, key, batch size, n_params): google-research/vdm's train
    step on `official_cifar` (its learned scalar γ) or `paper` (its γ_η network); with
    `parts`, also (model, loss_fn) for the eval and sample functions."""
    sys.path.insert(0, os.path.abspath(directory))
    import jax
    import jax.numpy as jnp
    import model_vdm  # the official file, unmodified
    import numpy as np
    import optax

    c, shape, _ = case_config(case)
    b = batch or c.training.batch_size
    cfg = model_vdm.VDMConfig(
        vocab_size=256,
        sample_softmax=False,
        antithetic_time_sampling=True,
        with_fourier_features=True,
        with_attention=False,
        gamma_type="learnable_nnet" if case == "paper" else "learnable_scalar",
        gamma_min=-13.3,
        gamma_max=5.0,
        sm_n_timesteps=0,
        sm_n_embd=c.model.n_embd,
        sm_n_layer=c.model.n_layer,
        sm_pdrop=0.1,
    )
    model = model_vdm.VDM(cfg)
    k_init, k_sample = jax.random.split(jax.random.key(0))
    inputs = {"images": jnp.zeros((2, *shape), "uint8"), "conditioning": jnp.zeros((2,))}
    params = model.init({"params": k_init, "sample": k_sample}, **inputs)["params"]
    o = c.optimizer
    lr = optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps)  # official warm-up
    tx = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    ema_rate = 1.0 - o.ema_decay
    rescale = 1.0 / (np.prod(shape) * np.log(2.0))

    def loss_fn(params, images, rng, is_train=True):  # experiment_vdm.Experiment_VDM.loss_fn
        rng, sample_rng = jax.random.split(rng)
        _, dropout_rng = jax.random.split(rng)
        out = model.apply(
            {"params": params},
            images=images,
            conditioning=jnp.zeros((images.shape[0],)),
            rngs={"sample": sample_rng, "dropout": dropout_rng},
            deterministic=not is_train,
        )
        terms = [jnp.mean(v) * rescale for v in (out.loss_klz, out.loss_recon, out.loss_diff)]
        return sum(terms), {"bpd": sum(terms), "var0": out.var_0, "var1": out.var_1}

    @jax.jit
    def train_step(state, images, base_rng):  # experiment.Experiment.train_step, one device
        step, params, ema, opt_state = state
        rng = jax.random.fold_in(base_rng, step)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, images, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda x, y: x + ema_rate * (y - x), ema, params)
        return (step + 1, params, ema, opt_state), metrics

    state = (jnp.zeros((), jnp.int32), params, params, tx.init(params))
    images = np.random.default_rng(0).integers(0, 256, (b, *shape), dtype=np.uint8)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    if parts:
        return train_step, state, images, jax.random.key(1), b, n_params, model, loss_fn
    return train_step, state, images, jax.random.key(1), b, n_params


def run_official(directory: str, steps: int, batch: int = 0) -> dict:
    """google-research/vdm's train step on `official_cifar`, timed like `run_case`."""
    import jax

    train_step, state, images, key, b, n_params = build_official(directory, batch)
    compiled, compile_s, dt, m = compile_and_time(train_step, state, images, key, steps)
    return {
        "case": "official_cifar",
        "variant": "google-research/vdm",
        "image_shape": [32, 32, 3],
        "batch_size": b,
        "n_params": n_params,
        "steps_per_s": steps / dt,
        "images_per_s": steps * b / dt,
        "compile_s": compile_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gflop_per_step": _gflop(compiled),
        "train_bpd_last": float(m["bpd"]),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def interleaved(directory: str, rounds: int, steps: int, batch: int = 0) -> dict:
    """Both train steps compiled in one process and timed in alternation, `steps` steps per
    turn, 2 × `rounds` turns each (the order swapped every round): whatever else loads the
    machine loads both sides alike, so the ratio of median throughputs is the robust one."""
    import jax
    import numpy as np

    sides = {}
    for side, built in (
        ("project", build_case("official_cifar", "base", batch)[:4]),
        ("official", build_official(directory, batch)[:4]),
    ):
        step, state, data, key = built
        compiled = step.lower(state, data, key).compile()
        state, m = compiled(state, data, key)  # warm-up
        jax.block_until_ready(m)
        sides[side] = [compiled, state, data, key]
    seconds = {"project": [], "official": []}
    for r in range(2 * rounds):
        for side in ("project", "official") if r % 2 == 0 else ("official", "project"):
            compiled, state, data, key = sides[side]
            t0 = time.perf_counter()
            for _ in range(steps):
                state, m = compiled(state, data, key)
            jax.block_until_ready(m)
            seconds[side].append((time.perf_counter() - t0) / steps)
            sides[side][1] = state
    p, o = (float(np.median(seconds[k])) for k in ("project", "official"))
    return {
        "project_steps_per_s": 1 / p,
        "official_steps_per_s": 1 / o,
        "throughput_ratio": o / p,
        "turns": 2 * rounds,
        "steps_per_turn": steps,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _median(values) -> float:
    import numpy as np

    return float(np.median(values))


def side_by_side(
    directory: str, rounds: int, steps: int, batch: int, out: str, interleave: bool = False
) -> dict:
    """Project and official train steps alternated over `rounds`, each in its own process,
    once with both sides under `vdm`'s XLA:CPU defaults and once with both under jaxlib's:
    like for like, so each runtime's ratio is the code's alone. The flag's own effect is its
    own line: each side's throughput under the flag over its throughput without it. With
    `interleave`, both steps also run in one process under each runtime, in alternating
    turns (load from other jobs falls on both alike)."""
    if not os.path.exists(os.path.join(directory, "model_vdm.py")):
        sys.exit(f"--official: {directory!r} holds no model_vdm.py (google-research/vdm)")
    runtimes = {"vdm runtime": True, "jaxlib defaults": False}
    rows = []
    for name, project_defaults in runtimes.items():
        env = runtime_env(project_defaults)
        sides = {
            "project": ["--one", "official_cifar:base"],
            "official": ["--one-official", directory],
        }
        for r in range(rounds):
            order = ["project", "official"] if r % 2 == 0 else ["official", "project"]
            got = {}
            for side in order:
                cmd = [sys.executable, __file__, *sides[side], "--steps", str(steps)]
                got[side] = bench_io.run_json(
                    cmd + ["--batch", str(batch)], f"{side} side", env=env
                )
            p, o = got["project"], got["official"]
            row = {
                "runtime": name,
                "round": r,
                "order": order,
                "project": p,
                "official": o,
                "throughput_ratio": p["steps_per_s"] / o["steps_per_s"],
                "compile_ratio": p["compile_s"] / o["compile_s"],
                "peak_rss_ratio": p["peak_rss_mib"] / o["peak_rss_mib"],
                "gflop_ratio": p["gflop_per_step"] / o["gflop_per_step"],
            }
            rows.append(row)
            print(
                f"{name}, round {r}: project {p['steps_per_s']:.3f} steps/s, official "
                f"{o['steps_per_s']:.3f} → {row['throughput_ratio']:.2f}× throughput, "
                f"{row['compile_ratio']:.2f}× compile, {row['peak_rss_ratio']:.2f}× peak RSS, "
                f"GFLOP/step {p['gflop_per_step']:.1f} vs {o['gflop_per_step']:.1f}",
                flush=True,
            )
    summary = {}
    for name in runtimes:
        mine = [r for r in rows if r["runtime"] == name]
        summary[name] = {k: _median([r[k] for r in mine]) for k in mine[0] if k.endswith("ratio")}
        for side in ("project", "official"):
            summary[name][f"{side}_steps_per_s"] = _median([r[side]["steps_per_s"] for r in mine])
    flag = {
        side: summary["vdm runtime"][f"{side}_steps_per_s"]
        / summary["jaxlib defaults"][f"{side}_steps_per_s"]
        for side in ("project", "official")
    }
    as_shipped = (
        summary["vdm runtime"]["project_steps_per_s"]
        / summary["jaxlib defaults"]["official_steps_per_s"]
    )
    result = {"rounds": rows, "median": summary, "flag_speedup": flag, "as_shipped": as_shipped}
    if interleave:
        result["interleaved"] = {}
        for name, project_defaults in runtimes.items():
            cmd = [sys.executable, __file__, "--one-interleaved", directory, "--steps", str(steps)]
            cmd += ["--rounds", str(rounds), "--batch", str(batch)]
            i = bench_io.run_json(cmd, "interleaved", env=runtime_env(project_defaults))
            result["interleaved"][name] = i
    bench_io.write_results(out, __file__, [result])
    lines = [
        "| runtime (both sides) | project steps/s | official steps/s | throughput | compile "
        "| peak RSS | GFLOP/step ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in summary.items():
        lines.append(
            f"| {name}, median of {rounds} alternated process pairs | "
            f"{m['project_steps_per_s']:.3f} | {m['official_steps_per_s']:.3f} | "
            f"{m['throughput_ratio']:.2f}× | {m['compile_ratio']:.2f}× | "
            f"{m['peak_rss_ratio']:.2f}× | {m['gflop_ratio']:.3f} |"
        )
    for name, i in result.get("interleaved", {}).items():
        lines.append(
            f"| {name}, interleaved in one process | {i['project_steps_per_s']:.3f} | "
            f"{i['official_steps_per_s']:.3f} | {i['throughput_ratio']:.2f}× | | | |"
        )
    lines += [
        "",
        f"The XLA:CPU flag alone (`vdm/runtime.py`, anyone can set it): project "
        f"{flag['project']:.2f}×, official {flag['official']:.2f}× its throughput without it.",
        f"As shipped (project with the flag, official without): {as_shipped:.2f}×.",
    ]
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--variants", default="base")
    p.add_argument("--batch", type=int, default=0, help="override the config's batch size")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_train.json"))
    p.add_argument("--official", help="directory holding google-research/vdm's model_vdm.py")
    p.add_argument("--rounds", type=int, default=3, help="--official: alternated rounds")
    p.add_argument(
        "--interleave",
        action="store_true",
        help="--official: also time both steps in one process, in alternating turns",
    )
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: case:variant, print JSON
    p.add_argument("--one-official", help=argparse.SUPPRESS)  # internal: the official side
    p.add_argument("--one-interleaved", help=argparse.SUPPRESS)  # internal: both, one process
    args = p.parse_args()
    if args.one_interleaved:
        print(json.dumps(interleaved(args.one_interleaved, args.rounds, args.steps, args.batch)))
        return
    if args.one_official:
        print(json.dumps(run_official(args.one_official, args.steps, args.batch)))
        return
    if args.official:
        out = args.out
        if out == p.get_default("out"):
            out = os.path.join(ROOT, "results", "bench_train_official.json")
        side_by_side(args.official, args.rounds, args.steps, args.batch, out, args.interleave)
        return
    if args.one:
        name, variant = args.one.split(":")
        print(json.dumps(run_case(name, args.steps, variant, args.batch)))
        return
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"--variants must be drawn from {list(VARIANTS)}, got {v!r}")
    results = []
    for name in args.cases.split(","):
        case_config(name)  # validate the name before spawning
        base = None
        for variant in variants:
            r = bench_io.run_json(
                [sys.executable, __file__, "--one", f"{name}:{variant}"]
                + ["--steps", str(args.steps), "--batch", str(args.batch)],
                f"case {name}:{variant}",
            )
            if variant == "base":
                base = r
            elif base:
                r["throughput_vs_base"] = r["steps_per_s"] / base["steps_per_s"]
                r["peak_rss_vs_base"] = r["peak_rss_mib"] / base["peak_rss_mib"]
            results.append(r)
            ratios = (
                f"  {r['throughput_vs_base']:.2f}× base throughput, "
                f"{r['peak_rss_vs_base']:.2f}× base peak RSS"
                if "throughput_vs_base" in r
                else ""
            )
            print(
                f"{name:14s} {variant:6s} {r['steps_per_s']:8.2f} steps/s "
                f"{r['images_per_s']:9.1f} img/s compile {r['compile_s']:5.1f} s "
                f"{r['achieved_gflop_per_s']:7.2f} GFLOP/s peak RSS {r['peak_rss_mib']:7.0f} MiB "
                f"({r['n_params']:,} params){ratios}",
                flush=True,
            )
    bench_io.write_results(args.out, __file__, results)


if __name__ == "__main__":
    main()
