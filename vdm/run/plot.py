"""A quick look at runs: `python -m vdm.run.plot WORKDIR [WORKDIR …] [--out=PNG]` (or `vdm plot`).

Reads each run's metrics (`metrics.jsonl`, or a gs:// run's numbered parts: the source of
truth) and draws, against training steps, one
figure of four panels: the bound in bpd (train, and eval ± its standard error), its terms
(recon, prior, diffusion, and the latent's KL for an input-conditional schedule), the
schedule's endpoints γ₀ and γ₁ (their means for a γ per dimension), and the variance of the
diffusion-loss estimator. Several workdirs share the axes, one colour each, so comparing
runs takes one command. Each `--mode=eval` result in a workdir (`eval_step_<N>*.json`, and
the end of training's `eval_final.json`) is marked on the bound panel at its checkpoint step,
labelled with how it was made (its record, `vdm.eval.records.describe`: the ELBO's time and
repeats, or the PF-ODE's dequantization, K, trace and solver). Written to `--out`, by
default `<first workdir>/metrics.png`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import textwrap

import numpy as np

from vdm import storage
from vdm.eval.records import describe
from vdm.run.metrics import read_metrics

PANELS = (
    ("bound (bpd)", ("bpd",)),
    (
        "terms (bpd): recon ─, prior ┄, diffusion ─ ·, latent KL ··· (conditional γ)",
        ("recon", "prior", "diffusion", "latent"),
    ),
    (
        "schedule endpoints: γ₀ ─, γ₁ ┄ (mean over dimensions if γ is a vector)",
        ("gamma_0", "gamma_1"),
    ),
    ("diffusion-loss variance (nats²)", ("diffusion_var",)),
)
STYLES = ("-", "--", "-.", ":")


def series(rows: list[dict], split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` in the rows of one split ('train' or 'eval'), by step."""
    pts = sorted((r["step"], r[key]) for r in rows if r.get("split") == split and key in r)
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pts, strict=True)
    return np.asarray(steps), np.asarray(values, dtype=float)


def load(workdir: str) -> list[dict]:
    """The rows of a workdir's metrics (local or gs://); a clear error if there are none."""
    rows = read_metrics(workdir)
    if not rows:
        raise FileNotFoundError(f"{workdir}: no metrics (is it a vdm workdir?)")
    return rows


def eval_points(workdir: str) -> list[tuple[int, float, float, str]]:
    """(step, bpd, SE, what it is) of every estimate in the workdir's eval JSONs, by step; a
    file of an older format (no record) is labelled by its estimator only, an unreadable one
    is skipped."""
    points = []
    names = sorted(
        n for n in storage.listdir(workdir) if n.startswith("eval_step_") and n.endswith(".json")
    )
    for name in [*names, "eval_final.json"]:
        try:
            r = json.loads(storage.read_text(storage.join(workdir, name)))
        except storage.StorageError:
            raise
        except (OSError, ValueError):
            continue
        for key, record, name in (
            ("bpd", "elbo_record", "ELBO"),
            ("pf_ode_bpd", "pf_ode_record", "PF-ODE"),
        ):
            if isinstance(r.get(key), int | float):
                rec = r.get(record)
                what = f"{name}: {describe(rec)}" if isinstance(rec, dict) else name
                step = (rec or {}).get("checkpoint_step", r.get("step", 0))
                points.append((int(step), float(r[key]), float(r.get(key + "_se", 0.0)), what))
    return sorted(points)


def plot_runs(workdirs: list[str], out: str, labels: list[str] | None = None) -> str:
    """Draw the four panels for every workdir into `out` (PNG); returns its path."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    runs = [load(w) for w in workdirs]
    labels = labels or [os.path.basename(os.path.normpath(w)) or w for w in workdirs]
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2)
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (rows, label) in enumerate(zip(runs, labels, strict=True)):
        c = colours[i % len(colours)]
        for ax, (title, keys) in zip(axes.flat, PANELS, strict=True):
            for key, ls in zip(keys, STYLES, strict=False):
                x, y = series(rows, "train", key)
                first = key == keys[0]  # one legend entry per run and split
                ax.plot(x, y, ls, color=c, alpha=0.45, lw=1, label=f"{label} train" * first)
                x, y = series(rows, "eval", key)
                if len(x):
                    _, se = series(rows, "eval", key + "_se")
                    ax.plot(
                        x, y, ls, color=c, marker="o", ms=3, lw=1.8, label=f"{label} eval" * first
                    )
                    if len(se) == len(y):
                        ax.fill_between(x, y - se, y + se, color=c, alpha=0.2)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("training step")
    markers = {}
    for i, w in enumerate(workdirs):  # eval results, one marker per kind of estimate
        for step, bpd, se, what in eval_points(w):
            m = markers.setdefault(what, "sDv^<>ph"[len(markers) % 8])
            axes[0, 0].errorbar(
                [step],
                [bpd],
                [se],
                fmt=m,
                color=colours[i % len(colours)],
                ms=6,
                capsize=2,
                label=textwrap.shorten(f"{labels[i]} eval file, {what}", 110),
            )
    handles, names = axes[0, 0].get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))  # one entry per run and estimate
    axes[0, 0].legend(unique.values(), unique.keys(), fontsize=7)
    axes[1, 1].set_yscale("log")
    for ax in axes.flat[:2]:
        lo, hi = _robust_limits(ax)
        if lo is not None:
            ax.set_ylim(lo, hi)
    shown = [w if storage.is_url(w) else os.path.relpath(w) for w in workdirs]
    fig.suptitle("\n".join(textwrap.wrap("vdm plot " + " ".join(shown), 150)), fontsize=8)
    storage.makedirs(storage.dirname(storage.abspath(out)))
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format=os.path.splitext(out)[1][1:].lower() or "png")
    storage.write_bytes(out, buf.getvalue())
    return out


def _robust_limits(ax):
    """y-limits that ignore the first steps' very large values (the bound starts far above)."""
    ys = [np.asarray(ln.get_ydata(), dtype=float).ravel() for ln in ax.get_lines()]
    ys = np.concatenate(ys or [np.zeros(0)])
    ys = ys[np.isfinite(ys)]
    if len(ys) < 4:
        return None, None
    lo, hi = np.min(ys), np.percentile(ys, 95)
    pad = 0.05 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vdm plot", description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+", help="run directories holding metrics.jsonl")
    p.add_argument("--out", help="PNG to write (default: <first workdir>/metrics.png)")
    p.add_argument("--labels", help="comma-separated legend labels, one per workdir")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    if labels and len(labels) != len(args.workdirs):
        print(
            f"error: --labels has {len(labels)} names for {len(args.workdirs)} workdirs",
            file=sys.stderr,
        )
        return 2
    out = args.out or storage.join(args.workdirs[0], "metrics.png")
    try:
        path = plot_runs(args.workdirs, out, labels)
    except (FileNotFoundError, storage.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"→ {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
