"""Downsampled ImageNet 64×64 of van den Oord et al. 2016, the set of VDM's Table 1 (3.40 bpd),
with the official code's settings (google-research/vdm `configs/imagenet64.py`: n_embd 256,
n_layer 64; its dataset.py has no 64×64 branch).

    python -m vdm.main --config=configs/imagenet64.py --workdir=runs/imagenet64 \
        --config.data.data_dir=/data

Data: `train_64x64.tar` and `valid_64x64.tar` (12 GB of PNGs; 1,281,149 / 49,999 images) in
`data.data_dir`, checked and prepared once into a memory-mapped cache of 15.7 GB that each
host reads only its own batches' rows of (vdm/data/archives.py). Chrabaszcz et al. 2017's set:
configs/imagenet64_chrabaszcz.py.
"""

from vdm.configs import imagenet32


def get_config(arg: str = ""):
    c = imagenet32.get_config(arg)
    c.data.name = "imagenet64_oord"
    if arg != "smoke":
        c.model.n_layer = 64
    return c
