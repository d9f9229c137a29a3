"""Sampler benchmark: quality against NFE on a Gaussian mixture with the exact model, wall
time per network evaluation for a digits model, and FID against NFE for a trained one.

    python experiments/benchmarks/bench_samplers.py [--n 4000] [--digits-workdir runs/digits]
        [--fid-seeds 0,1] [--out results/bench_samplers]

Quality: the mean true log-density of the samples (data itself scores `data_logp`) and the
sliced Wasserstein distance to fresh data (128 random directions; two fresh data sets score
`data_sw`). With a trained digits run: FID of as many samples as test images (297) against
the test split, in the features of the digits classifier (vdm/eval/fid.py), mean ± SE over the
sample seeds, beside NFE and the train-vs-test floor. Writes `<out>.json`, `<out>.md` (table)
and `<out>.png` (plot).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import ROOT
from vdm import samplers  # noqa: E402
from vdm.core import schedules  # noqa: E402
from vdm.core.gmm import GaussianMixture  # noqa: E402

SWEEP = {
    "ancestral": [("steps", s, {}) for s in (10, 25, 50, 100, 250, 500)],
    "ddim": [("steps", s, {"eta": 0.0}) for s in (5, 10, 20, 50, 100)],
    "euler_maruyama": [("steps", s, {}) for s in (25, 50, 100, 250, 500)],
    "pc": [("steps", s, {"n_corrector": 1}) for s in (10, 25, 50, 125, 250)],
    "pf_ode (heun)": [("steps", s, {"solver": "heun"}) for s in (5, 10, 25, 50, 100)],
    "pf_ode (tsit5, adaptive)": [
        ("rtol", r, {"solver": "tsit5", "steps": 0, "atol": r}) for r in (1e-2, 1e-3, 1e-4, 1e-5)
    ],
    "dpm_solver_pp_2m": [("steps", s, {"grid": "uniform_logsnr"}) for s in (5, 10, 15, 20, 50)],
}


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, n_dirs: int = 128, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D W₂ distance between the projections."""
    dirs = np.random.default_rng(seed).normal(size=(a.shape[1], n_dirs))
    dirs /= np.linalg.norm(dirs, axis=0)
    pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
    return float(np.mean(np.sqrt(np.mean((pa - pb) ** 2, axis=0))))


def gmm_sweep(n: int) -> tuple[list[dict], dict]:
    gmm = GaussianMixture.ring()
    sched = schedules.make_schedule("fixed_linear", gamma_min=-10.0, gamma_max=8.0)
    gamma_fn = lambda t: sched.apply({}, t)
    data = np.asarray(gmm.sample(jax.random.key(1), n))
    fresh = np.asarray(gmm.sample(jax.random.key(2), n))
    ref = {
        "data_logp": float(gmm.log_prob(jnp.asarray(data)).mean()),
        "data_sw": sliced_wasserstein(fresh, data),
    }
    rows = []
    for label, settings in SWEEP.items():
        name = label.split(" ")[0]
        for knob, value, extra in settings:
            opts = dict(extra, **{knob: value})
            fn = jax.jit(
                lambda k, o=opts, nm=name: samplers.sample(
                    nm, k, gmm.eps_hat, gamma_fn, (n, 2), **o
                )
            )
            x, info = fn(jax.random.key(0))
            x = np.asarray(x)
            rows.append(
                {
                    "sampler": label,
                    knob: value,
                    "nfe": int(info["nfe"]),
                    "logp": float(gmm.log_prob(jnp.asarray(x)).mean()),
                    "sw": sliced_wasserstein(x, data),
                }
            )
            print(
                f"{label:26s} {knob}={value:<8g} NFE {rows[-1]['nfe']:5d}  "
                f"log p {rows[-1]['logp']:7.3f}  SW {rows[-1]['sw']:.4f}",
                flush=True,
            )
    return rows, ref


def digits_time_per_nfe(workdir: str | None, n: int = 64, steps: int = 50) -> dict:
    """Wall time per network evaluation of the digits ScoreUNet (batch n), ancestral sampler."""
    from vdm.configs import digits
    from vdm.run import generate, session

    c = digits.get_config()
    c.sample.steps, c.sample.n_samples, c.sample.batch_size = steps, n, n
    run = session.Run(c, workdir or "/tmp/vdm_bench_samplers")
    trained = bool(workdir) and run.ckpt.latest_step() is not None
    params = run.restore().ema_params if trained else run.fresh_state().ema_params
    fn = generate.make_sampler(run.model, c.sample, run.x_shape, n)
    args = (params, jax.random.key(0), jnp.asarray(0), jnp.zeros(n, jnp.int32))
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        jax.block_until_ready(fn(*args))
    dt = (time.perf_counter() - t0) / reps
    return {
        "trained_checkpoint": trained,
        "batch": n,
        "nfe": steps,
        "seconds": dt,
        "ms_per_nfe": 1e3 * dt / steps,
        "backend": jax.default_backend(),
    }


