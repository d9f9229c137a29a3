"""i-DODE's training recipe (Zheng et al. 2023, thu-ml/i-DODE) on the MNIST model.

    python -m vdm.main --config=configs/mnist_idode.py --workdir=runs/mnist_idode

The MNIST config with the velocity head (v = α ε − σ x), the ELBO weighting (w = 1, so the
training loss is still the bound's diffusion term in expectation) and the importance
distribution p(λ) ∝ α²(λ) = sigmoid(λ) over the schedule's range
(`objective.noise_dist=alpha_sq`, vdm/core/objectives.py). Evaluate it the i-DODE way with
`--config.eval.pf_ode=True --config.eval.dequantization=truncated_normal`. Measured against
the ε model at equal steps: docs/benchmarks.md.
"""

from vdm.configs import mnist


def get_config(arg: str = ""):
    c = mnist.get_config(arg)
    c.model.head = "v"
    c.model.base_measure_skip = False  # the base measure z belongs to the ε head only
    c.objective.weighting = "elbo"
    c.objective.noise_dist = "alpha_sq"
    return c
