"""The official 2-D colab against this project on the same swirl, side by side in one run.

    python experiments/benchmarks/bench_swirl.py --official=/path/to/google-research/vdm \
        --configs=configs/swirl2d_colab.py,configs/swirl2d.py --steps=20000 --rounds=1

`--official` is a checkout of google-research/vdm (public on GitHub; nothing of it is part of
this project): its `colab/2D_VDM_Example.ipynb` is executed headless, unmodified but for the
notebook-only lines (`%pip`, `%matplotlib`, google.colab, IPython display, tqdm.notebook) and
the step count, in its own subprocess. Each project config trains with `python -m vdm.main` in
its own subprocess. The sides alternate over `--rounds`. Every side reports its wall time for
the whole run (imports, compile, training, evaluation) and the ELBO in bpd over the 1,024
points from 200 independent draws (the colab's loss_fn for the colab; `--mode=train`'s final
eval for the project, `eval.repeats=200`). Writes `<out>/bench_swirl.json` and `.md` with the
wall-time ratios against the colab.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from experiments.common import ROOT

SKIP_PREFIXES = ("%", "from google.colab", "from IPython", "import pylab")


def colab_script(official: str, steps: int, repeats: int) -> str:
    """The colab's code cells up to its training loop, then its loss_fn as the ELBO."""
    path = os.path.join(official, "colab", "2D_VDM_Example.ipynb")
    if not os.path.exists(path):
        raise SystemExit(f"--official: {path} not found (a google-research/vdm checkout)")
    with open(path) as f:
        nb = json.load(f)
    lines = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        for ln in src.splitlines():
            if ln.strip().startswith(SKIP_PREFIXES) or ln.strip().startswith("plt."):
                continue
            ln = ln.replace("from tqdm.notebook import", "from tqdm import")
            ln = ln.replace("num_train_steps = 20000", f"num_train_steps = {steps}")
            lines.append(ln)
        if "for i in trange(num_train_steps)" in src:
            break
    lines += [
        "import json as _json",
        "_elbo = np.array([float(loss_fn(params, x, jax.random.PRNGKey(1000 + i))[0])",
        f"                  for i in range({repeats})])",
        "_g0 = float(model.apply(params, 0., method=Model.gamma)[0])",
        "_g1 = float(model.apply(params, 1., method=Model.gamma)[0])",
        "print('RESULT', _json.dumps(dict(bpd=float(_elbo.mean()),",
        f"      bpd_se=float(_elbo.std(ddof=1) / np.sqrt({repeats})), gamma_0=_g0, gamma_1=_g1)))",
    ]
    return "\n".join(lines)


def run_colab(script: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script)
    env = dict(os.environ, MPLBACKEND="Agg", TQDM_DISABLE="1")
    t0 = time.time()
    proc = subprocess.run([sys.executable, f.name], capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"the colab failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return dict(json.loads(line[7:]), wall_s=wall)


def run_project(config: str, steps: int, repeats: int, workdir: str) -> dict:
    cmd = [
        sys.executable, "-m", "vdm.main", f"--config={config}", f"--workdir={workdir}",
        f"--config.training.num_steps={steps}", f"--config.eval.repeats={repeats}",
    ]  # fmt: skip
    env = dict(os.environ, TQDM_DISABLE="1")
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"{config} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(workdir, "eval_final.json")) as f:
        result = json.load(f)
    rows = [json.loads(ln) for ln in open(os.path.join(workdir, "metrics.jsonl"))]
    last = [r for r in rows if r["split"] == "train"][-1]
    return dict(
        bpd=result["bpd"], bpd_se=result["bpd_se"], gamma_0=last["gamma_0"],
        gamma_1=last["gamma_1"], wall_s=wall,
    )  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--official", required=True)
    p.add_argument("--configs", default="configs/swirl2d_colab.py,configs/swirl2d.py")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_swirl"))
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    script = colab_script(args.official, args.steps, args.repeats)
    os.makedirs(args.out, exist_ok=True)
    runs: dict[str, list] = {"colab (official notebook)": [], **{c: [] for c in configs}}
    for r in range(args.rounds):
        runs["colab (official notebook)"].append(run_colab(script))
        print(f"round {r}: colab {runs['colab (official notebook)'][-1]}", flush=True)
        for c in configs:
            with tempfile.TemporaryDirectory() as wd:
                runs[c].append(run_project(c, args.steps, args.repeats, wd))
            print(f"round {r}: {c} {runs[c][-1]}", flush=True)
    ref = sum(x["wall_s"] for x in runs["colab (official notebook)"])
    command = "python experiments/benchmarks/bench_swirl.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    summary = {
        name: dict(
            bpd=[x["bpd"] for x in xs],
            bpd_se=[x["bpd_se"] for x in xs],
            gamma_0=[x["gamma_0"] for x in xs],
            gamma_1=[x["gamma_1"] for x in xs],
            wall_s=[x["wall_s"] for x in xs],
            wall_ratio_vs_colab=sum(x["wall_s"] for x in xs) / ref,
        )  # fmt: skip
        for name, xs in runs.items()
    }
    out = {"command": command, "steps": args.steps, "repeats": args.repeats, "runs": summary}
    with open(os.path.join(args.out, "bench_swirl.json"), "w") as f:
        json.dump(out, f, indent=2)
    lines = [
        f"Command: `{command}`",
        "",
        "| side | ELBO bpd (per round ± SE) | γ₀ | γ₁ | wall s | wall / colab |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        bpd = ", ".join(f"{b:.3f} ± {e:.3f}" for b, e in zip(s["bpd"], s["bpd_se"], strict=True))
        lines.append(
            f"| {name} | {bpd} | {', '.join(f'{g:.2f}' for g in s['gamma_0'])} | "
            f"{', '.join(f'{g:.2f}' for g in s['gamma_1'])} | "
            f"{', '.join(f'{w:.0f}' for w in s['wall_s'])} | {s['wall_ratio_vs_colab']:.2f} |"
        )
    with open(os.path.join(args.out, "bench_swirl.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
