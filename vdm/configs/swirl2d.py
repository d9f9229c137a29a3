"""The project's best settings on the official 2-D swirl (the colab's data and encoding).

    python -m vdm.main --config=configs/swirl2d.py --workdir=runs/swirl2d

Same data, standardisation, Fourier features (n = 0..7 of [z, γ̃]) and plain swish MLP as
`configs/swirl2d_colab.py`, with what the project adds: the learned monotone schedule trained
with the variance-minimising gradient (VDM §5), antithetic t, warm-up and cosine decay of the
learning rate, an EMA of the parameters, and three hidden layers of 320 (fewer parameters
than the colab's 2 × 512: 223k against 290k).
Measured side by side with the colab notebook itself by `experiments/benchmarks/bench_swirl.py`:
docs/benchmarks.md.
"""

from vdm.configs import swirl2d_colab


def get_config(arg: str = ""):
    c = swirl2d_colab.get_config(arg)  # the colab's data, encoding, network family, smoke sizes
    if arg != "smoke":
        c.model.n_embd = 320
        c.model.n_layer = 3
        c.schedule.n_features = 256
    c.model.antithetic_time = True
    c.schedule.name = "learned_net"
    c.schedule.variance_min = True
    c.optimizer.decay = "cosine"
    c.optimizer.warmup_steps = 200
    c.optimizer.ema_decay = 0.999
    c.eval.use_ema = True
    return c
