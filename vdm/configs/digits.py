"""scikit-learn's bundled 8×8 digits (17 grey levels): the embedded default, no download.

    python -m vdm.main --config=configs/digits.py --workdir=runs/digits

Continuous-time VDM, learned monotone schedule, a small ScoreUNet (≈220k parameters).
A few minutes on 2 CPU cores; its test bpd (ELBO and PF-ODE) is on docs/benchmarks.md.
"""

from vdm.configs import default


def get_config(arg: str = ""):
    c = default.get_config()
    c.data.name = "digits"
    c.data.vocab_size = 17
    c.model.n_embd = 32
    c.model.n_layer = 2
    c.model.dropout = 0.0
    c.model.fourier_features = False  # 17 grey levels: bins are wide, no fine structure
    c.schedule.gamma_min = -6.0  # σ₀ ≈ bin width / 4 for 17 levels; γ₀ is learned from here
    c.schedule.n_features = 256
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 100
    c.optimizer.ema_decay = 0.999
    c.optimizer.grad_clip = 1.0
    c.training.batch_size = 64
    c.training.num_steps = 3000
    c.training.log_every = 100
    c.training.eval_every = 1000
    c.training.save_every = 500
    c.eval.batch_size = 300
    c.sample.steps = 100
    c.sample.n_samples = 64
    if arg == "smoke":  # tiny sizes for tests: 6 steps, checkpoints at 2, 4, 6
        default.smoke(
            c,
            training__batch_size=8,
            training__num_steps=6,
            training__log_every=2,
            training__eval_every=6,
            eval__batch_size=100,
            sample__steps=4,
            sample__n_samples=4,
            data__n_test=100,
        )
    return c
