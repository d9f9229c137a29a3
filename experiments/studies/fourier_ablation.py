"""Fourier-feature ablation as curves: bpd against steps, per term and per noise level.

    python experiments/studies/fourier_ablation.py --config=configs/mnist.py \
        --out=results/fourier_mnist \
        --cells=off,old,official,gated --seeds=0,1,2 --steps=10000 --every=1000 \
        --eval_examples=500 --repeats=2

Cells (each a normal training run in `<out>/cells/<cell>_seed<s>/`, resumable):
  off       no Fourier features
  old       2ⁿ · 2π for n = 5, 6 (the project's earlier default: top period two 8-bit bins)
  official  n = 6, 7 (google-research/vdm's ScoreUNet: top period one bin)
  gated     n = 6, 7, each pair scaled by its coherence exp(−½ ω² σ_t²) (model.fourier_gate)
Every `--every` steps a checkpoint is kept; afterwards each is evaluated (EMA parameters) on the
first `--eval_examples` test images with the same t, ε for every cell (paired seeds), giving
test bpd ± SE and its recon / prior / diffusion terms. For the last checkpoint the diffusion
loss is also resolved by noise level: in continuous time L_∞ = ∫ ½ E‖ε − ε̂(z_γ; γ)‖² dγ over
[γ₀, γ₁] (VDM eq. 18), so ½ E‖ε − ε̂‖² at fixed γ is the loss per unit γ, comparable across
cells whatever their learned schedules. Writes results.json, results.md, curves.png, by_gamma.png.

A cell of 10,000 steps takes ≈ 2 h on a 2-core CPU: `--keep=DIR` copies each finished cell's
row and training log to `DIR/<cell>_seed<s>/` and reads finished cells from there first, so
the grid can be run a few cells at a time with what was measured kept in a lasting (tracked)
folder; `--report-only` draws the table and figures from the finished cells, training nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from experiments import grid as grid_lib
from experiments.common import ROOT, csv_list

ROW = "fourier_cell.json"  # a finished cell's row, in its workdir (and --keep folder)

CELLS = {
    "off": {"fourier_features": False},
    "old": {"fourier_features": True, "fourier_top_n": 6.0, "fourier_gate": "none"},
    "official": {"fourier_features": True, "fourier_top_n": 7.0, "fourier_gate": "none"},
    "gated": {"fourier_features": True, "fourier_top_n": 7.0, "fourier_gate": "coherence"},
}
GAMMA_GRID = (-13.0, 6.0, 39)  # the fixed γ grid of the per-noise-level loss


def load_config(spec: str):
    """`path/to/config.py[:arg]` → the config (`vdm.run.config.load_file`)."""
    from vdm.run.config import load_file

    return load_file(spec)


def cell_config(base, setting: dict, steps: int, every: int):
    c = base.copy_and_resolve_references()
    c.model.update(CELLS[setting["cell"]])
    c.seed = setting["seed"]
    c.training.num_steps = steps
    c.training.save_every = every
    c.training.eval_every = steps
    c.training.max_to_keep = steps // every + 1
    c.sample.n_samples = min(c.sample.n_samples, 16)
    return c


def density_by_gamma(model, params, x_int, key, gammas):
    """½ E‖ε − ε̂(z_γ; γ)‖² / (D ln 2) per γ: the diffusion loss per unit γ, in bits per dim."""
    import jax
    import jax.numpy as jnp

    from vdm.core import diffusion

    n_dims = math.prod(x_int.shape[1:])
    f = model.encoding.encode(x_int)
    eps_hat_fn = model.eps_hat_fn(params)

    @jax.jit
    def one(gamma, k):
        eps = jax.random.normal(k, f.shape)
        g = jnp.full(f.shape[:1], gamma)
        err = jnp.square(eps - eps_hat_fn(diffusion.q_sample(f, g, eps), g))
        return 0.5 * jnp.mean(jnp.sum(err, axis=tuple(range(1, f.ndim)))) / (n_dims * math.log(2))

    return [float(one(g, jax.random.fold_in(key, i))) for i, g in enumerate(gammas)]


def make_measure(args):
    """The measurement of a trained cell: every kept checkpoint evaluated on the same images
    with the same t, ε (paired), and the last one's diffusion loss per noise level."""

    def measure(setting, workdir, config, result) -> dict:
        import jax
        import numpy as np

        from vdm import data
        from vdm.eval import likelihood
        from vdm.run import session

        run = session.Run(config, workdir)
        test = run.test_split
        n = min(args.eval_examples, len(test))
        subset = data.in_memory(test.get(np.arange(n))["image"], None, 0)
        eval_step = likelihood.make_eval_step(run.model, run.n_dims, run.mesh)
        eval_key = jax.random.key(12345)  # paired: the same t, ε for every cell and checkpoint
        curve = []
        for step in sorted(run.ckpt.manager.all_steps()):
            params = run.restore(step=step).ema_params
            r = likelihood.elbo_bpd(
                eval_step, params, subset, config.eval.batch_size, eval_key, run.mesh, args.repeats
            )
            g0, g1 = run.model.endpoints(params)
            curve.append(dict(step=int(step), gamma_0=float(g0), gamma_1=float(g1), **r))
            print(f"  step {step}: bpd {r['bpd']:.4f} ± {r['bpd_se']:.4f}", flush=True)
        gammas = np.linspace(*GAMMA_GRID)
        x = np.asarray(subset.get(np.arange(n))["image"])
        by_gamma = density_by_gamma(run.model, params, x, jax.random.key(54321), gammas)
        return dict(curve=curve, gammas=gammas.tolist(), by_gamma=by_gamma)

    return measure


