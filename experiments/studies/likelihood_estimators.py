"""Likelihood estimators side by side on the same test images: the ELBO, the PF-ODE bound with
uniform and truncated-normal dequantization, and importance-weighted (IW) bounds.

    python experiments/studies/likelihood_estimators.py --out=docs/data/likelihood_estimators.json

measures the defaults `RUNS` and `PLAN` (about 45 min on 2 CPU cores) on the runs trained by

    python -m vdm.main --config=configs/digits.py --workdir=runs/digits
    python -m vdm.main --config=configs/mnist.py --workdir=runs/mnist \\
        --config.training.num_steps=3000
    python -m vdm.main --config=configs/mnist_idode.py --workdir=runs/mnist_idode \\
        --config.training.num_steps=3000

Each `--plan` cell is run:trace:n[:draws]: a trained run (its latest checkpoint, EMA
parameters), the trace (`exact`, or `hutchinsonM`: Hutchinson's estimator with M Rademacher
probes per draw), the first n test images and the draws per image (`--draws` if not given).
Per cell and dequantization the script solves the PF-ODE once for the draws z₀⁽ᵏ⁾ ~ q(· | x)
of every image (`vdm.eval.likelihood.pf_ode_log_weights`) and reads every estimator off the
same draws: K = 1 with each draw's own log q (what `eval.pf_ode` reports) and with E_q log q
in closed form (with the SD of one draw's estimate, the variance each form leaves), and the
IW bound at every K dividing the draws (each a mean over draws/K groups). The ELBO
(continuous time, 16 repeats) is measured on the same images. bpd is mean ± standard error
over images; paired differences (truncated normal − uniform, IW − K = 1) come with the SE of
the per-image difference, and so do the differences between two runs (`--compare`, on the
same images). With Hutchinson's trace the IW figure is not a bound (exp of a
noisy log density is biased upwards): the digits cells measure that bias against the exact
trace on a real model.

A cell's rows are written to `<out>.cells/<cell>.json` when it finishes (atomically), so an
interrupted study resumes at the next cell; `--report-only` tabulates the finished cells (and
writes nothing). A kept cell is keyed by run name, trace, n, draws and the checkpoint step it
measured (`<cell>_s<step>.json`): after a run trains further, its newest step has no cell and
is measured afresh, and the earlier step's cell stays on disk. Where a run's workdir is not on
this machine, `--report-only` takes each cell's newest kept step. `--out` holds the cells of
the last `--plan` run, all of them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import csv_list, write_json, write_results
from vdm.core import elbo
from vdm.eval import likelihood
from vdm.run.config import load_file
from vdm.run.session import Run
from vdm.samplers.ode import EVALS_PER_STEP

RUNS = (
    "digits=configs/digits.py@runs/digits,mnist=configs/mnist.py@runs/mnist,"
    "mnist_idode=configs/mnist_idode.py@runs/mnist_idode"
)
PLAN = "digits:exact:16,digits:hutchinson4:64,mnist:hutchinson4:8,mnist_idode:hutchinson4:8:4"
DEQUANTIZATIONS = ("uniform", "truncated_normal")
ELBO_REPEATS = 16
ODE = {"solver": "tsit5", "rtol": 1e-5, "atol": 1e-5}  # eval.pf_ode_*'s defaults


def parse_trace(s: str) -> dict:
    """'exact' or 'hutchinsonM' → the PF-ODE's trace options."""
    if s == "exact":
        return {"trace": "exact"}
    if s.startswith("hutchinson") and s[len("hutchinson") :].isdigit():
        return {"trace": "hutchinson", "probe": "rademacher", "probes": int(s[len("hutchinson") :])}
    raise SystemExit(f"--plan: trace must be 'exact' or 'hutchinsonM' (M probes), got {s!r}")


