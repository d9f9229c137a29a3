"""Noise-schedule ablation: schedule × time discretisation × Fourier features, fixed step budget.

    python experiments/studies/ablate_schedules.py --config=configs/digits.py \
        --out=results/ablation \
        --steps=2000 --seeds=0,1 \
        --schedules=fixed_linear,cosine,learned_scalar,learned_net,learned_net+vm \
        --times=0,10,100,1000 --fourier=off,on

`learned_net+vm` is the learned monotone network with the variance-minimising gradient
(continuous time only: cells with T > 0 are skipped). `learned_multivariate` is a γ per data
dimension (MuLAN's polynomial, one per pixel), `learned_multivariate+cond` the same chosen by
each image through an auxiliary latent (`schedule.conditional=True`; its bound includes the
latent's KL). `--times` lists T, with 0 = continuous. `--evals=K` evaluates K times per cell
(at steps/K, 2 steps/K, …): the report then draws test bpd ± SE against steps and training
seconds (`curves.png`). Cells with a γ per dimension also draw γ̂_i(½) = (γ_i(½) − γ₀,ᵢ) /
(γ₁,ᵢ − γ₀,ᵢ) as an image, which pixels the schedule noises first (`gamma_maps.png`), and the
conditional one a few test images beside their own maps.
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

SCHEDULES = (
    "fixed_linear",
    "cosine",
    "learned_scalar",
    "learned_net",
    "learned_net+vm",
    "learned_multivariate",
    "learned_multivariate+cond",
)
MAP_IMAGES = 4  # test images whose own schedules a conditional cell draws


def load_config(spec: str):
    """`path/to/config.py[:arg]` → the config (`vdm.run.config.load_file`)."""
    from vdm.run.config import load_file

    return load_file(spec)


def cells(schedules, times, fourier, seeds, evals: int = 1):
    """(name, setting) of every cell; a cell evaluated `evals` > 1 times has its own name (and
    workdir), so it never resumes, and overwrites, a cell trained with one eval."""
    for sched, t, ff, seed in itertools.product(schedules, times, fourier, seeds):
        if sched.endswith("+vm") and t != 0:
            continue  # the variance-minimising gradient needs continuous time
        name = f"{sched}_T{t}_ff-{'on' if ff else 'off'}_seed{seed}".replace("+", "-")
        name += f"_evals{evals}" if evals > 1 else ""
        yield name, {"schedule": sched, "n_timesteps": t, "fourier": ff, "seed": seed}


def cell_config(base, setting: dict, steps: int, evals: int = 1):
    c = base.copy_and_resolve_references()
    sched = setting["schedule"]
    c.schedule.name = sched.removesuffix("+vm").removesuffix("+cond")
    c.schedule.variance_min = sched.endswith("+vm")
    c.schedule.conditional = sched.endswith("+cond")
    c.model.n_timesteps = setting["n_timesteps"]
    c.model.fourier_features = setting["fourier"]
    c.seed = setting["seed"]
    c.training.num_steps = steps
    c.training.eval_every = max(1, steps // evals)
    c.training.save_every = min(c.training.save_every, c.training.eval_every)
    return c


def eval_curve(rows: list[dict]) -> list[dict]:
    """Every eval of the run: step, test bpd ± SE and the training seconds spent to reach it
    (the logged intervals' steps over their steps/s: evaluation time not counted, the first
    interval's compilation counted)."""
    seconds, last, curve = 0.0, 0, []
    for r in sorted(rows, key=lambda r: (r["step"], r["split"] != "train")):
        if r["split"] == "train" and r.get("steps_per_sec"):
            seconds += (r["step"] - last) / r["steps_per_sec"]
            last = r["step"]
        elif r["split"] == "eval" and "bpd" in r:
            curve.append(
                dict(step=r["step"], bpd=r["bpd"], bpd_se=r.get("bpd_se", 0.0), train_s=seconds)
            )
    return curve


def schedule_views(run, params) -> dict:
    """γ(t) on 101 times (its mean over dimensions for a γ per dimension) and, for a γ per
    dimension, the map γ̂(½) of the normalised schedule; a conditional schedule's for the
    first test images, each with its own latent drawn from q(c | x)."""
    import jax
    import numpy as np

    t = np.linspace(0.0, 1.0, 101)
    model = run.model
    if not model.multivariate:
        gamma = np.asarray(model.gamma_fn(params)(t))
        return dict(gamma_curve=gamma.tolist(), gamma_0=float(gamma[0]), gamma_1=float(gamma[-1]))
    g0, g1 = (np.asarray(g) for g in model.endpoints(params))
    views = {}
    if model.conditional:
        x = run.test_split.get(np.arange(MAP_IMAGES))["image"]
        counts, _ = model.latent_posterior(params, jax.random.key(0), x)
        gamma = np.stack([np.asarray(model.gamma_fn(params, c)(t)) for c in counts], 1)
        half = np.asarray(model.gamma_fn(params, counts)(0.5))  # (images, *D)
        views["map_images"] = np.asarray(x).tolist()
    else:
        gamma = np.asarray(model.gamma_fn(params)(t))[:, None]
        half = np.asarray(model.gamma_fn(params)(0.5))[None]
    views["gamma_half_maps"] = ((half - g0) / (g1 - g0)).tolist()
    axes = tuple(range(1, gamma.ndim))
    curve = gamma.mean(axis=axes)
    return dict(
        views, gamma_curve=curve.tolist(), gamma_0=float(g0.mean()), gamma_1=float(g1.mean())
    )


def measure(setting, workdir, config, result) -> dict:
    """A trained cell's row: the final eval's bpd and terms, the estimator's variance (train:
    the last quarter of the logged steps; eval: over test examples), every eval on the way
    (`eval_curve`) and the learned γ (`schedule_views`)."""
    import numpy as np

    from vdm.run import session

    rows = [json.loads(ln) for ln in open(os.path.join(workdir, "metrics.jsonl"))]
    train_rows = [r for r in rows if r["split"] == "train"]
    tail = train_rows[-max(1, len(train_rows) // 4) :]
    run = session.Run(config, workdir)
    params = run.restore().ema_params
    print(f"  bpd {result['bpd']:.4f} ± {result['bpd_se']:.4f}", flush=True)
    return dict(
        bpd=result["bpd"],
        bpd_se=result["bpd_se"],
        recon=result["recon"],
        prior=result["prior"],
        diffusion=result["diffusion"],
        latent=result.get("latent", 0.0),
        diffusion_var_train=float(np.mean([r["diffusion_var"] for r in tail])),
        diffusion_var_eval=result["diffusion_se"] ** 2 * max(result["n"] - 1, 1),
        curve=eval_curve(rows),
        **schedule_views(run, params),
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
        "| schedule | time | Fourier | seed | test bpd | ± SE | latent KL (bpd) | "
        "Var L_diff (train, nats²) | Var L_diff (eval, bpd²) | γ₀ | γ₁ | wall s |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        t = "continuous" if r["n_timesteps"] == 0 else f"T = {r['n_timesteps']}"
        lines.append(
            f"| {r['schedule']} | {t} | {'on' if r['fourier'] else 'off'} | {r['seed']} | "
            f"{r['bpd']:.4f} | {r['bpd_se']:.4f} | {r.get('latent', 0.0):.4f} | "
            f"{r['diffusion_var_train']:.4g} | "
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
    ax.set(
        xlabel="t",
        ylabel="γ(t) = −log SNR (mean over dimensions)",
        title="learned and fixed schedules at the end",
    )
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "gamma.png"), dpi=110)
    if any(len(r.get("curve", [])) > 1 for r in rows):
        draw_curves(rows, os.path.join(out, "curves.png"))
    if any("gamma_half_maps" in r for r in rows):
        draw_maps(rows, os.path.join(out, "gamma_maps.png"))


def draw_curves(rows: list[dict], path: str) -> None:
    """Test bpd ± SE against training steps and against training seconds, one line a cell."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for i, r in enumerate(rows):
        pts = r.get("curve", [])
        if not pts:
            continue
        y, se = np.array([p["bpd"] for p in pts]), np.array([p["bpd_se"] for p in pts])
        for ax, key in zip(axes, ("step", "train_s"), strict=True):
            x = np.array([p[key] for p in pts])
            ax.errorbar(
                x,
                y,
                2 * se,
                fmt="o-",
                ms=3,
                color=f"C{i % 10}",
                label=f"{label(r)}, seed {r['seed']}",
            )
    axes[0].set(xlabel="training step", ylabel="test bpd (± 2 SE)")
    axes[1].set(xlabel="training seconds (evaluation excluded)")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def draw_maps(rows: list[dict], path: str) -> None:
    """γ̂_i(½) as an image per multivariate cell (0: not yet noised at t = ½ relative to its
    range, 1: fully); a conditional cell's row shows each test image beside its own map."""
    import numpy as np
    from matplotlib.figure import Figure

    cells = [r for r in rows if "gamma_half_maps" in r]
    ncol = 2 * MAP_IMAGES
    fig = Figure(figsize=(1.6 * ncol, 1.9 * len(cells)))
    axes = np.atleast_2d(fig.subplots(len(cells), ncol, squeeze=False))
    for row, r in zip(axes, cells, strict=True):
        maps = np.asarray(r["gamma_half_maps"])
        images = np.asarray(r.get("map_images", []))
        panels = []
        for j, m in enumerate(maps):
            if len(images):
                panels.append((images[j][..., 0], "gray", f"test image {j}"))
            panels.append((m.mean(-1) if m.ndim == 3 else m, "viridis", "γ̂(½)"))
        for ax in row:
            ax.axis("off")
        for ax, (img, cmap, title) in zip(row, panels, strict=False):
            kw = dict(vmin=0, vmax=1) if cmap == "viridis" else {}
            ax.imshow(np.atleast_2d(img), cmap=cmap, **kw)
            ax.set_title(title, fontsize=7)
        row[0].set_title(f"{label(r)}\n{row[0].get_title()}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "digits.py"))
    p.add_argument("--out", default=os.path.join(ROOT, "results", "ablation"))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seeds", default="0")
    p.add_argument("--schedules", default=",".join(SCHEDULES))
    p.add_argument("--times", default="0,10,100,1000")
    p.add_argument("--fourier", default="off,on")
    p.add_argument("--evals", type=int, default=1, help="evaluations per cell (a learning curve)")
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
    if base.schedule.get("conditional", False):
        p.error(
            "--set schedule.conditional=True: choose the input-conditional schedule as "
            "--schedules=learned_multivariate+cond (the cell sets the field)"
        )
    if args.evals < 1:
        p.error(f"--evals must be >= 1, got {args.evals}")
    seeds = csv_list(args.seeds, int)
    todo = cells(schedules, times, [f == "on" for f in fourier], seeds, args.evals)
    key = {"steps": args.steps} | ({"evals": args.evals} if args.evals > 1 else {})
    grid = grid_lib.Grid(args.out, ROW, key, args.keep)  # rows of before --evals still count
    make_config = lambda setting: cell_config(base, setting, args.steps, args.evals)  # noqa: E731
    rows = grid.run(todo, make_config, measure, args.report_only)
    os.makedirs(args.out, exist_ok=True)
    write_report(rows, args.out)
    print(f"→ {args.out}/results.json, results.md, bpd.png, gamma.png")
    return rows


if __name__ == "__main__":
    main()
