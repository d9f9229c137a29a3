"""Noise-schedule ablation: schedule × time discretisation × Fourier features, fixed step budget.

    python experiments/studies/ablate_schedules.py --config=configs/digits.py \
        --out=results/ablation \
        --steps=2000 --seeds=0,1 \
        --schedules=fixed_linear,cosine,learned_scalar,learned_net,learned_net+vm \
        --times=0,10,100,1000 --fourier=off,on

`learned_net+vm` is the learned monotone network with the variance-minimising gradient
(continuous time only: cells with T > 0 are skipped). `--times` lists T, with 0 = continuous.
Each cell is a normal training run in `<out>/cells/<cell>/` on the shared grid runner
(experiments/grid.py): finished cells are not rerun, interrupted ones resume from their
checkpoints, `--keep=DIR` keeps each finished row in a lasting folder, `--report-only`
tabulates what is finished, `--set=section.field=value` overrides the base config. Writes
`<out>/results.json`, `<out>/results.md` (test bpd ± SE, estimator variance, learned γ₀ and
γ₁, wall time) and `<out>/bpd.png`, `<out>/gamma.png` (bpd per setting; learned γ(t) curves).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

from experiments import grid as grid_lib
from experiments.common import ROOT, csv_list

ROW = "ablation_cell.json"  # a finished cell's row, in its workdir (and --keep folder)

SCHEDULES = ("fixed_linear", "cosine", "learned_scalar", "learned_net", "learned_net+vm")


def load_config(spec: str):
    """`path/to/config.py[:arg]` → the config (`vdm.run.config.load_file`)."""
    from vdm.run.config import load_file

    return load_file(spec)


def cells(schedules, times, fourier, seeds):
    for sched, t, ff, seed in itertools.product(schedules, times, fourier, seeds):
        if sched.endswith("+vm") and t != 0:
            continue  # the variance-minimising gradient needs continuous time
        name = f"{sched}_T{t}_ff-{'on' if ff else 'off'}_seed{seed}".replace("+", "-")
        yield name, {"schedule": sched, "n_timesteps": t, "fourier": ff, "seed": seed}


def cell_config(base, setting: dict, steps: int):
    c = base.copy_and_resolve_references()
    sched = setting["schedule"]
    c.schedule.name = sched.removesuffix("+vm")
    c.schedule.variance_min = sched.endswith("+vm")
    c.model.n_timesteps = setting["n_timesteps"]
    c.model.fourier_features = setting["fourier"]
    c.seed = setting["seed"]
    c.training.num_steps = steps
    c.training.eval_every = steps
    c.training.save_every = min(c.training.save_every, steps)
    return c


def measure(setting, workdir, config, result) -> dict:
    """A trained cell's row: the final eval's bpd and terms, the estimator's variance (train:
    the last quarter of the logged steps; eval: over test examples) and the learned γ(t)."""
    import numpy as np

    from vdm.run import session

    rows = [json.loads(ln) for ln in open(os.path.join(workdir, "metrics.jsonl"))]
    train_rows = [r for r in rows if r["split"] == "train"]
    tail = train_rows[-max(1, len(train_rows) // 4) :]
    run = session.Run(config, workdir)
    params = run.restore().ema_params
    gamma = np.asarray(run.model.gamma_fn(params)(np.linspace(0.0, 1.0, 101)))
    print(f"  bpd {result['bpd']:.4f} ± {result['bpd_se']:.4f}", flush=True)
    return dict(
        bpd=result["bpd"],
        bpd_se=result["bpd_se"],
        recon=result["recon"],
        prior=result["prior"],
        diffusion=result["diffusion"],
        diffusion_var_train=float(np.mean([r["diffusion_var"] for r in tail])),
        diffusion_var_eval=result["diffusion_se"] ** 2 * max(result["n"] - 1, 1),
        gamma_0=float(gamma[0]),
        gamma_1=float(gamma[-1]),
        gamma_curve=gamma.tolist(),
    )


def label(r: dict) -> str:
    t = "cont." if r["n_timesteps"] == 0 else f"T={r['n_timesteps']}"
    return f"{r['schedule']}, {t}, FF {'on' if r['fourier'] else 'off'}"


def write_report(rows: list[dict], out: str) -> None:
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    lines = [
        "| schedule | time | Fourier | seed | test bpd | ± SE | Var L_diff (train, nats²) | "
        "Var L_diff (eval, bpd²) | γ₀ | γ₁ | wall s |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        t = "continuous" if r["n_timesteps"] == 0 else f"T = {r['n_timesteps']}"
        lines.append(
            f"| {r['schedule']} | {t} | {'on' if r['fourier'] else 'off'} | {r['seed']} | "
            f"{r['bpd']:.4f} | {r['bpd_se']:.4f} | {r['diffusion_var_train']:.4g} | "
            f"{r['diffusion_var_eval']:.4g} | {r['gamma_0']:.2f} | {r['gamma_1']:.2f} | "
            f"{r['wall_s']:.0f} |"
        )
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    fig = Figure(figsize=(8, 0.35 * len(rows) + 1.5))
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.errorbar([r["bpd"] for r in rows], y, xerr=[2 * r["bpd_se"] for r in rows], fmt="o")
    ax.set_yticks(y, [f"{label(r)}, seed {r['seed']}" for r in rows], fontsize=8)
    ax.set_xlabel("test bpd (± 2 SE)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bpd.png"), dpi=110)

    # One colour per schedule, one line style per time discretisation.
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    t_grid = np.linspace(0.0, 1.0, 101)
    names = sorted({r["schedule"] for r in rows})
    times = sorted({r["n_timesteps"] for r in rows}, key=lambda t: t or 1e9)
    colours = [f"C{i}" for i in range(10)]
    styles = ["-", "--", ":", "-."]
    for r in rows:
        if r["seed"] == rows[0]["seed"]:
            c = colours[names.index(r["schedule"]) % len(colours)]
            ls = styles[times.index(r["n_timesteps"]) % len(styles)]
            ax.plot(t_grid, r["gamma_curve"], ls, color=c, label=label(r))
    ax.set(xlabel="t", ylabel="γ(t) = −log SNR", title="learned and fixed schedules at the end")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "gamma.png"), dpi=110)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "digits.py"))
    p.add_argument("--out", default=os.path.join(ROOT, "results", "ablation"))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seeds", default="0")
    p.add_argument("--schedules", default=",".join(SCHEDULES))
    p.add_argument("--times", default="0,10,100,1000")
    p.add_argument("--fourier", default="off,on")
    grid_lib.add_arguments(p)
    args = p.parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    schedules = csv_list(args.schedules)
    bad = [s for s in schedules if s not in SCHEDULES]
    if bad:
        p.error(f"--schedules must be drawn from {list(SCHEDULES)}, got {bad}")
    fourier = csv_list(args.fourier)
    if any(f not in ("on", "off") for f in fourier):
        p.error(f"--fourier must be drawn from ['on', 'off'], got {fourier}")
    times = csv_list(args.times, int)
    if any(t < 0 for t in times):
        p.error(f"--times must be integers >= 0 (0 = continuous), got {times}")
    try:
        base = grid_lib.override(load_config(args.config), args.set)
    except ValueError as e:
        p.error(str(e))
    todo = cells(schedules, times, [f == "on" for f in fourier], csv_list(args.seeds, int))
    grid = grid_lib.Grid(args.out, ROW, {"steps": args.steps}, args.keep)
    make_config = lambda setting: cell_config(base, setting, args.steps)  # noqa: E731
    rows = grid.run(todo, make_config, measure, args.report_only)
    os.makedirs(args.out, exist_ok=True)
    write_report(rows, args.out)
    print(f"→ {args.out}/results.json, results.md, bpd.png, gamma.png")
    return rows


if __name__ == "__main__":
    main()
