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
# # The official 2-D example: the VDM colab, exactly, beside the project's best settings
#
# The data are the colab's 1,024 8-bit swirl points (google-research/vdm,
# `colab/2D_VDM_Example.ipynb`: numpy seed 0, bit for bit), standardised per dimension as the
# colab does; the ELBO is over the same 1,024 points.
#
# - `configs/swirl2d_colab.py`: the colab's model and optimiser exactly (2 × 512 swish MLP on
#   [z, γ̃] with Fourier features n = 0..7, learned scalar γ from −13.3 / 5, adamw 3e-3,
#   full batch, i.i.d. t, 20,000 steps, no EMA).
# - `configs/swirl2d.py`: the project's best settings on the same data and network size.
#
# `SMOKE=1` (what CI runs) trains tiny models for a few steps; unset it for the full runs (in
# `runs/swirl2d_colab` and `runs/swirl2d_best`, resumed if they exist), or point
# `WORKDIR_COLAB` / `WORKDIR_BEST` at finished runs to only draw the figures.
#
# **Measured** 2026-11-24 at full size on a shared 2-core CPU, beside the colab notebook run
# headless (`python experiments/benchmarks/bench_swirl.py --official=<google-research/vdm
# checkout>`; ELBO over the 1,024 points from 200 draws):
#
# | run | ELBO bpd | γ₀ | γ₁ | wall time |
# |---|---|---|---|---|
# | the colab notebook itself | 5.117 ± 0.021 | −10.76 | 6.92 | 1.00× |
# | `configs/swirl2d_colab.py` | 5.161 ± 0.020 | −10.63 | 6.67 | 0.81× |
# | `configs/swirl2d.py` | 4.875 ± 0.018 | −10.93 | 4.80 | 0.95× |
#
# The data's own entropy, the floor for any model of these 1,024 points, is 4.735 bpd.

# %%
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from vdm import data, samplers
from vdm.configs import swirl2d, swirl2d_colab
from vdm.core import diffusion
from vdm.run import session, train

ROOT = os.path.abspath(os.environ.get("VDM_ROOT", ".."))

SMOKE = bool(int(os.environ.get("SMOKE", "0")))
arg = "smoke" if SMOKE else ""
configs = {"colab": swirl2d_colab.get_config(arg), "best": swirl2d.get_config(arg)}
workdirs = {  # full size: runs/ under the repository, so a re-render only redraws
    name: os.environ.get(f"WORKDIR_{name.upper()}")
    or (
        tempfile.mkdtemp(prefix=f"swirl_{name}_")
        if SMOKE
        else os.path.join(ROOT, "runs", f"swirl2d_{name}")
    )
    for name in configs
}
print("smoke" if SMOKE else "full", "runs in", workdirs)

# %% [markdown]
# ## Train both (each resumes if its workdir already holds checkpoints)

# %%
results = {name: train.train_and_evaluate(configs[name], workdirs[name]) for name in configs}
for name, r in results.items():
    print(
        f"{name:6s} ELBO {r['bpd']:.3f} ± {r['bpd_se']:.3f} bpd "
        f"(recon {r['recon']:.3f}, prior {r['prior']:.4f}, diffusion {r['diffusion']:.3f}) "
        f"after {r['step']} steps, {r['n']} draws over the points"
    )

# %% [markdown]
# ## Training curves and the learned endpoints

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
runs, params = {}, {}
for name in configs:
    rows = [json.loads(ln) for ln in open(os.path.join(workdirs[name], "metrics.jsonl"))]
    tr = [r for r in rows if r["split"] == "train"]
    axes[0].plot([r["step"] for r in tr], [r["bpd"] for r in tr], label=name)
    axes[1].plot([r["step"] for r in tr], [r["gamma_0"] for r in tr], label=f"{name} γ₀")
    axes[1].plot([r["step"] for r in tr], [r["gamma_1"] for r in tr], "--", label=f"{name} γ₁")
    runs[name] = session.Run(configs[name], workdirs[name])
    state = runs[name].restore()
    params[name] = runs[name].eval_params(state)
    g0, g1 = runs[name].model.endpoints(params[name])
    print(f"{name:6s} learned gamma_0 = {float(g0):.3f}, gamma_1 = {float(g1):.3f}")
axes[0].set(xlabel="step", ylabel="train bpd (batch mean)", title="ELBO during training")
axes[0].set_ylim(top=min(axes[0].get_ylim()[1], 8.0))
axes[1].set(xlabel="step", title="schedule endpoints")
for ax in axes:
    ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Samples against data at the colab's four noise levels
# One 200-step ancestral chain per model, read at t = 1, 0.5, 0.4 and 0 (the colab's
# `z[0]`, `z[99]`, `z[119]`, `z[199]`), in blue; q(z_t) of the data at the same t, in red.


# %%
def chain(run, p, key, n, stops=(0.5, 0.4, 0.0), steps_per_unit=200):
    """z at t = 1 and at each stop of one ancestral chain, 200 steps per unit of t."""
    gamma_fn = run.model.gamma_fn(p)
    eps_hat = run.model.eps_hat_fn(p)
    z = jax.random.normal(key, (n, 2))
    out, t_from = [z], 1.0
    for i, t_to in enumerate(stops):
        steps = max(1, round((t_from - t_to) * steps_per_unit))
        seg = lambda u, a=t_from, b=t_to: gamma_fn(b + (a - b) * u)  # noqa: E731
        z, _ = samplers.ancestral(
            jax.random.fold_in(key, i + 1), eps_hat, seg, z.shape, steps=steps, z_init=z
        )
        out.append(z)
        t_from = t_to
    return out


ts = (1.0, 0.5, 0.4, 0.0)
x = data.swirl_official()
fig, axes = plt.subplots(2, 4, figsize=(13, 6.5), sharex=True, sharey=True)
for row, name in enumerate(configs):
    run, p = runs[name], params[name]
    f = run.encoding.encode(x)
    zs = chain(run, p, jax.random.key(0), len(x))
    gamma_fn = run.model.gamma_fn(p)
    for col, (t, z) in enumerate(zip(ts, zs, strict=True)):
        g = jnp.full((len(x),), gamma_fn(jnp.asarray(t)))
        q = diffusion.q_sample(f, g, jax.random.normal(jax.random.key(col + 1), f.shape))
        ax = axes[row, col]
        ax.scatter(*np.asarray(q).T, s=2, alpha=0.15, c="red", label="q(z_t | data)")
        ax.scatter(*np.asarray(z).T, s=2, alpha=0.15, c="blue", label="p(z_t) samples")
        ax.set(xlim=(-2, 2), ylim=(-2, 2), aspect="equal", title=f"{name}, t = {t}")
axes[0, 0].legend(fontsize=7, loc="lower left", markerscale=4)
plt.tight_layout()
plt.show()
