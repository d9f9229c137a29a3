# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Likelihood and the noise schedule: the paper's claims at CPU scale
#
# From the ablation runner (`experiments/studies/ablate_schedules.py`) on the bundled digits:
#
# 1. continuous time beats discrete T, and the loss falls as T grows (VDM eq. 16);
# 2. Fourier features lower bpd on 8-bit data (§3.3; MNIST curves, `FOURIER_CONFIG`);
# 3. the continuous-time VLB does not depend on the schedule's shape for fixed endpoints
#    (eq. 18): one trained denoiser, evaluated under two schedules with equal endpoints;
# 4. the variance-minimising learned schedule lowers the estimator's variance (§5, App. I.2).
#
# `SMOKE=1` (CI) runs a 3-cell grid for 2 steps: it checks the pipeline, not the claims.
# The full run is the command in `experiments/studies/ablate_schedules.py` with `RESULTS` below;
# its measured table is quoted in the last cell.

# %%
import json
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from experiments.studies import ablate_schedules, fourier_ablation
from vdm.run import plot, session

ROOT = os.path.abspath(os.environ.get("VDM_ROOT", ".."))

SMOKE = bool(int(os.environ.get("SMOKE", "0")))
OUT = os.environ.get("WORKDIR") or (
    tempfile.mkdtemp(prefix="ablation_") if SMOKE else os.path.join(ROOT, "results", "ablation")
)
if SMOKE:
    GRID = [
        "--config",
        os.path.join(ROOT, "configs/digits.py:smoke"),
        "--steps",
        "2",
        "--schedules",
        "fixed_linear,learned_net+vm",
        "--times",
        "0,10",
        "--fourier",
        "off",
    ]
else:
    GRID = [
        "--config",
        os.path.join(ROOT, "configs/digits.py"),
        "--steps",
        "1500",
        "--schedules",
        "fixed_linear,cosine,learned_scalar,learned_net,learned_net+vm",
        "--times",
        "0,10,100",
        "--fourier",
        "off",
    ]
FOURIER_CONFIG = os.path.join(ROOT, "configs/mnist.py" + (":smoke" if SMOKE else ""))
print(OUT)

# %% [markdown]
# ## Run (or read back) the grid

# %%
rows = ablate_schedules.main([*GRID, "--out", OUT])
print(open(os.path.join(OUT, "results.md")).read())

# %% [markdown]
# ### The continuous-time cells against steps, and the schedules they ended with
# `vdm plot` over the cells' `metrics.jsonl` (the same figure as
# `vdm plot results/ablation/cells/*_T0_*`): the bound, its terms, γ₀ and γ₁, and the
# variance of the diffusion-loss estimator; then γ(t) of every cell at the end of training
# (`gamma.png` of `experiments/studies/ablate_schedules.py`).

# %%
cont = [r for r in rows if r["n_timesteps"] == 0 and not r["fourier"]]
png = plot.plot_runs(
    [os.path.join(OUT, "cells", r["name"]) for r in cont],
    os.path.join(OUT, "continuous_cells.png"),
    [r["schedule"] for r in cont],
)
display(Image(png))
display(Image(os.path.join(OUT, "gamma.png")))


# %% [markdown]
# ## 1. Continuous time against T steps


# %%
def by(schedule, fourier=False):
    return {
        r["n_timesteps"]: r for r in rows if r["schedule"] == schedule and r["fourier"] == fourier
    }


for sched in sorted({r["schedule"] for r in rows}):
    cells = by(sched)
    line = ", ".join(
        f"{'cont.' if t == 0 else f'T={t}'}: {r['bpd']:.3f}±{r['bpd_se']:.3f}"
        for t, r in sorted(cells.items(), key=lambda kv: kv[0] or 1e9)
    )
    print(f"{sched:16s} {line}")

# %% [markdown]
# ## 2. Fourier features on 8-bit data (MNIST)