def mean_se(v: np.ndarray) -> tuple[float, float]:
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def elbo_per_image(run: Run, params, x_int, batch: int) -> np.ndarray:
    """Continuous-time ELBO in bpd per image, averaged over `ELBO_REPEATS` draws of (t, ε)."""
    n_dims = math.prod(x_int.shape[1:])
    fn = jax.jit(
        lambda p, x, k: elbo.bpd_terms(run.model.vlb_terms(p, k, {"image": x}), n_dims)["bpd"]
    )
    out = []
    with jax.default_matmul_precision("highest"):  # eval.matmul_precision's default
        for i in range(0, len(x_int), batch):  # keys by batch start (n < 1000): per --batch
            xb = x_int[i : i + batch]
            keys = [jax.random.key(1000 * r + i) for r in range(ELBO_REPEATS)]
            reps = [np.asarray(fn(params, xb, k)) for k in keys]
            out.append(np.mean(np.stack(reps), axis=0))
    return np.concatenate(out)


def pf_ode_weights(run: Run, params, x_int, deq: str, draws: int, batch: int, options: dict):
    """({log_p, log_q (draws, n), expected_log_q (n,)}, solver steps (draws, n), seconds after
    a warm-up call, seconds of the warm-up call) for the first n images."""
    fn = jax.jit(
        lambda p, x, off: likelihood.pf_ode_log_weights(
            jax.random.key(3),
            run.model.eps_hat_fn(p),
            run.model.gamma_fn(p),
            x,
            run.model.encoding,
            dequantization=deq,
            draws=draws,
            offset=off,
            **options,
        )
    )
    with jax.default_matmul_precision("highest"):  # eval.matmul_precision's default
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, x_int[:batch], 0))
        warm = time.perf_counter() - t0
        parts, steps = [], []
        t0 = time.perf_counter()
        for i in range(0, len(x_int), batch):
            w, info = fn(params, x_int[i : i + batch], i)
            parts.append(jax.tree.map(np.asarray, w))
            steps.append(np.asarray(info["steps"]))
        seconds = time.perf_counter() - t0
    w = {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}
    return w, np.concatenate(steps, axis=1), seconds, warm


def row_record(row: dict) -> dict:
    """The `pf_ode_record` of a PF-ODE row, from its trace, dequantization, K and log q form
    (rebuilt when a kept cell is read, so every row is labelled by the code as it is)."""
    options = {**parse_trace(row["trace"]), **ODE, "dequantization": row["dequantization"]}
    record = likelihood.pf_ode_record({**options, "importance_samples": row["K"]}, "highest")
    if "closed form" in row["estimator"]:
        record["log_q"] = "closed-form expectation E_q log q"
    return record


