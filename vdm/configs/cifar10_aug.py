"""CIFAR-10 with random horizontal flips, the network conditioned on the flip flag.

    python -m vdm.main --config=configs/cifar10_aug.py --workdir=runs/cifar10_aug

As configs/cifar10.py; the flag lets the model learn from flipped images while the likelihood
is evaluated on the unflipped test set (flag 0).
"""

from vdm.configs import cifar10


def get_config(arg: str = ""):
    c = cifar10.get_config(arg)
    c.data.random_flip = True
    return c
