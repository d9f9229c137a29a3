"""The official VDM colab's 2-D example, exactly: its swirl, its MLP, its optimiser.

    python -m vdm.main --config=configs/swirl2d_colab.py --workdir=runs/swirl2d_colab

google-research/vdm colab/2D_VDM_Example.ipynb: the 1,024 8-bit swirl points (numpy seed 0),
standardised per dimension; a 2 × 512 swish MLP on [z, γ̃] with base-2 Fourier features
n = 0..7 of both; learned scalar γ from −13.3 / 5; adamw 3e-3 (weight decay 1e-4), full batch,
i.i.d. t, continuous time, 20,000 steps, no EMA; the ELBO over the same 1,024 points.
One departure: the colab's adamw also decays the schedule's two scalars and the biases; the
project never decays schedule parameters (it would pull γ₀, γ₁ towards 0).
Measured side by side with the colab notebook itself by `experiments/benchmarks/bench_swirl.py`:
docs/benchmarks.md.
"""

from vdm.configs import default


def get_config(arg: str = ""):
    c = default.get_config()
    c.data.name = "swirl2d"
    c.data.vocab_size = 256
    c.data.encoding = "standardize"
    c.model.network = "concat_mlp"
    c.model.n_embd = 512
    c.model.n_layer = 2
    c.model.dropout = 0.0
    c.model.fourier_features = True
    c.model.fourier_top_n = 7.0
    c.model.fourier_octaves = 8
    c.model.base_measure_skip = False
    c.model.antithetic_time = False
    c.schedule.name = "learned_scalar"
    c.schedule.gamma_min = -13.3
    c.schedule.gamma_max = 5.0
    c.optimizer.learning_rate = 3e-3
    c.optimizer.b2 = 0.999
    c.optimizer.weight_decay = 1e-4
    c.optimizer.ema_decay = 0.0
    c.training.batch_size = 1024
    c.training.num_steps = 20_000
    c.training.log_every = 500
    c.training.eval_every = 20_000
    c.training.save_every = 5000
    c.eval.batch_size = 1024
    c.eval.use_ema = False
    c.eval.repeats = 200
    c.sample.steps = 200
    c.sample.n_samples = 1024
    c.sample.batch_size = 1024
    if arg == "smoke":
        default.smoke(
            c,
            model__n_embd=16,
            training__batch_size=32,
            eval__batch_size=256,
            eval__repeats=1,
            sample__steps=4,
            sample__n_samples=16,
            sample__batch_size=16,
        )
    return c
