"""Make the importer's fixture from google-research/vdm's own code: checkpoints in clu's layout
and the official model's numbers for them.

    python -m tools.official_vdm_fixture --official PATH [--out tests/fixtures/official_vdm]

PATH is a checkout of github.com/google-research/vdm (a folder with its unmodified
`model_vdm.py`, `train_state.py` and `experiment.py`, or the repository's git directory, read at
HEAD). Its code needs `chex` (`pip install chex`), nothing else beyond this project's stack.
Nothing of it is copied: the fixture holds only what it computes.

For each of the official schedules `learnable_scalar` (cifar10.py's) and `learnable_nnet`
(cifar10_aug.py's), at a tiny size (n_embd 32, n_layer 1; the middle attention block is always
there, and `learnable_nnet` also has attention after every block), it writes
`<case>/checkpoints-0/` as clu's `MultihostCheckpoint` leaves it for host 0:

  checkpoint     TensorFlow's state file, `model_checkpoint_path: "ckpt-3"`
  ckpt-3.flax    `flax.serialization.to_bytes` of the official TrainState (step, params,
                 ema_params, opt_state of experiment.py's AdamW at a float learning rate)

(the `.index` / `.data-*` files clu also writes hold only TensorFlow's save counter and are
left out), and `<case>/reference.npz`: the inputs, the randomness the official model drew
(ε₀, t, ε) and what it computed from the EMA parameters: γ₀, γ₁, z_t, γ_t, ε̂(z_t; γ_t) and
the per-example loss terms `loss_recon`, `loss_klz`, `loss_diff` (nats), as
`experiment_vdm.py`'s eval loss sees them (deterministic, conditioning as given).

Every parameter is moved off its initial value (the official init zeroes the output
convolutions and projections, which would hide a wrong mapping), the schedule's `w` is made
negative (γ uses |w|), and the EMA parameters and Adam moments differ from the parameters.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np

CASES = {
    "learnable_scalar": dict(with_attention=False, conditioning=(0, 0, 0, 0)),
    "learnable_nnet": dict(with_attention=True, conditioning=(0, 1, 0, 1)),
}
STEP, SAVE_COUNTER = 1234, 3
SHAPE = (4, 8, 8, 3)  # batch, and images small enough for a committed fixture


def official_modules(path: str) -> dict:
    """google-research/vdm's `model_vdm` and `train_state`, imported from `path` unmodified."""
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "model_vdm.py")):
        tmp = tempfile.mkdtemp(prefix="official_vdm_")
        for name in ("model_vdm.py", "train_state.py"):
            text = subprocess.run(
                ["git", "--git-dir", path, "show", f"HEAD:{name}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        path = tmp
    out = {}
    for name in ("model_vdm", "train_state"):
        spec = importlib.util.spec_from_file_location(f"official_{name}", f"{path}/{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        out[name] = module
    return out


def official_optimizer(lr: float):
    """experiment.py's `get_optimizer`: AdamW with its weight-decay mask (no decay on biases)."""
    import flax
    import optax

    def decay_mask_fn(params):
        flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
        mask = {path: path[-1] != "bias" for path in flat}
        return flax.traverse_util.unflatten_dict(mask)

    return optax.adamw(
        learning_rate=lr, mask=decay_mask_fn, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.01
    )


def make_case(mods: dict, gamma_type: str, seed: int, out_dir: str) -> None:
    import flax
    import jax
    import jax.numpy as jnp

    model_vdm, train_state = mods["model_vdm"], mods["train_state"]
    case = CASES[gamma_type]
    cfg = model_vdm.VDMConfig(
        vocab_size=256,
        sample_softmax=False,
        antithetic_time_sampling=True,
        with_fourier_features=True,
        with_attention=case["with_attention"],
        gamma_type=gamma_type,
        gamma_min=-13.3,
        gamma_max=5.0,
        sm_n_timesteps=0,
        sm_n_embd=32,
        sm_n_layer=1,
        sm_pdrop=0.1,
    )
    model = model_vdm.VDM(cfg)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, SHAPE).astype(np.uint8)
    conditioning = np.asarray(case["conditioning"], np.float32)
    k_init, k_sample = jax.random.split(jax.random.key(seed))
    variables = model.init(
        {"params": k_init, "sample": k_sample},
        images=jnp.asarray(images),
        conditioning=conditioning,
    )

    def moved(tree, scale):
        leaves, treedef = jax.tree.flatten(tree)
        new = [
            np.asarray(x) + scale * rng.standard_normal(x.shape).astype(np.float32) for x in leaves
        ]
        return jax.tree.unflatten(treedef, new)

    params = flax.core.unfreeze(moved(variables["params"], 0.05))
    if gamma_type == "learnable_scalar":
        params["gamma"]["w"] = np.asarray([-17.9], np.float32)  # γ uses |w|
        params["gamma"]["b"] = np.asarray([-12.8], np.float32)
    state = train_state.TrainState.create(
        apply_fn=model.apply, variables={"params": params}, optax_optimizer=official_optimizer
    )
    ema = moved(params, 0.01)
    adam = state.opt_state[0]
    opt_state = (
        adam._replace(
            count=jnp.asarray(STEP, jnp.int32),
            mu=moved(adam.mu, 1e-3),
            nu=jax.tree.map(np.abs, moved(adam.nu, 1e-4)),
        ),
        *state.opt_state[1:],
    )
    state = state.replace(step=STEP, ema_params=ema, opt_state=opt_state)
    ckpt_dir = os.path.join(out_dir, gamma_type, "checkpoints-0")
    os.makedirs(ckpt_dir, exist_ok=True)
    with open(os.path.join(ckpt_dir, f"ckpt-{SAVE_COUNTER}.flax"), "wb") as f:
        f.write(flax.serialization.to_bytes(state))
    with open(os.path.join(ckpt_dir, "checkpoint"), "w") as f:
        f.write(
            f'model_checkpoint_path: "ckpt-{SAVE_COUNTER}"\n'
            f'all_model_checkpoint_paths: "ckpt-{SAVE_COUNTER}"\n'
        )

    # The official eval loss on the EMA parameters, recording the draws it makes.
    drawn = []
    normal, uniform = jax.random.normal, jax.random.uniform

    def recorded(fn):
        def draw(*args, **kwargs):
            x = fn(*args, **kwargs)
            drawn.append(np.asarray(x))
            return x

        return draw

    jax.random.normal, jax.random.uniform = recorded(normal), recorded(uniform)
    try:
        out = model.apply(
            {"params": ema},
            images=jnp.asarray(images),
            conditioning=jnp.asarray(conditioning),
            rngs={"sample": jax.random.key(seed + 1)},
            deterministic=True,
        )
    finally:
        jax.random.normal, jax.random.uniform = normal, uniform
    eps_0, t0, eps = drawn
    t = np.asarray(jnp.mod(t0 + jnp.arange(0.0, 1.0, step=1.0 / SHAPE[0]), 1.0))  # antithetic

    def gamma(m, t):
        return m.gamma(t)

    g_t = np.asarray(model.apply({"params": ema}, jnp.asarray(t), method=gamma))
    g_0, g_1 = (np.asarray(model.apply({"params": ema}, v, method=gamma)) for v in (0.0, 1.0))
    f = 2 * ((images.astype(np.float32) + 0.5) / 256) - 1  # EncDec.encode
    var_t = 1 / (1 + np.exp(-g_t))[:, None, None, None]
    z_t = (np.sqrt(1 - var_t) * f + np.sqrt(var_t) * eps).astype(np.float32)

    def score(m, z, g, c):
        return m.score_model(z, g, c, True)

    eps_hat = model.apply(
        {"params": ema}, jnp.asarray(z_t), jnp.asarray(g_t), jnp.asarray(conditioning), method=score
    )
    np.savez(
        os.path.join(out_dir, gamma_type, "reference.npz"),
        images=images,
        conditioning=conditioning,
        eps_0=eps_0,
        t=t,
        eps=eps,
        gamma_0=np.asarray(g_0).reshape(()),
        gamma_1=np.asarray(g_1).reshape(()),
        gamma_t=g_t,
        z_t=z_t,
        eps_hat=np.asarray(eps_hat),
        loss_recon=np.asarray(out.loss_recon),
        loss_klz=np.asarray(out.loss_klz),
        loss_diff=np.asarray(out.loss_diff),
        step=np.asarray(STEP),
    )
    terms = [float(np.mean(getattr(out, k))) for k in ("loss_recon", "loss_klz", "loss_diff")]
    print(f"{gamma_type}: mean loss terms (recon, klz, diff) {terms}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="google-research/vdm checkout or .git")
    parser.add_argument("--out", default="tests/fixtures/official_vdm")
    args = parser.parse_args(argv)
    mods = official_modules(args.official)
    for seed, gamma_type in enumerate(CASES):
        make_case(mods, gamma_type, seed, args.out)


if __name__ == "__main__":
    main()
