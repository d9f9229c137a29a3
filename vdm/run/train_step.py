"""One optimisation step: the train state, the optimizer (VDM App. B) and the jitted step.

`make_train_step` returns one `jax.jit` over the mesh: the batch sharded on the data axis,
state and key replicated, the state donated. The loop that calls it is `vdm/run/train.py`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from vdm import sharding
from vdm.core import elbo, objectives
from vdm.model import VDM


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def weight_decay_mask(params) -> Any:
    """True for the network's conv/dense kernels only: no decay on biases, norm scales,
    embeddings or any schedule parameter (which would drag γ₀, γ₁ towards 0)."""

    def decays(path, _):
        names = [getattr(p, "key", getattr(p, "name", "")) for p in path]
        return names[0] == "net" and names[-1] == "kernel"

    return jax.tree_util.tree_map_with_path(decays, params)


class AdaptiveNoiseState(NamedTuple):
    noise_hist: jax.Array  # (bins,): the expected weighted loss per λ bin, fitted online


def adaptive_noise(n_bins: int, decay: float) -> optax.GradientTransformationExtraArgs:
    """Keeps the adaptive p(λ)'s histogram (Kingma & Gao 2023 §5) in the optimizer state:
    each update folds in the step's per-bin (Σ w‖ε − ε̂‖², count) given as `noise_stats`;
    the gradients pass through unchanged. Checkpoints and sharding treat it as optimizer
    state, so it is saved, restored and replicated with the rest."""

    def init(params):
        del params
        return AdaptiveNoiseState(jnp.ones((n_bins,), jnp.float32))

    def update(updates, state, params=None, noise_stats=None, **extra):
        del params, extra
        if noise_stats is None:
            return updates, state
        sums, counts = noise_stats
        hist = objectives.update_hist(state.noise_hist, sums, counts, decay)
        return updates, AdaptiveNoiseState(hist)

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(cfg, num_steps: int, objective=None) -> optax.GradientTransformation:
    """AdamW with warm-up, optional cosine decay and global-norm clipping (VDM App. B); with
    `objective.noise_dist='adaptive'`, also the adaptive p(λ)'s histogram (`adaptive_noise`)."""
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
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip else adamw
    if objective is not None and objective.noise_dist == "adaptive":
        opt = optax.chain(opt, adaptive_noise(objective.adaptive_bins, objective.adaptive_decay))
    return opt


def noise_hist(opt_state):
    """The adaptive p(λ)'s histogram in an optimizer state (None if it has none)."""
    return optax.tree_utils.tree_get(opt_state, "noise_hist", None)


def init_state(model: VDM, optimizer, key: jax.Array, x_shape) -> TrainState:
    params = model.init(key, x_shape)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=params,
        opt_state=optimizer.init(params),
    )


def _is_params(node) -> bool:
    """A model's parameter dict ({'schedule', 'net'}), wherever a state holds one (the
    parameters, their EMA, the optimizer's moments)."""
    return isinstance(node, dict) and set(node) == {"schedule", "net"}


def stored_state(model: VDM, state):
    """`state` with every parameter tree in it as checkpoints hold it (`VDM.stored_params`)."""
    return jax.tree.map(
        lambda n: model.stored_params(n) if _is_params(n) else n, state, is_leaf=_is_params
    )


def applied_state(model: VDM, state):
    """A stored state (`stored_state`) with every parameter tree in the form `model` applies."""
    return jax.tree.map(
        lambda n: model.applied_params(n) if _is_params(n) else n, state, is_leaf=_is_params
    )