# %%
FOURIER_OUT = (
    os.path.join(OUT, "fourier_mnist")
    if SMOKE
    else os.path.join(ROOT, "results", "fourier_mnist_pilot")
)
FOURIER_ARGS = (
    ["--seeds", "0", "--steps", "4", "--every", "2", "--eval_examples", "20", "--repeats", "1"]
    if SMOKE
    else ["--seeds", "0", "--steps", "1000", "--every", "250", "--eval_examples", "300"]
)
ff = fourier_ablation.main(["--config", FOURIER_CONFIG, "--out", FOURIER_OUT, *FOURIER_ARGS])
summary = fourier_ablation.summarise(ff)
for cell, s in summary.items():
    curve = ", ".join(f"{b:.3f}" for b in s["bpd"])
    print(f"{cell:9s} test bpd at steps {s['steps']}: {curve}; recon {s['recon'][-1]:.4f}")
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for cell, s in summary.items():
    axes[0].plot(s["steps"], s["bpd"], marker="o", label=cell)
    axes[1].plot(s["gammas"], s["by_gamma"], label=cell)
axes[0].set(xlabel="step", ylabel="test bpd", title="ELBO against steps")
axes[1].set(xlabel="γ", ylabel="½E‖ε − ε̂‖² per unit γ (bits/dim)", yscale="log")
axes[1].set_title("diffusion loss by noise level, last checkpoint")
for ax in axes:
    ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 3. Invariance of the VLB to the schedule's shape (eq. 18)
# The denoiser is conditioned on γ (hence on SNR), so the network trained with the fixed
# linear schedule can be evaluated under the cosine schedule with the same endpoints: the
# expected bound must agree; only the estimator's variance changes.

# %%
cell = next(r for r in rows if r["schedule"] == "fixed_linear" and r["n_timesteps"] == 0)
workdir = os.path.join(OUT, "cells", cell["name"])
base = ablate_schedules.cell_config(
    ablate_schedules.load_config(GRID[1]),
    {k: cell[k] for k in ("schedule", "n_timesteps", "fourier", "seed")},
    cell["steps"],
)
params = session.Run(base, workdir).restore().ema_params
invariance = {}
for name in ("fixed_linear", "cosine"):
    c = base.copy_and_resolve_references()
    c.schedule.name = name
    c.eval.repeats = 2 if SMOKE else 10
    invariance[name] = session.Run(c, workdir).evaluate(params)
    r = invariance[name]
    print(
        f"{name:12s} bpd {r['bpd']:.4f} ± {r['bpd_se']:.4f}   diffusion-term variance "
        f"{r['diffusion_se'] ** 2 * (r['n'] - 1):.4f} bpd²"
    )
diff = invariance["cosine"]["bpd"] - invariance["fixed_linear"]["bpd"]
se = np.hypot(invariance["cosine"]["bpd_se"], invariance["fixed_linear"]["bpd_se"])
print(f"difference {diff:+.4f} bpd, {abs(diff) / se:.1f} standard errors")

# %% [markdown]
# ## 4. The variance-minimising schedule

# %%
for sched in ("learned_net", "learned_net+vm"):
    r = by(sched).get(0)
    if r:
        print(
            f"{sched:16s} bpd {r['bpd']:.3f} ± {r['bpd_se']:.3f}; Var L_diff (train) "
            f"{r['diffusion_var_train']:.4g} nats², (eval) {r['diffusion_var_eval']:.4g} bpd²"
        )

