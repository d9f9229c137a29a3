"""ImageNet 64×64 of Chrabaszcz et al. 2017 (box-resized; tfds `imagenet_resized/64x64`), with
configs/imagenet64.py's model: **not** the set of VDM's Table 1 (its 3.40 bpd).

    python -m vdm.main --config=configs/imagenet64_chrabaszcz.py --workdir=runs/in64_new \
        --config.data.data_dir=/data

Data: `Imagenet64_train_part1_npz.zip`, `Imagenet64_train_part2_npz.zip` and
`Imagenet64_val_npz.zip` from image-net.org's download page, in `data.data_dir`
(vdm/data/archives.py).
"""

from vdm.configs import imagenet64


def get_config(arg: str = ""):
    c = imagenet64.get_config(arg)
    c.data.name = "imagenet64_chrabaszcz"
    return c
