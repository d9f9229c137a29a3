"""ImageNet 32×32 (tfds `imagenet_resized/32x32`) with the paper's larger model (VDM App. B).

    python -m vdm.main --config=configs/imagenet32.py --workdir=runs/imagenet32

n_embd 256, n_layer 32, no dropout, batch 128 (paper: 3.72 bpd). The data are read with
random access through `tfds.data_source`, never loaded whole into memory.
"""

from vdm.configs import cifar10


def get_config(arg: str = ""):
    c = cifar10.get_config(arg)
    c.data.name = "imagenet32"
    if arg != "smoke":
        c.model.n_embd = 256
        c.model.dropout = 0.0
        c.training.eval_every = 100_000
    return c