# %% [markdown]
# ## Measured at full size
# 2026-11-24 at commit 5148908 (`python experiments/studies/ablate_schedules.py` with the grid
# above, then `python -m tools.report --only=likelihood_schedules`), 2-core CPU shared with other
# jobs, `configs/digits.py`, 1,500 steps per cell, seed 0, 13 cells in 46 min of wall time
# (123–237 s each); every bpd equals the first run's (2026-11-23) to the 4th decimal. Test
# bpd ± SE (one ELBO pass over the 297 test images):
#
# | schedule | continuous | T = 100 | T = 10 | Var L_diff, continuous (train, nats²) |
# |---|---|---|---|---|
# | fixed_linear | 2.163 ± 0.085 | 2.230 ± 0.089 | 3.121 ± 0.144 | 4,006 |
# | cosine | 2.232 ± 0.182 | 2.413 ± 0.218 | 5.266 ± 0.627 | 20,140 |
# | learned_scalar | 2.076 ± 0.081 | 2.142 ± 0.079 | 2.782 ± 0.085 | 3,615 |
# | learned_net | 2.083 ± 0.085 | 2.149 ± 0.083 | 2.695 ± 0.066 | 4,012 |
# | learned_net + variance min. | 2.063 ± 0.062 | — | — | 2,052 |
#
# 1. For every schedule, continuous < T = 100 < T = 10: the claim holds.
# 3. Invariance: the fixed_linear continuous-time network evaluated (10 repeats) under its own
#    schedule gives 2.061 ± 0.025 bpd and under the cosine schedule with the same endpoints
#    2.051 ± 0.052 (difference 0.2 SE), while the estimator's variance is 4.2× larger under
#    cosine (7.94 against 1.89 bpd² per example).
# 4. The variance-minimising gradient halves the estimator's variance of the learned network
#    (train 4,012 → 2,052 nats², eval 2.12 → 1.16 bpd²) at equal or better bpd. Learned
#    endpoints: γ₀ ≈ −6.7 (from −6), γ₁ ≈ 3.3–3.9 (from 5).
# 2. Fourier features (`configs/mnist.py`, learned_net, 1,000 steps, one training seed, test
#    bpd on the first 300 test images with the same t, ε for every cell; 2026-11-24, command
#    in `FOURIER_ARGS`; ~15–30 min per cell on the shared CPU). Test bpd at 250 / 500 / 750 /
#    1,000 steps (± ≈ 0.05–0.14 eval SE; with one training seed, differences of that size are
#    not established):
#
#    | cell | 250 | 500 | 750 | 1,000 | recon at 1,000 | learned γ₀ |
#    |---|---|---|---|---|---|---|
#    | off | 2.830 | 2.004 | 1.775 | 1.647 | 0.072 | −12.63 |
#    | old octave (n = 5, 6) | 3.226 | 2.117 | 1.802 | 1.650 | 0.036 | −12.86 |
#    | official (n = 6, 7) | 3.890 | 2.552 | 2.095 | 1.853 | 0.016 | −13.09 |
#    | gated (n = 6, 7, × exp(−½ω²σ_t²)) | 2.412 | 1.856 | 1.643 | **1.520** | 0.015 | −13.11 |
#
#    **The cause**, from the diffusion loss per unit γ (½ E‖ε − ε̂‖² at fixed γ, comparable
#    across schedules by eq. 18): the official features cut the loss where the noise is below
#    a third of a bin (γ ≤ −12: 0.086 against 0.246 bits/dim at γ = −13) and keep γ₀ low (recon
#    0.016 against 0.072), but cost 10–35 % everywhere from γ ≈ −11.5 up to γ = 6: at those
#    noise levels sin(2ⁿ·2π z_t) of the top octaves is noise (its coherence
#    exp(−½ω²σ²) < 0.1 once σ > 0.0028) that the network has yet to learn to ignore. The curves
#    cross at γ ≈ −11.75. **The remedy** — each feature pair scaled by its coherence
#    (`model.fourier_gate=coherence`) — keeps the low-noise gain (0.056 at γ = −13) and matches
#    or beats no features above γ ≈ −8, giving the lowest bpd at every checkpoint. Whether the
#    ungated features catch up at 10k+ steps (the paper trains for millions) is not measured
#    here: `experiments/studies/fourier_ablation.py --steps=10000 --seeds=0,1,2` is the
#    command, ~75 min per cell on this CPU. `configs/mnist.py` (and Fashion-MNIST) use the gate
#    on this evidence.

# %%
print(json.dumps({r["name"]: round(r["bpd"], 4) for r in rows}, indent=1))
