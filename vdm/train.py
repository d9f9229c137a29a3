"""Training: state, optimizer, the jitted train step, and the loop with eval, samples and saves.

The loop reads top to bottom: init or restore → for step: batch → train_step → log / eval /
sample / save. A run directory is exactly `workdir`; running the same command again resumes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdm import checkpoint, data, elbo, health, images, likelihood, samplers, sharding
from vdm import config as config_lib
from vdm import workdir as workdir_lib
from vdm.metrics_writer import MetricWriter
from vdm.model import VDM, count_params


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


NonFiniteLossError = health.DivergedError  # the name earlier versions raised


def weight_decay_mask(params) -> Any:
    """True for the network's conv/dense kernels only: no decay on biases, norm scales,
    embeddings or any schedule parameter (which would drag γ₀, γ₁ towards 0)."""

    def decays(path, _):
        names = [getattr(p, "key", getattr(p, "name", "")) for p in path]
        return names[0] == "net" and names[-1] == "kernel"

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg, num_steps: int) -> optax.GradientTransformation:
    """AdamW with warm-up, optional cosine decay and global-norm clipping (VDM App. B)."""
    if cfg.decay == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, cfg.warmup_steps, max(num_steps, cfg.warmup_steps + 1)
        )
    elif cfg.warmup_steps:
        lr = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    else:
        lr = cfg.learning_rate
    adamw = optax.adamw(
        lr,
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=weight_decay_mask,
    )
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip else adamw


def data_dims(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))


def init_state(model: VDM, optimizer, key: jax.Array, x_shape) -> TrainState:
    params = model.init(key, x_shape)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=params,
        opt_state=optimizer.init(params),
    )


def make_train_step(model: VDM, optimizer, cfg, n_dims: int, mesh):
    """Jitted (state, batches, key) → (state, metrics): a `lax.scan` over the leading
    steps-per-call axis of `batches`; per-step randomness is fold_in(key, step)."""
    ema_decay = cfg.optimizer.ema_decay

    def loss_fn(params, batch, key):
        terms = model.vlb_terms(params, key, batch, train=True)
        bpd = elbo.bpd_terms(terms, n_dims)
        return jnp.mean(bpd["bpd"]), (bpd, terms)

    def one_step(state: TrainState, batch, key):
        key = jax.random.fold_in(key, state.step)
        grads, (bpd, terms) = jax.grad(loss_fn, has_aux=True)(state.params, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # EMA warm-up: early on, average over the steps taken so far, not the initialisation.
        decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
        gamma_0, gamma_1 = model.endpoints(params)
        metrics = {k: jnp.mean(v) for k, v in bpd.items()}
        metrics.update(
            gamma_0=gamma_0,
            gamma_1=gamma_1,
            grad_norm=optax.tree.norm(grads),
            diffusion_var=jnp.var(terms["diffusion"]),  # nats², the estimator's variance
            params_finite=jnp.all(
                jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])
            ).astype(jnp.float32),
        )
        new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
        return new, metrics

    # XLA:CPU runs this step ~10x slower inside a loop (lax.scan, even with unroll=True) than
    # straight-line (measured with jax 0.10.2), so on CPU the steps are traced one after another;
    # accelerators keep the compact scan.
    unrolled = jax.default_backend() == "cpu"

    def train_steps(state, batches, key):
        if not unrolled:
            return jax.lax.scan(lambda s, b: one_step(s, b, key), state, batches)
        metrics = []
        for i in range(jax.tree.leaves(batches)[0].shape[0]):
            state, m = one_step(state, jax.tree.map(lambda x, i=i: x[i], batches), key)
            metrics.append(m)
        return state, jax.tree.map(lambda *ms: jnp.stack(ms), *metrics)

    rep = sharding.replicated(mesh)
    return jax.jit(
        train_steps,
        in_shardings=(rep, sharding.data_sharded(mesh, leading=1), rep),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )


def make_sampler(model: VDM, cfg, x_shape, batch: int):
    """Jitted (params, key, offset, labels) → integer samples, with the configured sampler and
    classifier-free guidance weight."""
    s = cfg.sample
    options = {k: s[k] for k in samplers.options_of(s.sampler)}

    @jax.jit
    def run(params, key, offset, labels):
        eps_uncond = model.eps_hat_fn(params)  # the null label for a class-conditional model
        eps = eps_uncond
        if model.num_classes and s.guidance:
            eps = samplers.guided(model.eps_hat_fn(params, label=labels), eps_uncond, s.guidance)
        x, info = samplers.sample(
            s.sampler,
            key,
            eps,
            model.gamma_fn(params),
            (batch, *x_shape),
            vocab_size=model.encoding,
            final_denoise=s.final_denoise,
            offset=offset,
            **options,
        )
        return x, info["nfe"]

    return run


def sample(model: VDM, params, cfg, key, x_shape, n: int, progress: bool = False) -> np.ndarray:
    """`n` integer samples in batches of `sample.batch_size`; example i always gets the same
    noise (fold_in by global index) and, for class-conditional models, label i mod classes."""
    from tqdm.auto import tqdm

    batch = min(cfg.sample.batch_size, n)
    run = make_sampler(model, cfg, x_shape, batch)
    out = []
    for start in tqdm(range(0, n, batch), disable=not progress, desc="sampling"):
        labels = (start + jnp.arange(batch)) % max(model.num_classes, 1)
        x, _ = run(params, key, jnp.asarray(start), labels)
        out.append(np.asarray(x))
    return np.concatenate(out)[:n]


class Run:
    """Everything one config needs: data, model, optimizer, mesh, jitted functions."""

    def __init__(self, config, workdir: str):
        config_lib.validate(config)
        self.config, self.workdir = config, workdir
        self.train_split = data.load_split(config.data, "train")
        self.test_split = data.load_split(config.data, "test")
        self.x_shape = tuple(self.train_split.shape)
        self.n_dims = data_dims(self.x_shape)
        stats = (
            data.channel_stats(self.train_split)
            if config.data.encoding == "standardize"
            else (None, None)
        )
        self.encoding = elbo.make_encoding(config.data.encoding, config.data.vocab_size, *stats)
        self.model = VDM.from_config(
            config,
            self.train_split.num_classes,
            n_cond_flags=int(config.data.random_flip),
            encoding=self.encoding,
        )
        self.optimizer = make_optimizer(config.optimizer, config.training.num_steps)
        self.mesh = sharding.make_mesh()
        self.rep = sharding.replicated(self.mesh)
        self.key = jax.random.key(config.seed)
        self.ckpt = checkpoint.Checkpointer(
            os.path.join(workdir, "checkpoints"), config.training.max_to_keep
        )

    def fresh_state(self) -> TrainState:
        init = jax.jit(
            lambda k: init_state(self.model, self.optimizer, k, self.x_shape),
            out_shardings=self.rep,
        )
        return init(jax.random.fold_in(self.key, 0))

    def restore(self, ckpt=None, step=None) -> TrainState:
        abstract = jax.eval_shape(
            lambda k: init_state(self.model, self.optimizer, k, self.x_shape), self.key
        )
        return (ckpt or self.ckpt).restore(checkpoint.abstract_like(abstract, self.rep), step)

    def evaluate(self, params) -> dict:
        """ELBO bpd of the test split: every example once per `eval.repeats`, mean ± SE."""
        step_fn = likelihood.make_eval_step(self.model, self.n_dims, self.mesh)
        key = jax.random.fold_in(self.key, 2)
        return likelihood.elbo_bpd(
            step_fn,
            params,
            self.test_split,
            self.config.eval.batch_size,
            key,
            self.mesh,
            self.config.eval.repeats,
        )

    def evaluate_pf_ode(self, params) -> dict:
        """PF-ODE bpd (dequantized) of the first `eval.pf_ode_examples` test examples."""
        e = self.config.eval
        return likelihood.pf_ode_bpd(
            self.model,
            params,
            self.test_split,
            e.pf_ode_batch_size,
            jax.random.fold_in(self.key, 4),
            e.pf_ode_examples,
            trace=e.pf_ode_trace,
            probe=e.pf_ode_probe,
            solver=e.pf_ode_solver,
            rtol=e.pf_ode_rtol,
            atol=e.pf_ode_atol,
        )

    def write_samples(self, params, step: int, progress: bool = False, tag: str = "") -> str:
        """Sample and write `samples/<tag>step_<N>.png` and `.npz`, never overwriting a file."""
        cfg = self.config
        key = jax.random.fold_in(self.key, 3)
        x = sample(self.model, params, cfg, key, self.x_shape, cfg.sample.n_samples, progress)
        if jax.process_index() != 0:
            return ""
        stem = os.path.join(self.workdir, "samples", f"{tag}step_{step:08d}")
        path, k = stem, 1
        while os.path.exists(path + ".png") or os.path.exists(path + ".npz"):
            path, k = f"{stem}_{k}", k + 1
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez_compressed(path + ".npz", samples=x)
        s = cfg.sample
        nfe = "adaptive" if s.sampler == "pf_ode" and not s.steps else f"{s.steps} steps"
        caption = f"{cfg.data.name}: {s.sampler}, {nfe}, training step {step}"
        if self.model.num_classes and s.guidance:
            caption += f"; guidance {s.guidance:g}, class i mod {self.model.num_classes}"
        reference = None
        if len(self.x_shape) == 1:  # low-dimensional data: draw the samples over the data
            n_ref = min(len(self.test_split), 4 * len(x))
            reference = self.test_split.get(np.arange(n_ref))["image"]
        return images.save_samples(path + ".png", x, self.encoding, caption, reference)


def _mean_metrics(pending: list) -> dict[str, float]:
    host = jax.device_get(pending)
    return {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in host]))) for k in host[0]}


def _check_health(pending: list, first_step: int, n: int, ckpt: checkpoint.Checkpointer):
    """Stop before any save if a step since the last check was unhealthy (vdm/health.py)."""
    last = ckpt.latest_step()
    info = (
        f"Last healthy checkpoint: step {last} in {ckpt.directory}."
        if last is not None
        else "No checkpoint was saved yet."
    )
    health.check(jax.device_get(pending), first_step, n, info)


def _crossed(step: int, n: int, every: int) -> bool:
    return step // every > (step - n) // every


def train_and_evaluate(config, workdir: str, reset: bool = False) -> dict:
    """Train (resuming from `workdir` if it holds checkpoints), evaluate and sample.

    Nothing is written before the config is validated, the workdir is locked against a second
    training run, and the config is checked against the run it would resume (vdm/workdir.py).
    Only process 0 writes files; every process computes.
    """
    config_lib.validate(config)
    workdir = workdir_lib.prepare(workdir)
    main = jax.process_index() == 0  # the one process that writes files, and holds the lock
    with workdir_lib.Lock(workdir) if main else contextlib.nullcontext():
        if reset and main:
            workdir_lib.reset(workdir)
        return _train_locked(config, workdir)


def _train_locked(config, workdir: str) -> dict:
    from tqdm.auto import tqdm

    main = jax.process_index() == 0
    run = Run(config, workdir)
    tc = config.training
    latest = run.ckpt.latest_step()
    diff = workdir_lib.check_config(workdir, config, latest)
    if diff and main:
        print(f"vdm: resuming with changed {', '.join(diff)}", flush=True)
    state = run.restore() if latest is not None else run.fresh_state()
    step = int(state.step)
    if main:
        workdir_lib.record_config(workdir, config, step, diff)
    writer = MetricWriter(workdir, resume_step=step, enabled=main)
    if main:
        print(
            f"vdm: {config.data.name}, {count_params(state.params):,} parameters, "
            f"{jax.device_count()} device(s), starting at step {step}",
            flush=True,
        )

    train_step = make_train_step(run.model, run.optimizer, config, run.n_dims, run.mesh)
    batches = data.train_batches(
        run.train_split,
        tc.batch_size,
        step,
        config.seed,
        config.data.random_flip,
        tc.steps_per_call,
        jax.process_index(),
        jax.process_count(),
    )
    pbar = tqdm(total=tc.num_steps, initial=step, disable=jax.process_index() != 0)
    pending, t_log, result, first = [], time.time(), {}, step
    try:
        while step < tc.num_steps:
            n = tc.steps_per_call
            batch = sharding.shard_batch(next(batches), run.mesh, leading=1)
            state, metrics = train_step(state, batch, run.key)
            step += n
            pending.append(metrics)
            last = step >= tc.num_steps
            if _crossed(step, n, tc.log_every) or _crossed(step, n, tc.save_every) or last:
                _check_health(pending, first, n, run.ckpt)
                m = _mean_metrics(pending)
                m["steps_per_sec"] = len(pending) * n / (time.time() - t_log)
                writer.write(step, m)
                pbar.set_postfix(bpd=f"{m['bpd']:.3f}", steps_s=f"{m['steps_per_sec']:.1f}")
                pending, t_log, first = [], time.time(), step
            pbar.update(n)
            if _crossed(step, n, tc.save_every) or last:
                run.ckpt.save(step, state)
            if _crossed(step, n, tc.eval_every) or last:
                params = state.ema_params if config.eval.use_ema else state.params
                result = run.evaluate(params)
                writer.write(step, {k: v for k, v in result.items() if k != "n"}, prefix="eval")
                run.write_samples(params, step)  # every process samples; process 0 writes
                t_log = time.time()
        if not result and step > 0:  # resumed a finished run: report it
            result = run.evaluate(state.ema_params if config.eval.use_ema else state.params)
    finally:
        pbar.close()
        run.ckpt.wait()
        run.ckpt.close()
        writer.close()
        batches.close()
    result["step"] = step
    if main:
        tmp = os.path.join(workdir, "eval_final.json.tmp")
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, os.path.join(workdir, "eval_final.json"))
    return result
