"""Dataset-level bits per dimension: the ELBO and the probability-flow ODE.

`elbo_bpd` passes over a split with every example exactly once per repeat (the last batch is
padded and masked), each repeat with independent t and ε, and reports the mean and standard
error of the per-example bound, in total and per term. `pf_ode_bpd` integrates the
probability-flow ODE with diffrax for an exact (up to solver error) continuous density p(z₀)
and bounds the discrete bpd from above through a dequantization q(z₀ | x) inside x's bin
(uniform or truncated normal, `vdm.eval.dequantization`), with one draw or an
importance-weighted bound over K. Every result carries a record of how it was made.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm import data, sharding
from vdm.core import diffusion, draws, elbo
from vdm.eval import dequantization as dequantization_lib
from vdm.eval.dequantization import dequantize, log_bin_volume  # noqa: F401 (public here)
from vdm.eval.ledger import Ledger
from vdm.eval.records import describe, pf_ode_record  # noqa: F401 (public here)
from vdm.model import VDM
from vdm.samplers.common import example_keys
from vdm.samplers.ode import (
    EVALS_PER_STEP,
    SOLVERS,
    adaptive_step_control,
    is_vector,
    pf_ode_drift_t,
    solve,
)

TERMS = ("bpd", "recon", "prior", "diffusion")  # every model's; a conditional γ adds "latent"


def make_eval_step(model: VDM, n_dims: int, mesh, matmul_precision: str = "highest"):
    """Jitted: (params, batch, key) → {term: per-example bpd (B,)} of the global batch,
    gathered on every process (the padding rows included; `batch['mask']` marks them)."""

    def step(params, batch, key):
        with jax.default_matmul_precision(matmul_precision):
            terms = model.vlb_terms(params, key, batch, train=False)
        return elbo.bpd_terms(terms, n_dims)

    rep = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(rep, sharding.data_sharded(mesh), rep), out_shardings=rep)


def _bar(total: int, initial: int, desc: str, progress: bool):
    """A progress bar over examples with rate and ETA (process 0, with `progress`)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="img",
        disable=not (progress and jax.process_index() == 0),
    )


