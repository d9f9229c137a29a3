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
# # One digits model, six samplers: samples against NFE, and the ELBO against the PF-ODE
#
# The embedded default (`configs/digits.py`: scikit-learn's 8×8 digits, 17 grey levels, a
# small ScoreUNet with a learned schedule), trained as in the README's quickstart:
#
#     python -m vdm.main --config=configs/digits.py --workdir=runs/digits
#
# This notebook resumes from `runs/digits` (a finished run is only evaluated), then draws
# 64 samples from the EMA parameters with every sampler at a few numbers of network
# evaluations (NFE), from the same per-example noise, and compares the test ELBO with the
# probability-flow ODE likelihood on the same images. `SMOKE=1` (CI) trains the 6-step smoke
# model in a temporary directory: its pictures are noise and its numbers mean nothing.

# %%
import copy
import os
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np

from vdm.configs import digits
from vdm.data import images
from vdm.run import (
    generate,
    session,
    train,
)

ROOT = os.path.abspath(os.environ.get("VDM_ROOT", ".."))

SMOKE = bool(int(os.environ.get("SMOKE", "0")))
config = digits.get_config("smoke" if SMOKE else "")
workdir = os.environ.get("WORKDIR") or (
    tempfile.mkdtemp(prefix="digits_") if SMOKE else os.path.join(ROOT, "runs", "digits")
)
N = 16 if SMOKE else 64
print(workdir)

# %% [markdown]
# ## Train (or resume, or just report a finished run)

# %%
result = train.train_and_evaluate(config, workdir)
print(
    f"test ELBO {result['bpd']:.3f} ± {result['bpd_se']:.3f} bpd after {result['step']} steps "
    f"(recon {result['recon']:.3f}, prior {result['prior']:.4f}, diffusion "
    f"{result['diffusion']:.3f})"
)
run = session.Run(config, workdir)
params = run.eval_params(run.restore())

# %% [markdown]
# ## Samples per sampler and NFE
# Every panel starts from the same z₁ per example (noise is drawn from each example's index),
# so differences between panels are the samplers'. Decoded with the exact decoder p(x | z₀).

# %%
GRID = [
    ("ancestral", {"steps": 10}),
    ("ancestral", {"steps": 100}),
    ("ddim", {"steps": 10, "eta": 0.0}),
    ("ddim", {"steps": 50, "eta": 0.0}),
    ("dpm_solver_pp_2m", {"steps": 10, "grid": "uniform_logsnr"}),
    ("dpm_solver_pp_2m", {"steps": 20, "grid": "uniform_logsnr"}),
    ("euler_maruyama", {"steps": 100}),
    ("pc", {"steps": 50, "n_corrector": 1}),
    ("pf_ode", {"steps": 0, "solver": "tsit5"}),
]
key = jax.random.fold_in(run.key, 3)
panels = []
for name, options in GRID:
    s = copy.deepcopy(config.sample)
    s.sampler, s.batch_size = name, N
    for k, v in options.items():
        s[k] = v
    fn = generate.make_sampler(run.model, s, run.x_shape, N)
    x, nfe = fn(params, key, np.int32(0), np.zeros(N, np.int32))
    panels.append((f"{name}{' η=0' if name == 'ddim' else ''}, NFE {int(nfe)}", np.asarray(x)))
test = run.test_split.get(np.arange(N))["image"]
panels.append(("test data", test))

cols = 5
fig, axes = plt.subplots(2, cols, figsize=(3.1 * cols, 6.8))
for ax, (title, x) in zip(axes.flat, panels, strict=True):
    grid = images.image_grid(x, config.data.vocab_size, min_tile=8)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.suptitle(f"digits, step {result['step']}: 64 samples per sampler from the same noise")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## ELBO against the probability-flow ODE, on the same test images
# The ELBO bounds the discrete bpd through the exact decoder; the PF-ODE (diffrax Tsit5,
# Hutchinson trace) is the density of uniformly dequantized data, which bounds it too
# (`vdm.eval.likelihood.dequantize`). Both on the first N test images.

# %%
config.eval.pf_ode_examples = config.eval.pf_ode_batch_size = N
run = session.Run(config, workdir)
pf = run.evaluate_pf_ode(params)
elbo_all = run.evaluate(params)
print(f"ELBO   on all {elbo_all['n']} test draws: {elbo_all['bpd']:.3f} ± {elbo_all['bpd_se']:.3f}")
print(
    f"PF-ODE on the first {pf['pf_ode_n']}: {pf['pf_ode_bpd']:.3f} ± {pf['pf_ode_bpd_se']:.3f} "
    f"bpd, NFE ≤ {pf['pf_ode_nfe_max']}"
)
fig, ax = plt.subplots(figsize=(5, 3.2))
names = ["ELBO (all test)", f"PF-ODE ({pf['pf_ode_n']} images)", "uniform, log₂ 17"]
values = [elbo_all["bpd"], pf["pf_ode_bpd"], np.log2(17)]
errors = [2 * elbo_all["bpd_se"], 2 * pf["pf_ode_bpd_se"], 0]
ax.barh(names, values, xerr=errors, color=["tab:blue", "tab:orange", "0.7"])
ax.set_xlabel("test bits per dimension (± 2 SE)")
ax.invert_yaxis()
plt.tight_layout()
plt.show()