def make_train_step(model: VDM, optimizer, cfg, n_dims: int, mesh):
    """(state, batches, key) → (state, metrics) over the leading steps-per-call axis of
    `batches`, as one jitted `lax.scan` or a host loop over one compiled step
    (`training.loop`, see `resolve_loop`); per-step randomness is fold_in(key, step)."""
    ema_decay = cfg.optimizer.ema_decay
    adaptive = cfg.objective.noise_dist == "adaptive"

    def loss_fn(params, batch, key, hist):
        terms, stats = model.train_terms(params, key, batch, hist=hist, stats=adaptive)
        bpd = elbo.bpd_terms(terms, n_dims)
        return jnp.mean(bpd["bpd"]), (bpd, terms, stats)

    def one_step(state: TrainState, batch, key):
        key = jax.random.fold_in(key, state.step)
        hist = noise_hist(state.opt_state) if adaptive else None
        grads, (bpd, terms, stats) = jax.grad(loss_fn, has_aux=True)(state.params, batch, key, hist)
        extra = {}
        if adaptive:
            lam, integrand, lam_min, lam_max = stats
            n_bins = cfg.objective.adaptive_bins
            extra["noise_stats"] = objectives.bin_stats(lam, integrand, lam_min, lam_max, n_bins)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **extra)
        params = optax.apply_updates(state.params, updates)
        # EMA warm-up: early on, average over the steps taken so far, not the initialisation.
        decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
        gamma_0, gamma_1 = model.endpoints(params)
        metrics = {k: jnp.mean(v) for k, v in bpd.items()}
        if model.weighted:  # not a bound: its own names (eval still reports the ELBO)
            metrics["objective"] = metrics.pop("bpd")
            metrics["weighted_diffusion"] = metrics.pop("diffusion")
        metrics.update(  # a multivariate γ reports its mean over the dimensions
            gamma_0=jnp.mean(gamma_0),
            gamma_1=jnp.mean(gamma_1),
            grad_norm=optax.tree.norm(grads),
            diffusion_var=jnp.var(terms["diffusion"]),  # nats², the estimator's variance
            params_finite=jnp.all(
                jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])
            ).astype(jnp.float32),
        )
        new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
        return new, metrics

    def scan_steps(state, batches, key):
        return jax.lax.scan(lambda s, b: one_step(s, b, key), state, batches)

    def single_step(state, batches, key):  # straight-line: no loop around the step
        state, metrics = one_step(state, jax.tree.map(lambda x: x[0], batches), key)
        return state, jax.tree.map(lambda m: m[None], metrics)

    rep = sharding.replicated(mesh)
    jit = functools.partial(
        jax.jit,
        in_shardings=(rep, sharding.data_sharded(mesh, leading=1), rep),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )
    if resolve_loop(cfg.training.loop) == "scan":
        return jit(scan_steps)
    return HostLoop(jit(single_step))


LOOPS = ("auto", "scan", "host")


def resolve_loop(loop: str) -> str:
    """`training.loop`: 'scan' runs the steps of one call as a `lax.scan` inside one jitted
    function; 'host' compiles one step and calls it once per step of the call; 'auto' is
    'host' on CPU and 'scan' on accelerators.

    On XLA:CPU a train step inside a while loop (which `lax.scan` lowers to, unrolled or not)
    runs tens of times slower than the same step straight-line, and unrolling the steps in
    the trace makes compile time grow with `steps_per_call`
    (`python experiments/benchmarks/bench_steps_per_call.py`); the host loop costs one dispatch per
    step and compiles once, whatever `steps_per_call` is.
    """
    if loop not in LOOPS:
        raise ValueError(f"training.loop must be one of {list(LOOPS)}, got {loop!r}")
    if loop == "auto":
        return "host" if jax.default_backend() == "cpu" else "scan"
    return loop


class HostLoop:
    """(state, batches, key) → (state, metrics) like the scan, by calling one compiled
    straight-line step for each step along the leading axis of `batches`."""

    def __init__(self, step):
        self.step = step

    def __call__(self, state, batches, key):
        k = jax.tree.leaves(batches)[0].shape[0]
        if k == 1:
            return self.step(state, batches, key)
        metrics = []
        for i in range(k):
            one = jax.tree.map(lambda x, i=i: x[i : i + 1], batches)
            state, m = self.step(state, one, key)
            metrics.append(m)
        return state, jax.tree.map(lambda *ms: jnp.concatenate(ms), *metrics)

    def lower(self, state, batches, key):
        """The compiled single step's lowering, for one step of `batches` (benchmarks)."""
        return self.step.lower(state, jax.tree.map(lambda x: x[:1], batches), key)

    def _cache_size(self) -> int:
        return self.step._cache_size()