def elbo_bpd(
    eval_step,
    params,
    split: data.Split,
    batch_size: int,
    key: jax.Array,
    mesh,
    repeats: int = 1,
    ledger: Ledger | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """ELBO in bpd over `split`: {'bpd', 'bpd_se', 'recon', …, 'n'}; SE over examples×repeats.
    Every term of the model's bound is reported (`TERMS`, and 'latent' for an
    input-conditional schedule).

    Batch i of repeat r draws its t and ε from fold_in(fold_in(key, r), i); with a `ledger`
    (vdm/eval/ledger.py) each batch's per-example terms are kept as they are made, and a
    rerun reads them back instead of computing them: the same number as one uninterrupted run.
    """
    ledger = ledger or Ledger(None, "", {})
    pid, pcount = jax.process_index(), jax.process_count()
    n = len(split)
    n_batches = -(-n // batch_size)

    def indices(c):  # the examples of chunk c: batch c mod n_batches of repeat c // n_batches
        i = c % n_batches
        return (
            np.arange(i * batch_size, min((i + 1) * batch_size, n))
            if c < n_batches * repeats
            else None
        )

    done = ledger.done(indices)
    rows: dict[str, list] = {}
    seconds = 0.0
    with _bar(n * repeats, 0, "ELBO", progress) as bar:
        for r in range(repeats):
            for i, batch in enumerate(data.eval_batches(split, batch_size, pid, pcount)):
                c = r * n_batches + i
                if c < done:
                    chunk = ledger.get(c)
                else:
                    t0 = time.perf_counter()
                    k = jax.random.fold_in(jax.random.fold_in(key, r), i)
                    out = eval_step(params, sharding.shard_batch(batch, mesh), k)
                    real = np.arange(i * batch_size, (i + 1) * batch_size) < n
                    chunk = {name: np.asarray(v, np.float64)[real] for name, v in out.items()}
                    chunk.update(index=indices(c), seconds=np.float64(time.perf_counter() - t0))
                    ledger.put(c, chunk)
                seconds += float(chunk["seconds"])
                for name, v in chunk.items():
                    if name not in ("index", "seconds"):
                        rows.setdefault(name, []).append(v)
                bar.update(len(chunk["index"]))
    result = {"n": n * repeats}
    for name, parts in rows.items():
        v = np.concatenate(parts)
        result[name] = float(v.mean())
        result[f"{name}_se"] = float(v.std() / math.sqrt(max(n * repeats - 1, 1)))
    result["seconds"] = round(seconds, 2)  # computing every batch (the first's compile included)
    return result


# ---- Probability-flow ODE log-likelihood. ----

PROBES = ("rademacher", "gaussian")
TRACES = ("hutchinson", "exact")
STEP_CONTROLS = ("per_example", "batch")
# Several Hutchinson probes per draw before an importance-weighted bound (K > 1) is offered:
# exp of a noisy log-density is biased upwards, and averaging probes shrinks the noise.
MIN_PROBES_IW = 4


def _probe(key: jax.Array, shape, kind: str) -> jax.Array:
    if kind == "rademacher":
        return draws.rademacher(key, shape).astype(jnp.result_type(float))
    if kind == "gaussian":
        return draws.normal(key, shape)
    raise ValueError(f"eval.pf_ode_probe must be one of {list(PROBES)}, got {kind!r}")


def _drift_and_trace(f, y, v, trace: str):
    """(f(y), tr ∂f/∂y per example) for a batch y (B, …) whose examples f maps independently:
    exact (one JVP per dimension) or Hutchinson's mean over M probes of vᵀ(∂f/∂y)v, v (B, M, …).
    One linearisation of f serves every JVP."""
    n = y.shape[0]
    dy, jvp = jax.linearize(f, y)
    if trace == "exact":
        d = y[0].size
        basis = jnp.eye(d).reshape((d, *y.shape[1:]))
        jvps = jax.vmap(lambda e: jvp(jnp.broadcast_to(e, y.shape)))(basis)
        return dy, jnp.trace(jvps.reshape(d, n, d), axis1=0, axis2=2)
    jv = jax.vmap(jvp, in_axes=1, out_axes=1)(v)  # (B, M, …)
    return dy, jnp.mean(jnp.sum((v * jv).reshape(n, v.shape[1], -1), axis=2), axis=1)


def check_ode_options(trace, probe, solver, step_control, probes=1):
    """One-line errors for the PF-ODE's named choices (the `eval.pf_ode_*` fields)."""
    if trace not in TRACES:
        raise ValueError(f"eval.pf_ode_trace must be one of {list(TRACES)}, got {trace!r}")
    if probe not in PROBES:
        raise ValueError(f"eval.pf_ode_probe must be one of {list(PROBES)}, got {probe!r}")
    if solver not in SOLVERS:
        raise ValueError(f"eval.pf_ode_solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    if step_control not in STEP_CONTROLS:
        raise ValueError(
            f"eval.pf_ode_step_control must be one of {list(STEP_CONTROLS)}, got {step_control!r}"
        )
    if int(probes) < 1:
        raise ValueError(f"eval.pf_ode_probes must be >= 1, got {probes}")


def pf_ode_log_prob(
    key,
    eps_hat_fn,
    gamma_fn,
    z_0,
    *,
    trace: str = "hutchinson",
    probe: str = "rademacher",
    probes: int = 1,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    offset=0,
    max_steps: int = 4096,
    step_control: str = "per_example",
    keys=None,
):
    """log p₀(z₀) under the probability-flow ODE (Song et al. 2021, eq. 39; Chen et al. 2018).

    The augmented state [z, Δ] follows dz/dγ = f(z, γ), dΔ/dγ = tr ∂f/∂z from γ₀ to γ₁, and
    log p₀(z₀) = log N(z₁; 0, I) + Δ(γ₁); with a γ per dimension the same in t from 0 to 1
    (`vdm.samplers.ode.pf_ode_drift_t`). The trace is exact (D Jacobian-vector products, for
    small D) or Hutchinson's vᵀ(∂f/∂z)v averaged over `probes` probes per example, fixed along
    the path (unbiased for log p₀, since the path does not depend on them).
    `step_control`: "per_example" solves each example with its own steps (a vmapped solve:
    an example's result does not depend on the rest of the batch, and the slowest example
    sets the batch's cost); "batch" solves the batch as one ODE with one step size and the
    error norm over all of it (the way score_sde computes likelihoods: fewer steps, each
    example's error controlled in aggregate). The probes come from one key per example
    (`keys`, or the example's global index `offset + i` under `key`).
    Returns (log p₀ per example, {"steps": solver steps per example, "nfe": the batch's
    largest number of drift evaluations}).
    """
    check_ode_options(trace, probe, solver, step_control, probes)
    keys = example_keys(key, z_0.shape[0], offset) if keys is None else keys
    v = jax.vmap(lambda k: _probe(k, (int(probes), *z_0.shape[1:]), probe))(keys)
    if is_vector(gamma_fn):  # a γ per dimension: the ODE runs in t from 0 to 1
        g0, g1 = 0.0, 1.0

        def drift(y, t):
            return pf_ode_drift_t(eps_hat_fn, gamma_fn, y, t)

    else:
        g0, g1 = gamma_fn(jnp.zeros(())), gamma_fn(jnp.ones(()))

        def drift(y, g):
            return diffusion.pf_ode_drift(eps_hat_fn, y, jnp.broadcast_to(g, y.shape[:1]))

    def log_prior(z_1):
        flat = z_1.reshape(z_1.shape[0], -1)
        return -0.5 * jnp.sum(flat**2, axis=1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)

    controller, dt0 = adaptive_step_control(rtol, atol, g0, g1)

    def solve_augmented(z, v):  # z (B, …), v (B, M, …); returns (log p₀ (B,), steps)
        def field(g, state):
            return _drift_and_trace(lambda y: drift(y, g), state[0], v, trace)

        (z_1, delta), n_steps = solve(
            field,
            (z, jnp.zeros(z.shape[:1])),
            g0,
            g1,
            solver=solver,
            controller=controller,
            dt0=dt0,
            max_steps=max_steps,
        )
        return log_prior(z_1) + delta, n_steps

    if step_control == "batch":
        logp, n_steps = solve_augmented(z_0, v)
        steps = jnp.broadcast_to(n_steps, z_0.shape[:1])
    else:
        logp, steps = jax.vmap(lambda z, vv: solve_augmented(z[None], vv[None]))(z_0, v)
        logp = logp[:, 0]
    return logp, {"steps": steps, "nfe": jnp.max(steps) * EVALS_PER_STEP[solver]}


def iw_bound(log_w: jax.Array, k: int) -> jax.Array:
    """−log (1/k) Σ_j w_j in nats per example, averaged over the K/k disjoint groups of k of
    the K draws of log w = log p(z₀) − log q(z₀ | x) (shape (K, B), K a multiple of k).

    An upper bound on −log P(x) in expectation, non-increasing in k (Burda et al. 2016); the
    log k is part of the bound (the i-DODE code leaves it out). K draws thus give the bounds
    of every k dividing K at once, each a mean over K/k independent groups.
    """
    n_draws = log_w.shape[0]
    if k < 1 or n_draws % k:
        raise ValueError(f"importance samples k = {k} must divide the {n_draws} draws")
    groups = log_w.reshape(n_draws // k, k, *log_w.shape[1:])
    return jnp.mean(-(jax.nn.logsumexp(groups, axis=1) - math.log(k)), axis=0)


def draw_keys(key, n: int, offset, draws: int) -> tuple[jax.Array, jax.Array]:
    """(dequantization keys, probe keys), each (draws, n): draw k of example i from the key of
    the example's global index offset + i (`example_keys`), folded with k."""
    k_deq, k_probe = jax.vmap(jax.random.split)(example_keys(key, n, offset)).swapaxes(0, 1)
    grid = jax.vmap(lambda j, ks: jax.vmap(lambda k: jax.random.fold_in(k, j))(ks), (0, None))
    return grid(jnp.arange(draws), k_deq), grid(jnp.arange(draws), k_probe)


def pf_ode_log_weights(
    key,
    eps_hat_fn,
    gamma_fn,
    x_int,
    encoding: elbo.Encoding,
    *,
    dequantization: str = "uniform",
    draws: int = 1,
    offset=0,
    **ode_options,
):
    """`draws` dequantized draws z₀⁽ᵏ⁾ ~ q(· | x) per example and their PF-ODE densities.

    Returns ({"log_p": log p(z₀) (draws, B), "log_q": log q(z₀ | x) (draws, B),
    "expected_log_q": E_q log q (B,)}, info with solver steps (draws, B)). Draw k of example i
    uses the key of (offset + i, k), so results do not depend on the batching.
    """
    draws = int(draws)
    if draws < 1:
        raise ValueError(f"eval.importance_samples must be >= 1, got {draws}")
    n = x_int.shape[0]
    gamma_0 = gamma_fn(jnp.zeros(()))  # one per dimension for a vector γ: q(z₀ | x) elementwise
    k_deq, k_probe = draw_keys(key, n, offset, draws)
    deq = jax.vmap(
        lambda ks: jax.vmap(
            lambda k, x: dequantization_lib.draw(dequantization, k, x[None], encoding, gamma_0)
        )(ks, x_int)
    )(k_deq)
    z_0 = deq.z_0.reshape(draws * n, *x_int.shape[1:])
    log_p, info = pf_ode_log_prob(
        None, eps_hat_fn, gamma_fn, z_0, keys=k_probe.reshape(draws * n), **ode_options
    )
    out = {
        "log_p": log_p.reshape(draws, n),
        "log_q": deq.log_q.reshape(draws, n),
        "expected_log_q": deq.expected_log_q[0].reshape(n),
    }
    return out, {"steps": info["steps"].reshape(draws, n), "nfe": info["nfe"]}


def pf_ode_bound(weights: dict, k: int, expected_log_q: bool = False) -> jax.Array:
    """−log P(x) bound in nats per example from `pf_ode_log_weights`' output: k = 1 the
    dequantized bound E[−log p(z₀) + log q(z₀ | x)] averaged over the draws, k > 1 the
    importance-weighted bound `iw_bound`. At k = 1 each draw's log q is paired with its own
    log p (the default: the two move together, so their difference varies less) or, if
    `expected_log_q`, E_q log q in closed form (the same expectation; one draw's estimate
    then varies 1.25x more on the digits model, 1.7x on MNIST: docs/benchmarks.md)."""
    if k == 1 and expected_log_q:
        return jnp.mean(-weights["log_p"], axis=0) + weights["expected_log_q"]
    return iw_bound(weights["log_p"] - weights["log_q"], k)


def pf_ode_bpd_terms(
    key,
    model: VDM,
    params,
    x_int,
    *,
    offset=0,
    dequantization: str = "uniform",
    importance_samples: int = 1,
    **ode_options,
):
    """Per-example PF-ODE bpd upper bound for integer data, and the solver info:
    −log P(x) / (D ln 2) with P(x) bounded by the named dequantization and K importance
    samples (`vdm.eval.dequantization`)."""
    d = math.prod(x_int.shape[1:])
    weights, info = pf_ode_log_weights(
        key,
        model.eps_hat_fn(params),
        model.gamma_fn(params),
        x_int,
        model.encoding,
        dequantization=dequantization,
        draws=importance_samples,
        offset=offset,
        **ode_options,
    )
    nats = pf_ode_bound(weights, int(importance_samples))
    return nats / (d * math.log(2.0)), info


MATMUL_PRECISIONS = ("default", "high", "highest")


def make_pf_ode_step(
    model: VDM, key: jax.Array, mesh=None, matmul_precision: str = "highest", **options
):
    """Jitted (params, x_int, offset) → (per-example PF-ODE bpd, solver info), built once.

    `options`: those of `pf_ode_bpd_terms` (dequantization, importance_samples) and of
    `pf_ode_log_prob`. With a `mesh` the examples are split over its devices (each solve is
    one example's, so they are independent); the results are gathered on every process.
    """

    def step(params, x_int, offset):
        if mesh is not None:
            x_int = jax.lax.with_sharding_constraint(x_int, sharding.data_sharded(mesh))
        with jax.default_matmul_precision(matmul_precision):
            return pf_ode_bpd_terms(key, model, params, x_int, offset=offset, **options)

    rep = sharding.replicated(mesh) if mesh is not None else None
    return jax.jit(step, out_shardings=rep)


def pf_ode_bpd(
    model: VDM,
    params,
    split: data.Split,
    batch_size: int,
    key: jax.Array,
    n_examples: int = 0,
    step_fn=None,
    n_devices: int = 1,
    matmul_precision: str = "highest",
    ledger: Ledger | None = None,
    progress: bool = False,
    **options,
) -> dict:
    """PF-ODE bpd over the first `n_examples` of a split (0 = all): mean ± standard error,
    NFE per image (mean, max; summed over the K draws), wall time and the record of how the
    number was made (`pf_ode_record`).

    Every call of `step_fn` (from `make_pf_ode_step` with the same options; built here if not
    given) sees a batch of the same size, `batch_size` rounded up to a multiple of
    `n_devices`, so it compiles once; the last batch is padded by repeating its last example,
    and the padding is dropped. Example i's draws come from its index (`draw_keys`), so a
    `ledger` (vdm/eval/ledger.py) that keeps each batch's results lets a rerun continue where
    a stopped one was, to the same number.
    """
    n = len(split) if not n_examples else min(n_examples, len(split))
    batch = -(-min(batch_size, n) // n_devices) * n_devices
    fn = step_fn or make_pf_ode_step(model, key, matmul_precision=matmul_precision, **options)
    solver = options.get("solver", "tsit5")
    ledger = ledger or Ledger(None, "", {})
    starts = range(0, n, batch)

    def indices(c):
        return np.arange(starts[c], min(starts[c] + batch, n)) if c < len(starts) else None

    done = ledger.done(indices)
    bpds, nfes, seconds = [], [], 0.0
    with _bar(n, 0, "PF-ODE", progress) as bar:
        for c, start in enumerate(starts):
            real = indices(c)
            if c < done:
                chunk = ledger.get(c)
            else:
                t0 = time.perf_counter()
                idx = np.concatenate([real, np.full(batch - len(real), real[-1])])
                x = jnp.asarray(split.get(idx)["image"])
                bpd, info = fn(params, x, jnp.asarray(start))
                steps = np.asarray(info["steps"]).reshape(-1, batch)[:, : len(real)]
                chunk = {
                    "index": real,
                    "bpd": np.asarray(bpd, np.float64)[: len(real)],
                    "nfe": steps.sum(axis=0) * EVALS_PER_STEP[solver],
                    "seconds": np.float64(time.perf_counter() - t0),
                }
                ledger.put(c, chunk)
            bpds.append(chunk["bpd"])
            nfes.append(chunk["nfe"])
            seconds += float(chunk["seconds"])
            bar.update(len(real))
    bpds, nfes = np.concatenate(bpds), np.concatenate(nfes)
    bad = np.flatnonzero(~np.isfinite(bpds))
    if bad.size:  # never a silent −inf or NaN mean in an eval JSON
        raise FloatingPointError(
            f"PF-ODE bpd is not finite for {bad.size} of {len(bpds)} test examples (first "
            f"indices {bad[:8].tolist()}): {describe(pf_ode_record(options, matmul_precision))}"
        )
    return {
        "pf_ode_bpd": float(bpds.mean()),
        "pf_ode_bpd_se": float(bpds.std(ddof=1) / math.sqrt(len(bpds))) if len(bpds) > 1 else 0.0,
        "pf_ode_n": int(len(bpds)),
        "pf_ode_nfe_mean": float(nfes.mean()),
        "pf_ode_nfe_max": int(nfes.max()),
        # computing every batch, those an earlier stopped run did included; the first
        # batch's compile included
        "pf_ode_seconds": round(seconds, 2),
        "pf_ode_record": pf_ode_record(options, matmul_precision),
    }