def measure_cell(run: Run, params, name: str, trace: str, n: int, draws: int, batch: int):
    """The rows of one cell: ELBO, then per dequantization K = 1 (paired and closed form) and
    the IW bounds, then the paired differences."""
    x_int = jnp.asarray(run.test_split.get(np.arange(n))["image"])
    d_ln2 = math.prod(x_int.shape[1:]) * math.log(2.0)
    options = {**parse_trace(trace), **ODE}
    base = {"run": name, "trace": trace, "n": n, "draws": draws, **run.data_record()}
    t0 = time.perf_counter()
    e = elbo_per_image(run, params, x_int, batch)
    rows = [
        {
            **base,
            "estimator": f"ELBO ({ELBO_REPEATS} repeats)",
            "K": None,
            "bpd": mean_se(e)[0],
            "bpd_se": mean_se(e)[1],
            "seconds_per_image": (time.perf_counter() - t0) / n,
        }
    ]
    per_image = {}
    for deq in DEQUANTIZATIONS:
        w, steps, seconds, warm = pf_ode_weights(run, params, x_int, deq, draws, batch, options)
        jw = jax.tree.map(jnp.asarray, w)
        cost = {
            "nfe_mean_per_draw": float(steps.mean() * EVALS_PER_STEP["tsit5"]),
            "nfe_max_per_draw": int(steps.max() * EVALS_PER_STEP["tsit5"]),
            "seconds_per_image_per_draw": seconds / (n * draws),
            "first_call_s": warm,
        }
        ests = [("K=1", 1, False)]
        if deq != "uniform":  # uniform's log q is a constant: both forms agree
            ests.append(("K=1, E log q closed form", 1, True))
        ests += [(f"IW K={k}", k, False) for k in (4, 16, 64) if k <= draws and draws % k == 0]
        for label, k, closed in ests:
            b = np.asarray(likelihood.pf_ode_bound(jw, k, expected_log_q=closed)) / d_ln2
            spread = {}
            if k == 1:  # how much one draw's estimate varies: the SD over draws, per image
                log_q = w["expected_log_q"][None] if closed else w["log_q"]
                one = (log_q - w["log_p"]) / d_ln2
                spread = {"one_draw_sd": float(one.std(axis=0, ddof=1).mean())}
            per_image[(deq, label)] = b
            rows.append(
                {
                    **base,
                    "estimator": f"PF-ODE {deq}, {label}",
                    "dequantization": deq,
                    "K": k,
                    "bpd": mean_se(b)[0],
                    "bpd_se": mean_se(b)[1],
                    "per_image": [round(float(v), 6) for v in b],
                    **cost,
                    **spread,
                }
            )
            rows[-1]["record"] = row_record(rows[-1])
    diffs = [
        ("truncated_normal − uniform, K=1", ("truncated_normal", "K=1"), ("uniform", "K=1")),
    ]
    for deq in DEQUANTIZATIONS:
        diffs.append((f"{deq}: IW K=16 − K=1", (deq, "IW K=16"), (deq, "K=1")))
    for label, a, b in diffs:
        if a in per_image and b in per_image:
            m, se = mean_se(per_image[a] - per_image[b])
            rows.append({**base, "estimator": f"difference: {label}", "bpd": m, "bpd_se": se})
    return rows


def latest_step(workdir: str) -> int | None:
    """The newest checkpoint step in a run's workdir (what `Run.restore` reads), or None if
    the workdir has no checkpoints here."""
    d = os.path.join(workdir, "checkpoints")
    steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
    return max(steps) if steps else None


def kept_cell(cells_dir: str, stem: str, step: int | None) -> tuple[str, list[dict]] | None:
    """(path, rows) of the cell `stem` measured at checkpoint `step` (the newest kept step
    if None), or None. Cells written before steps were in their names (`<stem>.json`) count
    for the step their rows carry."""
    if not os.path.isdir(cells_dir):
        return None
    found = []
    for fname in os.listdir(cells_dir):
        m = re.fullmatch(re.escape(stem) + r"(?:_s(\d+))?\.json", fname)
        if m:
            with open(os.path.join(cells_dir, fname)) as f:
                rows = json.load(f)
            steps = {r.get("checkpoint_step") for r in rows}
            cell_step = (
                int(m.group(1)) if m.group(1) else (steps.pop() if len(steps) == 1 else None)
            )
            if cell_step is not None:
                found.append((cell_step, os.path.join(cells_dir, fname), rows))
    if step is not None:
        found = [c for c in found if c[0] == step]
    if not found:
        return None
    _, path, rows = max(found, key=lambda c: c[0])
    return path, rows


def compare_runs(rows: list[dict], pairs: list[str]) -> list[dict]:
    """For each 'a/b' (a side is `run` or `run:trace`): the paired difference a − b of every
    PF-ODE estimator both sides have, over the first images both measured (the same test
    images, and the same dequantization draws: they come from the image's index). Sides
    without a trace compare like traces."""
    out = []
    for pair in pairs:
        a, _, b = pair.partition("/")
        (run_a, _, trace_a), (run_b, _, trace_b) = a.partition(":"), b.partition(":")
        for ra in rows:
            if ra["run"] != run_a or "per_image" not in ra or trace_a not in ("", ra["trace"]):
                continue
            want = trace_b or ra["trace"]
            for rb in rows:
                if (rb["run"], rb["trace"], rb["estimator"]) != (run_b, want, ra["estimator"]):
                    continue
                n = min(len(ra["per_image"]), len(rb["per_image"]))
                d = np.asarray(ra["per_image"][:n]) - np.asarray(rb["per_image"][:n])
                m, se = mean_se(d)
                trace = ra["trace"] if ra["trace"] == want else f"{ra['trace']} − {want}"
                label = f"difference {a} − {b}: {ra['estimator']}"
                row = {"run": f"{run_a} − {run_b}" if run_a != run_b else run_a, "trace": trace}
                out.append({**row, "n": n, "estimator": label, "bpd": m, "bpd_se": se})
    return out


