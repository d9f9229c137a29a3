"""Diffusion objectives as weighted ELBOs (Kingma & Gao 2023): weighting × noise distribution.

    python experiments/studies/objectives_study.py --config=configs/digits.py \
        --out=results/objectives \
        --steps=1000 --seeds=0,1 --weightings=elbo,sigmoid:2,sigmoid:-2,edm,v_cosine \
        --noise=uniform_t,adaptive --nfe=20,100 --fid-n=297 \
        --set=schedule.name=fixed_linear --set=sample.batch_size=297

Every cell trains the same network for the same steps on the same data, with
`objective.weighting` (a `name:shift` sets `objective.weighting_shift`) and
`objective.noise_dist` as named; the schedule is the config's and should be fixed
(`--set=schedule.name=fixed_linear`) so that only the objective changes. Per cell:
- test bpd: the true ELBO (w = 1), whatever was trained (`--mode=eval`'s number);
- the estimator's variance on the trained model: per-example L_w (nats) on `--var-n` test
  images under uniform t and, for an adaptive cell, under its fitted p(λ), with the same
  network, images and ε (so the ratio is paired);
- FID (vdm/eval/fid.py, the data's cached classifier) of `--fid-n` samples against as many test
  images at each NFE in `--nfe`, with `--sampler` (one sample seed per cell: the spread over
  training seeds is the table's ±). Given several samplers, the first cell measures them all
  and the grid uses the one with the lowest FID summed over the NFEs (`sampler_pick.json`).
Each cell is a normal training run in `<out>/cells/<cell>/`; finished cells are read back and
interrupted ones resume from their checkpoints. `--keep=DIR` also copies each finished cell's
row and training log to `DIR/<cell>/` (`objectives_cell.json`, `metrics.jsonl`) and reads
finished cells from there first: a grid longer than one sitting keeps what it measured
somewhere lasting (a tracked folder) while the checkpoints stay in `<out>`. Writes
`<out>/results.json` (rows), `<out>/results.md` (table: mean ± SE over seeds) and
`<out>/bpd_fid.png`. `--report-only` trains nothing: it tabulates the finished cells of the
grid and names the ones still to run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

from experiments import grid as grid_lib
from experiments.common import ROOT, csv_list, write_json

NOISE = ("uniform_t", "adaptive")
ROW = "objectives_cell.json"  # a finished cell's row, in its workdir (and --keep folder)
# The measured grid (notebooks/objectives_digits.py): the quickstart's digits network with a
# fixed schedule, 20 cells in well under an hour on a 2-core CPU. (A 28×28 MNIST cell runs at
# ≈ 2 steps/s there: the same grid on MNIST is an overnight job, `--config=configs/mnist.py`.)
FULL_GRID = [
    "--steps=1000",
    "--seeds=0,1",
    "--weightings=elbo,sigmoid:2,sigmoid:-2,edm,v_cosine",
    "--noise=uniform_t,adaptive",
    "--nfe=20,100",
    "--fid-n=297",
    "--set=schedule.name=fixed_linear",
    "--set=sample.batch_size=297",
]


# The same grid on MNIST (notebooks/objectives_mnist.py): `--config=configs/mnist.py`, FID of
# 500 samples against 500 test digits in the features of the 99.1 % MNIST classifier, with
# the sampler that scores best on the first cell.
MNIST_GRID = [
    *(a for a in FULL_GRID if not a.startswith(("--fid-n", "--set=sample"))),
    "--fid-n=500",
    "--sampler=ancestral,ddim,dpm_solver_pp_2m",
]


def parse_weighting(spec: str) -> tuple[str, float]:
    """'sigmoid:2' → ('sigmoid', 2.0); 'elbo' → ('elbo', 0.0)."""
    from vdm.core import objectives

    name, _, shift = spec.partition(":")
    if name not in objectives.WEIGHTINGS:
        raise ValueError(
            f"--weightings: {spec!r} is not one of {sorted(objectives.WEIGHTINGS)} "
            "(optionally name:shift)"
        )
    try:
        return name, float(shift or 0.0)
    except ValueError:
        raise ValueError(f"--weightings: the shift of {spec!r} is not a number") from None


def cells(weightings, noises, seeds):
    for seed, spec, noise in itertools.product(seeds, weightings, noises):  # seed 0 first
        name, shift = parse_weighting(spec)
        label = f"{name}{'' if spec == name else f'_b{shift:g}'}"
        yield (
            f"{label}_{noise}_seed{seed}",
            {
                "weighting": name,
                "shift": shift,
                "label": label,
                "noise": noise,
                "seed": seed,
            },
        )


def cell_config(base, setting: dict, steps: int):
    c = base.copy_and_resolve_references()
    c.objective.weighting = setting["weighting"]
    c.objective.weighting_shift = setting["shift"]
    c.objective.noise_dist = setting["noise"]
    c.seed = setting["seed"]
    c.training.num_steps = steps
    c.training.eval_every = steps
    c.training.save_every = min(c.training.save_every, steps)
    c.sample.fid = False  # the study computes its own FIDs, at each NFE
    return c


def loss_variance(run, state, setting: dict, n: int, seed: int = 0) -> dict:
    """Per-example L_w (nats) of the trained model on n test images: mean and variance under
    uniform t and, where the cell has one, under its adaptive p(λ) — same images, same ε."""
    import jax
    import numpy as np

    from vdm.core import objectives
    from vdm.run import train_step

    model = run.model
    params = state.ema_params
    n = min(n, len(run.test_split))
    x = run.test_split.get(np.arange(n))["image"]
    hist = train_step.noise_hist(state.opt_state)
    weighting = dict(weighting=setting["weighting"], weighting_shift=setting["shift"])
    out = {}
    for noise in ("uniform_t", "adaptive") if hist is not None else ("uniform_t",):

        @jax.jit
        def losses(x, key, noise=noise):
            terms = objectives.objective_terms(
                key,
                x,
                model.gamma_fn(params),
                model.eps_hat_fn(params),
                encoding=model.encoding,
                objective=objectives.Objective(**weighting, noise_dist=noise),
                hist=hist,
            )
            return terms["diffusion"]

        values = []
        for i in range(0, n, 250):  # fixed key per chunk: the two noises see the same ε
            values.append(np.asarray(losses(x[i : i + 250], jax.random.key(seed + i))))
        v = np.concatenate(values)
        out[noise] = {"mean": float(v.mean()), "var": float(v.var(ddof=1))}
    return out


def fid_at(run, params, nfe: int, sampler: str, n: int) -> dict:
    """FID of n samples at `nfe` network evaluations (sample seed: the run's seed)."""
    c = run.config
    c.sample.sampler = sampler
    c.sample.steps = nfe
    if sampler == "dpm_solver_pp_2m":
        c.sample.grid = "uniform_logsnr"
    samples = run.sample(params, n)
    return run.sample_fid(samples)


def _wanted(args) -> dict:
    """The settings a finished row must have been measured under to count as this grid's."""
    return {"steps": args.steps, "nfe": args.nfe, "fid_n": args.fid_n, "sampler": args.sampler}


def _pick_path(args) -> str:
    return os.path.join(args.keep or args.out, "sampler_pick.json")


def _pick_key(args, first: str) -> dict:
    """What a sampler pick was measured under: reused only by a grid with the same."""
    keys = {"candidates": args.samplers, "steps": args.steps, "nfe": args.nfe}
    return {**keys, "fid_n": args.fid_n, "cell": first}


def read_pick(args, first: str) -> str | None:
    """The sampler picked on the grid's first cell by an earlier run, if it matches."""
    path = _pick_path(args)
    if os.path.exists(path):
        with open(path) as f:
            pick = json.load(f)
        if all(pick.get(k) == v for k, v in _pick_key(args, first).items()):
            return pick["best"]
    return None


def make_grid(base, args) -> tuple[grid_lib.Grid, callable, callable]:
    """The study as a grid: its cells' home and key, their configs, and the measurement of a
    trained cell (bpd, the loss variance, FID at each NFE; the first cell of a grid that picks
    its sampler measures every candidate and fixes the grid's sampler)."""
    grid = grid_lib.Grid(args.out, ROW, _wanted(args), args.keep)

    def measure(setting, workdir, config, result) -> dict:
        from vdm.run import session

        run = session.Run(config, workdir)
        state = run.restore()
        params = run.eval_params(state)
        var = loss_variance(run, state, setting, args.var_n)
        by_sampler = {}
        for sampler in [args.sampler] if args.sampler else args.samplers:
            by_sampler[sampler] = {}
            for nfe in args.nfe:
                res = fid_at(run, params, nfe, sampler, args.fid_n)
                by_sampler[sampler][str(nfe)] = res["fid"]
                floor, fid_n = res["fid_train_vs_test"], res["fid_n"]
                acc = res["classifier_test_accuracy"]
        picked = {}
        if not args.sampler:  # the first cell of a grid that picks its sampler
            first = os.path.basename(workdir)
            args.sampler = grid.key["sampler"] = min(
                by_sampler, key=lambda k: sum(by_sampler[k].values())
            )
            picked = {"fid_by_sampler": by_sampler}
            write_json({**_pick_key(args, first), "best": args.sampler, **picked}, _pick_path(args))
            print(f"[pick] {args.sampler}: " + json.dumps(by_sampler), flush=True)
        fids = by_sampler[args.sampler]
        fid_text = ", ".join(f"FID@{k} {v:.1f}" for k, v in fids.items())
        print(f"  bpd {result['bpd']:.4f} ± {result['bpd_se']:.4f}, {fid_text}", flush=True)
        return dict(
            sampler=args.sampler,
            **picked,
            bpd=result["bpd"],
            bpd_se=result["bpd_se"],
            recon=result["recon"],
            prior=result["prior"],
            diffusion=result["diffusion"],
            loss_var=var,
            fid=fids,
            fid_train_vs_test=floor,
            fid_n_used=fid_n,
            classifier_test_accuracy=acc,
        )

    return grid, lambda setting: cell_config(base, setting, args.steps), measure


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (weighting, noise): mean ± SE over seeds of bpd and each FID, and the
    paired variance ratio adaptive / uniform t on the trained adaptive models."""
    import numpy as np

    def mse(values):
        v = np.asarray(values, float)
        se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
        return float(v.mean()), se

    out = []
    keys = list(dict.fromkeys((r["label"], r["noise"]) for r in rows))
    for label, noise in keys:
        group = [r for r in rows if r["label"] == label and r["noise"] == noise]
        line = {"label": label, "noise": noise, "seeds": [r["seed"] for r in group]}
        line["bpd"], line["bpd_se"] = mse([r["bpd"] for r in group])
        for nfe in group[0]["fid"]:
            line[f"fid{nfe}"], line[f"fid{nfe}_se"] = mse([r["fid"][nfe] for r in group])
        if noise == "adaptive":
            ratios = [
                r["loss_var"]["adaptive"]["var"] / r["loss_var"]["uniform_t"]["var"] for r in group
            ]
            line["var_ratio"], line["var_ratio_se"] = mse(ratios)
        out.append(line)
    return out


def claims(summary: list[dict]) -> list[str]:
    """The paper's two claims read off a summary: which (weighting, p(λ)) has the lowest bpd
    and the lowest FID at each NFE, and the adaptive / uniform-t variance ratios."""
    import numpy as np

    best = min(summary, key=lambda s: s["bpd"])
    lines = [f"lowest bpd: {best['label']}, {best['noise']}: {best['bpd']:.4f}"]
    for key in (k for k in summary[0] if k.startswith("fid") and not k.endswith("_se")):
        best = min(summary, key=lambda s, key=key: s[key])
        lines.append(
            f"lowest FID @ {key[3:]} NFE: {best['label']}, {best['noise']}: {best[key]:.2f}"
        )
    ratios = [(s["label"], s["var_ratio"]) for s in summary if "var_ratio" in s]
    if ratios:
        gm = np.exp(np.mean(np.log([r for _, r in ratios])))
        each = ", ".join(f"{label} {r:.2f}" for label, r in ratios)
        lines.append(
            f"Var L_w, adaptive p(λ) / uniform t on the same trained model: {each} "
            f"(geometric mean {gm:.2f})"
        )
    return lines


def write_report(rows: list[dict], out: str) -> list[dict]:
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    summary = summarise(rows)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"cells": rows, "summary": summary}, f, indent=2)
    nfes = list(rows[0]["fid"])
    head = "| weighting | p(λ) | seeds | test bpd (ELBO) | " + " | ".join(
        f"FID @ {n} NFE" for n in nfes
    )
    lines = [
        head + " | Var L_w adaptive / uniform t |",
        "|" + "---|" * (5 + len(nfes)),
    ]

    def pm(mean, se, digits):  # "mean ± SE", or the mean alone from a single seed
        return f"{mean:.{digits}f}" + ("" if np.isnan(se) else f" ± {se:.{digits}f}")

    for s in summary:
        fids = " | ".join(pm(s[f"fid{n}"], s[f"fid{n}_se"], 2) for n in nfes)
        ratio = pm(s["var_ratio"], s["var_ratio_se"], 2) if "var_ratio" in s else "—"
        lines.append(
            f"| {s['label']} | {s['noise']} | {len(s['seeds'])} | "
            f"{pm(s['bpd'], s['bpd_se'], 4)} | {fids} | {ratio} |"
        )
    r0 = rows[0]
    lines.append(
        f"\nFID: {r0['fid_n_used']} samples ({r0['sampler']}) against as many test images; "
        f"train vs test at the same N: {r0['fid_train_vs_test']:.2f}; classifier test "
        f"accuracy {100 * r0['classifier_test_accuracy']:.1f}%. ± is the SE over seeds."
    )
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    fig = Figure(figsize=(5.0 * len(nfes), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(nfes)))
    labels = list(dict.fromkeys(s["label"] for s in summary))
    for ax, nfe in zip(axes, nfes, strict=True):
        for s in summary:
            colour = f"C{labels.index(s['label']) % 10}"
            marker = "o" if s["noise"] == "uniform_t" else "^"
            ax.errorbar(
                s["bpd"],
                s[f"fid{nfe}"],
                xerr=s["bpd_se"],
                yerr=s[f"fid{nfe}_se"],
                fmt=marker,
                color=colour,
                label=f"{s['label']}, {s['noise']}",
            )
        ax.axhline(r0["fid_train_vs_test"], color="grey", ls=":", label="train vs test")
        ax.set(xlabel="test bpd (ELBO)", ylabel=f"FID @ {nfe} NFE", title=f"{nfe} NFE")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bpd_fid.png"), dpi=110)
    return summary


def main(argv=None) -> list[dict]:
    from vdm import samplers
    from vdm.run.config import load_file

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "digits.py"))
    p.add_argument("--out", default=os.path.join(ROOT, "results", "objectives"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--weightings", default="elbo,sigmoid:2,sigmoid:-2,edm,v_cosine")
    p.add_argument("--noise", default=",".join(NOISE))
    p.add_argument("--nfe", default="20,100")
    p.add_argument(
        "--sampler",
        default="ddim",
        help="a sampler, or a comma list: the one with the lowest FID (summed over --nfe) on "
        "the first cell is used for the grid (recorded in sampler_pick.json)",
    )
    p.add_argument("--fid-n", type=int, default=1000)
    p.add_argument("--var-n", type=int, default=500)
    grid_lib.add_arguments(p)
    args = p.parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    try:
        weightings = csv_list(args.weightings)
        for spec in weightings:
            parse_weighting(spec)
    except ValueError as e:
        p.error(str(e))
    noises = csv_list(args.noise)
    if bad := [n for n in noises if n not in NOISE]:
        p.error(f"--noise must be drawn from {list(NOISE)}, got {bad}")
    args.samplers = csv_list(args.sampler)
    if [s for s in args.samplers if s not in samplers.SAMPLERS] or not args.samplers:
        p.error(f"--sampler must be drawn from {sorted(samplers.SAMPLERS)}, got {args.sampler!r}")
    args.nfe = csv_list(args.nfe, int)
    try:
        base = grid_lib.override(load_file(args.config), args.set)
    except ValueError as e:
        p.error(str(e))
    todo = list(cells(weightings, noises, csv_list(args.seeds, int)))
    args.sampler = args.samplers[0] if len(args.samplers) == 1 else read_pick(args, todo[0][0])
    if args.report_only and not args.sampler:
        p.error(f"--report-only: no sampler picked yet ({_pick_path(args)})")
    grid, make_config, measure = make_grid(base, args)
    rows = grid.run(todo, make_config, measure, args.report_only)
    os.makedirs(args.out, exist_ok=True)
    write_report(rows, args.out)
    print(f"→ {args.out}/results.json, results.md, bpd_fid.png")
    return rows


if __name__ == "__main__":
    main()
