"""CIFAR-10 with the paper's settings (VDM App. B): the paper reports 2.65 bpd (test).

Not trained here (a CPU machine); the pipeline is tested end to end on tfds mock data and the
network's parameter count is pinned to the paper's model (30,586,243 ≈ 30.6M).

    python -m vdm.main --config=configs/cifar10.py --workdir=runs/cifar10

For accelerator users online: data through tensorflow-datasets (`tfds.data_source`, no
TensorFlow), downloaded on first use. ScoreUNet n_embd 128, n_layer 32, attention in the middle
block only (≈30.6M parameters), dropout 0.1, Fourier features, learned monotone schedule;
AdamW lr 2e-4, β₂ 0.99, weight decay 0.01, EMA 0.9999, batch 128.
"""

from vdm.configs import default


def get_config(arg: str = ""):
    c = default.get_config()
    c.data.name = "cifar10"
    c.data.vocab_size = 256
    c.data.download = True
    c.model.n_embd = 128
    c.model.n_layer = 32
    c.model.with_attention = False
    c.model.dropout = 0.1
    c.model.fourier_features = True
    c.schedule.name = "learned_net"
    c.optimizer.learning_rate = 2e-4
    c.optimizer.b2 = 0.99
    c.optimizer.weight_decay = 0.01
    c.optimizer.ema_decay = 0.9999
    c.training.batch_size = 128
    c.training.num_steps = 10_000_000
    c.training.steps_per_call = 10
    c.training.log_every = 1000
    c.training.eval_every = 50_000
    c.training.save_every = 10_000
    c.eval.batch_size = 500
    c.sample.steps = 1000
    if arg == "smoke":  # mock-data sizes for tests
        default.smoke(c, data__download=False)
    return c
