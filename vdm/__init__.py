"""Variational Diffusion Models (Kingma, Salimans, Poole & Ho, 2021) in JAX/Flax.

The package, by layer (a module imports only from layers below it):

0. `runtime` (XLA:CPU defaults), `sharding` (the device mesh and process agreement);
1. `core`: the pure mathematics (diffusion, schedules, elbo, objectives, gmm);
2. `data` (datasets, toy sets, image grids), `networks` (ScoreUNet, MLPs);
3. `model` (schedule + network + head → the bound), `samplers` (pure samplers);
4. `eval` (dataset-level likelihood and FID) and `compress` (bits-back coding);
5. `run` (config, session, train, checkpoints, workdir, metrics), `configs`;
6. `main`: the command line.
"""

from vdm import _moved, runtime

runtime.apply_cpu_defaults()  # before any JAX backend starts: see vdm/runtime.py
if runtime.STATUS == "late":
    import warnings

    warnings.warn(runtime.describe("cpu"), RuntimeWarning, stacklevel=2)
_moved.install()

__version__ = "0.1.0"
