"""Downsampled ImageNet 32×32 of van den Oord et al. 2016, the set of VDM's Table 1 (3.72 bpd),
with the official code's settings (google-research/vdm `configs/imagenet32.py`, which loads
tfds `downsampled_imagenet/32x32`).

    python -m vdm.main --config=configs/imagenet32.py --workdir=runs/imagenet32 \
        --config.data.data_dir=/data

Data: `train_32x32.tar` and `valid_32x32.tar` (PNGs; 1,281,149 train / 49,999 validation
images) in `data.data_dir`. image-net.org/small no longer serves them: researchers use the
academic-torrents mirror, and the archives' SHA-256 (tensorflow-datasets' records) and split
sizes are checked before they are prepared into a memory-mapped cache (vdm/data/archives.py).
Not to be confused with Chrabaszcz et al. 2017's box-resized set, which gives other bpd:
configs/imagenet32_chrabaszcz.py.

As configs/cifar10.py with n_embd 256 (n_layer 32, dropout 0.1, the learned scalar schedule).
"""

from vdm.configs import cifar10


def get_config(arg: str = ""):
    c = cifar10.get_config(arg)
    c.data.name = "imagenet32_oord"
    c.data.download = False  # no public server: data.mirror names one
    if arg != "smoke":
        c.model.n_embd = 256
        c.training.eval_every = 100_000
    return c
