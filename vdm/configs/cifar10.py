"""CIFAR-10 with the official code's settings (google-research/vdm `configs/cifar10.py`):
the paper reports 2.65 bpd (test), the released checkpoint 2.637.

    python -m vdm.main --config=configs/cifar10.py --workdir=runs/cifar10 \
        --config.data.data_dir=/data

Data: the official binary archive (`cifar-10-binary.tar.gz`, 170 MB, its SHA-256 checked),
read without TensorFlow; `data.download` fetches it into `data.data_dir` on first use (or put
the archive, or its extracted `cifar-10-batches-bin/`, there), and it is prepared once into a
memory-mapped uint8 cache (vdm/data/archives.py). Every eval record names the version.

ScoreUNet n_embd 128, n_layer 32, attention in the middle block only (≈30.6M parameters),
dropout 0.1, Fourier features; the learned scalar schedule γ(t) = γ₀ + (γ₁ − γ₀)t with γ₀,
γ₁ learned from −13.3 and 5 (the official `learnable_scalar`; `learned_net` is the paper's
App. H network, one flag away: --config.schedule.name=learned_net); AdamW lr 2e-4, β₂ 0.99,
weight decay 0.01, EMA 0.9999, batch 128, 100 warm-up steps.

Not trained on this project's CPU machines; the pipeline is tested end to end on archives made
in the official format, and the parameter count is pinned to the paper's model.
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
    c.schedule.name = "learned_scalar"
    c.schedule.gamma_min = -13.3
    c.schedule.gamma_max = 5.0
    c.optimizer.learning_rate = 2e-4
    c.optimizer.b2 = 0.99
    c.optimizer.weight_decay = 0.01
    c.optimizer.ema_decay = 0.9999
    c.optimizer.warmup_steps = 100
    c.training.batch_size = 128
    c.training.num_steps = 10_000_000
    c.training.steps_per_call = 10
    c.training.log_every = 1000
    c.training.eval_every = 50_000
    c.training.save_every = 10_000
    c.eval.batch_size = 500
    c.sample.steps = 1000
    if arg == "smoke":  # tiny sizes for tests, on archives a test makes (data.verify=False)
        default.smoke(c, data__download=False, data__verify=False)
    return c