def grid_key(args) -> dict:
    """What a finished row must have been measured under to count as this grid's."""
    return dict(
        steps=args.steps, every=args.every, eval_examples=args.eval_examples, repeats=args.repeats
    )


def summarise(rows: list[dict]) -> dict:
    """Per cell and step: mean over seeds of bpd and each term, and the SE over seeds."""
    import numpy as np

    out = {}
    for cell in dict.fromkeys(r["cell"] for r in rows):
        rs = [r for r in rows if r["cell"] == cell]
        steps = [c["step"] for c in rs[0]["curve"]]
        entry = {"steps": steps, "seeds": [r["seed"] for r in rs]}
        for term in ("bpd", "recon", "prior", "diffusion", "gamma_0", "gamma_1"):
            v = np.array([[c[term] for c in r["curve"]] for r in rs])
            entry[term] = v.mean(0).tolist()
            entry[f"{term}_se_seeds"] = (
                (v.std(0, ddof=1) / math.sqrt(len(rs))).tolist() if len(rs) > 1 else None
            )
        entry["bpd_se_eval"] = np.mean([[c["bpd_se"] for c in r["curve"]] for r in rs], 0).tolist()
        entry["by_gamma"] = np.mean([r["by_gamma"] for r in rs], 0).tolist()
        entry["gammas"] = rs[0]["gammas"]
        out[cell] = entry
    return out


def write_report(rows: list[dict], out: str, command: str) -> None:
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    summary = summarise(rows)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"command": command, "rows": rows, "summary": summary}, f, indent=2)
    lines = [
        f"Command: `{command}`",
        "",
        "| cell | seeds | step | test bpd | ± SE (over seeds; one seed: eval) | recon | prior | "
        "diffusion | γ₀ | γ₁ |",
        "|" + "---|" * 10,
    ]
    for cell, s in summary.items():
        for i, step in enumerate(s["steps"]):
            se = s["bpd_se_seeds"][i] if s["bpd_se_seeds"] else s["bpd_se_eval"][i]
            lines.append(
                f"| {cell} | {len(s['seeds'])} | {step} | {s['bpd'][i]:.4f} | {se:.4f} | "
                f"{s['recon'][i]:.4f} | {s['prior'][i]:.4f} | {s['diffusion'][i]:.4f} | "
                f"{s['gamma_0'][i]:.2f} | {s['gamma_1'][i]:.2f} |"
            )
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, 3)
    for cell, s in summary.items():
        se = np.array(s["bpd_se_seeds"] or s["bpd_se_eval"])
        axes[0].errorbar(s["steps"], s["bpd"], yerr=2 * se, label=cell, capsize=2)
        axes[1].plot(s["steps"], s["diffusion"], label=cell)
        axes[2].plot(s["steps"], s["recon"], label=cell)
    axes[0].set(xlabel="step", ylabel="test bpd (± 2 SE)", title="ELBO")
    axes[1].set(xlabel="step", ylabel="bpd", title="diffusion term")
    axes[2].set(xlabel="step", ylabel="bpd", title="recon term", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(command, fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=110)

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for cell, s in summary.items():
        ax.plot(s["gammas"], s["by_gamma"], label=cell)
    ax.set(
        xlabel="γ = −log SNR", ylabel="½ E‖ε − ε̂‖² per unit γ (bits/dim)", yscale="log",
        title="diffusion loss by noise level (last checkpoint, mean over seeds)",
    )  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "by_gamma.png"), dpi=110)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "mnist.py"))
    p.add_argument("--out", default=os.path.join(ROOT, "results", "fourier_mnist"))
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--eval_examples", type=int, default=500)
    p.add_argument("--repeats", type=int, default=2)
    grid_lib.add_arguments(p)
    args = p.parse_args(argv)
    cells = csv_list(args.cells)
    bad = [c for c in cells if c not in CELLS]
    if bad:
        p.error(f"--cells must be drawn from {list(CELLS)}, got {bad}")
    if args.every <= 0 or args.steps % args.every:
        p.error(f"--every must be > 0 and divide --steps, got {args.every} and {args.steps}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    try:
        base = grid_lib.override(load_config(args.config), args.set)
    except ValueError as e:
        p.error(str(e))
    todo = [
        (f"{c}_seed{s}", {"cell": c, "seed": s}) for s in csv_list(args.seeds, int) for c in cells
    ]
    key = grid_key(args)
    old = [key["steps"], key["every"], key["eval_examples"], key["repeats"]]  # rows before 12-04
    grid = grid_lib.Grid(args.out, ROW, key, args.keep, legacy=lambda row: row.get("key") == old)
    make_config = lambda setting: cell_config(base, setting, args.steps, args.every)  # noqa: E731
    rows = grid.run(todo, make_config, make_measure(args), args.report_only)
    os.makedirs(args.out, exist_ok=True)
    command = "python experiments/studies/fourier_ablation.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    write_report(rows, args.out, command)
    print(f"→ {args.out}/results.json, results.md, curves.png, by_gamma.png")
    return rows


if __name__ == "__main__":
    main()
