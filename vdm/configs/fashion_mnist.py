"""Full Fashion-MNIST (60k train / 10k test, 8-bit, 28×28): the MNIST model on more data.

    apt-get install dataset-fashion-mnist     # files in /usr/share/datasets/fashion-mnist/
    python -m vdm.main --config=configs/fashion_mnist.py --workdir=runs/fmnist

Reads the Debian package's idx files (or data.data_dir), or tensorflow-datasets with
--config.data.download=True when online. Continuous time, learned schedule, Fourier features.
See notebooks/likelihood_fashion_mnist.py for a measured CPU run.
"""

from vdm.configs import mnist


def get_config(arg: str = ""):
    c = mnist.get_config(arg)
    c.data.name = "fashion_mnist"
    c.data.n_test = 0  # the source has its own 10k test split
    if arg != "smoke":
        c.optimizer.warmup_steps = 500
        c.training.num_steps = 50_000
        c.training.eval_every = 5000
        c.training.save_every = 2000
        c.eval.batch_size = 500
    return c
