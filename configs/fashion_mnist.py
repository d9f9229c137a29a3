"""Full Fashion-MNIST (60k train / 10k test, 8-bit, 28×28).

    apt-get install dataset-fashion-mnist     # files in /usr/share/datasets/fashion-mnist/
    python -m vdm.main --config=configs/fashion_mnist.py --workdir=runs/fmnist

Reads the Debian package's idx files (or data.data_dir), or tensorflow-datasets with
--config.data.download=True when online. Continuous time, learned schedule, Fourier features.
"""

from configs import default


def get_config(arg: str = ""):
    c = default.get_config()
    c.data.name = "fashion_mnist"
    c.data.vocab_size = 256
    # Sized for a 2-core CPU: the ScoreUNet keeps full resolution, so compute grows with
    # n_embd² · n_layer · H · W (the paper's 128 × 32 is an accelerator model).
    c.model.n_embd = 32
    c.model.n_layer = 2
    c.model.dropout = 0.1
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 500
    c.optimizer.ema_decay = 0.999
    c.optimizer.grad_clip = 1.0
    c.training.batch_size = 32
    c.training.num_steps = 50_000
    c.training.log_every = 100
    c.training.eval_every = 5000
    c.training.save_every = 2000
    c.eval.batch_size = 500
    c.sample.steps = 200
    if arg == "smoke":
        c.model.n_embd = 8
        c.model.n_layer = 1
        c.schedule.n_features = 16
        c.training.batch_size = 4
        c.training.num_steps = 2
        c.training.log_every = 1
        c.eval.batch_size = 50
        c.sample.steps = 2
        c.sample.n_samples = 2
    return c
