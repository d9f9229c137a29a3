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
# # CIFAR-10: reproducing the paper's 2.65 bits per dimension
#
# VDM reports 2.65 bpd on the CIFAR-10 test set (Table 1; without data augmentation), with
# the ScoreUNet of App. B (n_embd 128, n_layer 32, attention in the middle block, dropout 0.1,
# Fourier features, ≈30.6M parameters), the learned scalar schedule (as the official code's
# `cifar10.py`), continuous time, AdamW (lr 2e-4, β₂ 0.99, weight decay 0.01), EMA 0.9999,
# batch 128, about 10M steps on TPUs. That is `configs/cifar10.py`; on accelerators (online
# for the first run: it fetches the official `cifar-10-binary.tar.gz` into `data.data_dir`,
# checks its SHA-256 and prepares it once, without TensorFlow):
#
#     python -m vdm.main --config=configs/cifar10.py --workdir=runs/cifar10 \
#         --config.data.data_dir=/data
#
# The global batch is sharded over every device (`jax.jit` over a `Mesh`); rerunning the
# command resumes. To evaluate a checkpoint — every test image once per repeat, mean ± SE —
# and, optionally, the probability-flow ODE bpd of the first N test images:
#
#     python -m vdm.main --config=configs/cifar10.py --workdir=runs/cifar10 --mode=eval \
#         --checkpoint=runs/cifar10/checkpoints/<step> --config.eval.repeats=4 \
#         --config.eval.pf_ode=True --config.eval.pf_ode_examples=1000
#
# This notebook runs the same path in Python. `SMOKE=1` (CI) does it end to end on a tiny
# archive made here in the official binary format (random images, no download) with the
# `:smoke` model; without it, it trains with the real data — an accelerator job, not a CPU one.

# %%
import os
import tempfile

from experiments import archive_formats
from vdm.configs import cifar10
from vdm.model import count_params
from vdm.run import session, train

ROOT = os.path.abspath(os.environ.get("VDM_ROOT", ".."))

SMOKE = bool(int(os.environ.get("SMOKE", "0")))
config = cifar10.get_config("smoke" if SMOKE else "")
workdir = os.environ.get("WORKDIR") or (
    tempfile.mkdtemp(prefix="cifar10_") if SMOKE else os.path.join(ROOT, "runs", "cifar10")
)
if SMOKE:  # 15 training and 16 test images in cifar-10-binary.tar.gz's own format
    config.data.data_dir = os.path.join(workdir, "data")
    archive_formats.cifar10(config.data.data_dir, per_batch=3, n_test=16)


print(workdir)

# %% [markdown]
# ## Train (or resume) and evaluate with the EMA parameters

# %%
result = train.train_and_evaluate(config, workdir)
print(
    f"step {result['step']}: test ELBO {result['bpd']:.4f} ± {result['bpd_se']:.4f} bpd "
    f"(recon {result['recon']:.4f}, prior {result['prior']:.4f}, "
    f"diffusion {result['diffusion']:.4f}); paper: 2.65"
)

# %% [markdown]
# ## Evaluate a checkpoint: repeated ELBO passes and the PF-ODE

# %%
config.eval.repeats = 2
config.eval.pf_ode_examples = 4 if SMOKE else 1000
run = session.Run(config, workdir)
state = run.restore()
print(f"{count_params(state.params['net']):,} network parameters at step {int(state.step)}")
elbo = run.evaluate(state.ema_params)
pf = run.evaluate_pf_ode(state.ema_params)
print(f"ELBO   {elbo['bpd']:.4f} ± {elbo['bpd_se']:.4f} bpd ({elbo['n']} example-passes)")
print(f"PF-ODE {pf['pf_ode_bpd']:.4f} ± {pf['pf_ode_bpd_se']:.4f} bpd ({pf['pf_ode_n']} images)")

# %% [markdown]
# ## The run at a glance: `vdm plot` and the last sample grid
# The same figure as `vdm plot runs/cifar10` (bpd, its terms, γ₀/γ₁ and the diffusion-loss
# variance against steps), and the samples written at the last eval.

# %%
import glob  # noqa: E402

from IPython.display import Image, display  # noqa: E402

from vdm.run import plot  # noqa: E402

display(Image(plot.plot_runs([workdir], os.path.join(workdir, "metrics.png"), ["cifar10"])))
display(Image(sorted(glob.glob(os.path.join(workdir, "samples", "*.png")))[-1]))