def table(rows: list[dict]) -> str:
    """A Markdown table of the rows."""
    out = [
        "| run | trace | n | estimator | bpd ± SE | NFE/draw (mean) | s/image/draw |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        nfe = f"{r['nfe_mean_per_draw']:.0f}" if "nfe_mean_per_draw" in r else ""
        sec = r.get("seconds_per_image_per_draw", r.get("seconds_per_image"))
        sec = f"{sec:.3g}" if sec is not None else ""
        out.append(
            f"| {r['run']} | {r['trace']} | {r['n']} | {r['estimator']} | "
            f"{r['bpd']:.4f} ± {r['bpd_se']:.4f} | {nfe} | {sec} |"
        )
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=RUNS, help="name=config@workdir, comma-separated")
    p.add_argument("--plan", default=PLAN, help="run:trace:n[:draws], comma-separated")
    p.add_argument("--draws", type=int, default=16, help="draws per image unless a cell says")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default="results/likelihood_estimators.json")
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--compare",
        default="mnist_idode/mnist,digits:hutchinson4/digits:exact",
        help="a/b pairs (a side: run or run:trace): per-image differences a − b of each PF-ODE "
        "estimator on the images both measured",
    )
    a = p.parse_args(argv)
    runs = {}
    for item in csv_list(a.runs):
        name, _, rest = item.partition("=")
        config, _, workdir = rest.partition("@")
        if not (name and config and workdir):
            raise SystemExit(f"--runs: expected name=config@workdir, got {item!r}")
        runs[name] = (config, workdir)
    cells_dir = a.out + ".cells"
    rows, loaded = [], {}
    for cell in csv_list(a.plan):
        parts = cell.split(":")
        name, trace, n, draws = (parts + [""] * (3 - len(parts)) + [str(a.draws)])[:4]
        if name not in runs or not (n.isdigit() and draws.isdigit()):
            raise SystemExit(
                f"--plan: {cell!r} is not run:trace:n[:draws] with run in {list(runs)}"
            )
        parse_trace(trace)
        stem = f"{name}_{trace}_n{n}_d{draws}"
        step = latest_step(runs[name][1])
        kept = kept_cell(cells_dir, stem, step)
        if kept is None and a.report_only:  # tabulate what exists, saying it is older
            kept = kept_cell(cells_dir, stem, None)
            if kept is not None:
                print(f"{stem}: no cell at checkpoint {step}; reporting {kept[0]}", flush=True)
        if kept is not None:
            cell_rows = kept[1]
            for r in cell_rows:
                if "dequantization" in r and "K" in r:
                    r["record"] = row_record(r)
        elif a.report_only:
            continue
        else:
            if name not in loaded:
                config, workdir = runs[name]
                run = Run(load_file(config), workdir)
                state = run.restore()
                loaded[name] = (run, run.eval_params(state), int(state.step))
            run, params, step = loaded[name]
            cell_rows = measure_cell(run, params, name, trace, int(n), int(draws), a.batch)
            for r in cell_rows:
                r["checkpoint_step"] = step
            write_json(cell_rows, os.path.join(cells_dir, f"{stem}_s{step}.json"))
        print(table(cell_rows), flush=True)
        rows += cell_rows
    rows += compare_runs(rows, csv_list(a.compare))
    if not a.report_only:  # a report leaves the measuring command's record as it was
        write_results(a.out, __file__, rows)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
