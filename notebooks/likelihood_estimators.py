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
# # Likelihood estimators: dequantization and importance-weighted bounds against K
#
# The probability-flow ODE gives a density p(z₀) of continuous data; a bpd of integer data
# comes from a dequantization q(z₀ | x) inside x's bin, −log P(x) ≤ E_q[−log p(z₀) + log q],
# and tightens with K importance samples, −log (1/K) Σ_k p(z₀⁽ᵏ⁾)/q(z₀⁽ᵏ⁾ | x)
# ([docs/math.md](../math.md#likelihood-evaluation)). This notebook draws what
# `experiments/studies/likelihood_estimators.py` measured on the same test images of three
# trained runs: the quickstart digits model (exact trace, and Hutchinson's with 4 probes to
# show that estimator's bias), the 3,000-step MNIST ε model (`configs/mnist.py`) and i-DODE's
# recipe at the same steps (`configs/mnist_idode.py`: v head, ELBO weighting,
# p(λ) ∝ sigmoid(λ)). The numbers, with their commands, are on the
# [benchmarks page](../benchmarks.md#likelihood-estimators); this notebook reads the study's
# kept cells (`--report-only`) and trains nothing.
#
# `SMOKE=1` (CI) trains the 6-step digits smoke model in a temporary folder and measures one
# tiny cell the same way: it checks the pipeline, not the claims.

# %%
import os
import tempfile

import matplotlib.pyplot as plt

from experiments.studies import likelihood_estimators as study
from vdm.configs import digits
from vdm.run import train

ROOT = os.path.abspath(os.environ.get("VDM_ROOT", ".."))
SMOKE = bool(int(os.environ.get("SMOKE", "0")))
if SMOKE:
    tmp = tempfile.mkdtemp(prefix="estimators_")
    train.train_and_evaluate(digits.get_config("smoke"), os.path.join(tmp, "digits"))
    config = os.path.join(ROOT, "configs/digits.py:smoke")
    ARGS = [f"--runs=digits={config}@{tmp}/digits", "--plan=digits:hutchinson4:4:4", "--batch=4"]
    OUT = os.path.join(tmp, "estimators.json")
else:
    os.chdir(ROOT)  # the study's run paths are relative to the repository
    ARGS = ["--report-only"]
    OUT = os.path.join(ROOT, "docs", "data", "likelihood_estimators.json")
rows = study.main([*ARGS, "--out", OUT])

# %% [markdown]
# ## bpd against K
# One panel per run and trace: the IW bound at K = 1, 4, 16 for each dequantization (mean ±
# SE over the same images), the ELBO on those images as a band. With Hutchinson's trace the
# K > 1 points are not bounds: compare the digits panels, exact against Hutchinson ×4.

# %%
cells = sorted({(r["run"], r["trace"]) for r in rows}, key=lambda c: (c[0] != "digits", c))
fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.6), squeeze=False)
for ax, (name, trace) in zip(axes[0], cells, strict=True):
    mine = [r for r in rows if r["run"] == name and r["trace"] == trace]
    for r in mine:
        if r["estimator"].startswith("ELBO"):
            ax.axhspan(r["bpd"] - r["bpd_se"], r["bpd"] + r["bpd_se"], color="grey", alpha=0.3)
            ax.axhline(r["bpd"], color="grey", lw=1, label="ELBO")
    for deq, colour in zip(study.DEQUANTIZATIONS, ("C0", "C1"), strict=True):
        pts = sorted(
            (r["K"], r["bpd"], r["bpd_se"])
            for r in mine
            if r.get("dequantization") == deq and "closed form" not in r["estimator"]
        )
        if pts:
            k, b, se = zip(*pts, strict=True)
            ax.errorbar(k, b, se, marker="o", color=colour, capsize=3, label=f"PF-ODE {deq}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("importance samples K")
    ax.set_title(f"{name}, {trace} trace (n = {mine[0]['n']})", fontsize=10)
axes[0, 0].set_ylabel("test bpd (upper bound)")
axes[0, 0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The table, and the paired differences
# Differences are per image on the same images and draws, so their SE is much smaller than
# the SE of either bpd.

# %%
print(study.table(rows))