FID_SWEEP = [
    ("ancestral", {"steps": 20}),
    ("ancestral", {"steps": 100}),
    ("ddim", {"steps": 20, "eta": 0.0}),
    ("ddim", {"steps": 100, "eta": 0.0}),
    ("dpm_solver_pp_2m", {"steps": 10, "grid": "uniform_logsnr"}),
    ("dpm_solver_pp_2m", {"steps": 20, "grid": "uniform_logsnr"}),
    ("pf_ode", {"steps": 0, "solver": "tsit5", "rtol": 1e-3, "atol": 1e-3}),
]


def digits_fid_sweep(workdir: str, seeds: list[int]) -> list[dict]:
    """FID (± SE over `seeds`) of each sampler setting against the digits test split."""
    from vdm.configs import digits
    from vdm.run import session

    rows = []
    for name, options in FID_SWEEP:
        values, nfe = [], 0
        for seed in seeds:
            c = digits.get_config()
            c.seed = seed
            c.sample.sampler = name
            c.sample.update(options)
            run = session.Run(c, workdir)
            params = run.eval_params(run.restore())
            n = len(run.test_split)
            samples = run.sample(params, n)
            res = run.sample_fid(samples)
            values.append(res["fid"])
            floor = res["fid_train_vs_test"]
            nfe = options.get("steps") or "adaptive"
        mean = float(np.mean(values))
        se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
        rows.append(
            {
                "sampler": name,
                **options,
                "nfe": nfe,
                "fid": mean,
                "fid_se": se,
                "fid_train_vs_test": floor,
                "n": n,
                "seeds": seeds,
            }
        )
        print(f"digits FID  {name:18s} {options}  FID {mean:.2f} ± {se:.2f} (floor {floor:.2f})")
    return rows


def write_report(rows, ref, timing, out: str, fid_rows=None) -> None:
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        record = {"gmm": rows, "reference": ref, "digits_timing": timing, "digits_fid": fid_rows}
        json.dump(record, f, indent=2)
    lines = ["| sampler | setting | NFE | mean log p | sliced W₂ |", "|---|---|---|---|---|"]
    for r in rows:
        knob = "steps" if "steps" in r else "rtol"
        lines.append(
            f"| {r['sampler']} | {knob}={r[knob]:g} | {r['nfe']} | {r['logp']:.3f} | "
            f"{r['sw']:.4f} |"
        )
    lines.append(f"| data | — | — | {ref['data_logp']:.3f} | {ref['data_sw']:.4f} |")
    if fid_rows:
        lines += ["", "| digits sampler | setting | NFE | FID (N = 297) |", "|---|---|---|---|"]
        for r in fid_rows:
            setting = ", ".join(f"{k}={r[k]}" for k in ("steps", "eta", "grid", "rtol") if k in r)
            lines.append(
                f"| {r['sampler']} | {setting} | {r['nfe']} | {r['fid']:.2f} ± {r['fid_se']:.2f} |"
            )
        lines.append(f"| train vs test | — | — | {fid_rows[0]['fid_train_vs_test']:.2f} |")
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for label in SWEEP:
        rs = [r for r in rows if r["sampler"] == label]
        axes[0].plot([r["nfe"] for r in rs], [r["logp"] for r in rs], "o-", label=label)
        axes[1].plot([r["nfe"] for r in rs], [r["sw"] for r in rs], "o-", label=label)
    axes[0].axhline(ref["data_logp"], color="k", ls="--", label="data")
    axes[1].axhline(ref["data_sw"], color="k", ls="--", label="data vs data")
    for ax, name in zip(axes, ("mean true log-density", "sliced Wasserstein"), strict=True):
        ax.set(xscale="log", xlabel="NFE", ylabel=name)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--digits-workdir", default=None)
    p.add_argument("--fid-seeds", default="0,1", help="sample seeds for the digits FID")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_samplers"))
    args = p.parse_args()
    rows, ref = gmm_sweep(args.n)
    print(f"data: log p {ref['data_logp']:.3f}, SW(fresh, data) {ref['data_sw']:.4f}")
    timing = digits_time_per_nfe(args.digits_workdir)
    print(
        f"digits ScoreUNet, batch {timing['batch']}: {timing['ms_per_nfe']:.2f} ms per NFE "
        f"({'trained' if timing['trained_checkpoint'] else 'untrained'} parameters)"
    )
    fid_rows = None
    if timing["trained_checkpoint"]:
        seeds = [int(v) for v in args.fid_seeds.split(",")]
        fid_rows = digits_fid_sweep(args.digits_workdir, seeds)
    write_report(rows, ref, timing, args.out, fid_rows)
    print(f"→ {args.out}.json, .md, .png")


if __name__ == "__main__":
    main()
