"""ImageNet 32×32 of Chrabaszcz et al. 2017 (box-resized, 1,000 classes; tfds
`imagenet_resized/32x32`), with configs/imagenet32.py's model: **not** the set of VDM's
Table 1, and not comparable with its 3.72 bpd (i-DODE reports 3.69 on the old set and 3.43 on
this one for the same model).

    python -m vdm.main --config=configs/imagenet32_chrabaszcz.py --workdir=runs/in32_new \
        --config.data.data_dir=/data

Data: `Imagenet32_train_npz.zip` and `Imagenet32_val_npz.zip` from image-net.org's download
page (an account), in `data.data_dir` (1,281,167 train / 50,000 validation images; SHA-256 and
split sizes checked; vdm/data/archives.py).
"""

from vdm.configs import imagenet32


def get_config(arg: str = ""):
    c = imagenet32.get_config(arg)
    c.data.name = "imagenet32_chrabaszcz"
    return c
