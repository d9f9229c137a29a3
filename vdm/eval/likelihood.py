"""Dataset-level bits per dimension: the ELBO and the probability-flow ODE.

`elbo_bpd` passes over a split with every example exactly once per repeat (the last batch is
padded and masked), each repeat with independent t and ε, and reports the mean and standard
error of the per-example bound, in total and per term. `pf_ode_bpd` integrates the
probability-flow ODE with diffrax for an exact (up to solver error) continuous likelihood of
uniformly dequantized data, which bounds the discrete bpd from above.
"""

from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from vdm import data, sharding
from vdm.core import diffusion, elbo
from vdm.model import VDM
from vdm.samplers.common import example_keys
from vdm.samplers.ode import EVALS_PER_STEP, SOLVERS, adaptive_step_control

TERMS = ("bpd", "recon", "prior", "diffusion")


def make_eval_step(model: VDM, n_dims: int, mesh):
    """Jitted: (params, batch, key) → per-term [Σ mask·bpd, Σ mask·bpd²] over the batch."""

    def step(params, batch, key):
        with jax.default_matmul_precision("highest"):
            terms = model.vlb_terms(params, key, batch, train=False)
        bpd = elbo.bpd_terms(terms, n_dims)
        m = batch["mask"]
        return {k: jnp.stack([jnp.sum(m * bpd[k]), jnp.sum(m * bpd[k] ** 2)]) for k in TERMS}

    rep = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(rep, sharding.data_sharded(mesh), rep), out_shardings=rep)


def elbo_bpd(
    eval_step, params, split: data.Split, batch_size: int, key: jax.Array, mesh, repeats: int = 1
) -> dict[str, float]:
    """ELBO in bpd over `split`: {'bpd', 'bpd_se', 'recon', …, 'n'}; SE over examples×repeats."""
    sums = {k: np.zeros(2) for k in TERMS}
    pid, pcount = jax.process_index(), jax.process_count()
    for r in range(repeats):
        for i, batch in enumerate(data.eval_batches(split, batch_size, pid, pcount)):
            k = jax.random.fold_in(jax.random.fold_in(key, r), i)
            out = eval_step(params, sharding.shard_batch(batch, mesh), k)
            for name in TERMS:
                sums[name] += np.asarray(out[name], np.float64)
    n = len(split) * repeats
    result = {"n": n}
    for name in TERMS:
        mean = sums[name][0] / n
        var = max(sums[name][1] / n - mean**2, 0.0)
        result[name] = float(mean)
        result[f"{name}_se"] = float(math.sqrt(var / max(n - 1, 1)))
    return result


# ---- Probability-flow ODE log-likelihood. ----


def _probe(key: jax.Array, shape, kind: str) -> jax.Array:
    if kind == "rademacher":
        return jax.random.rademacher(key, shape).astype(jnp.result_type(float))
    if kind == "gaussian":
        return jax.random.normal(key, shape)
    raise ValueError(f"eval.pf_ode_probe must be one of ['rademacher', 'gaussian'], got {kind!r}")


STEP_CONTROLS = ("per_example", "batch")


def _drift_and_trace(f, y, v, trace: str):
    """(f(y), tr ∂f/∂y per example) for a batch y (B, …) whose examples f maps independently:
    exact (one JVP per dimension) or Hutchinson's vᵀ(∂f/∂y)v with the probes v (B, …)."""
    n = y.shape[0]
    if trace == "exact":
        d = y[0].size
        basis = jnp.eye(d).reshape((d, *y.shape[1:]))
        jvps = jax.vmap(lambda e: jax.jvp(f, (y,), (jnp.broadcast_to(e, y.shape),))[1])(basis)
        return f(y), jnp.trace(jvps.reshape(d, n, d), axis1=0, axis2=2)
    dy, jv = jax.jvp(f, (y,), (v,))
    return dy, jnp.sum((v * jv).reshape(n, -1), axis=1)


def _solve(field, y0, g0, g1, solver, rtol, atol, max_steps):
    """One diffrax solve of the augmented PF-ODE from γ₀ to γ₁, under the sampler's step
    control (`vdm.samplers.ode.adaptive_step_control`)."""
    controller, dt0 = adaptive_step_control(rtol, atol, g0, g1)
    return diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        SOLVERS[solver](),
        t0=g0,
        t1=g1,
        dt0=dt0,
        y0=y0,
        stepsize_controller=controller,
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )


def pf_ode_log_prob(
    key,
    eps_hat_fn,
    gamma_fn,
    z_0,
    *,
    trace: str = "hutchinson",
    probe: str = "rademacher",
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    offset=0,
    max_steps: int = 4096,
    step_control: str = "per_example",
):
    """log p₀(z₀) under the probability-flow ODE (Song et al. 2021, eq. 39; Chen et al. 2018).

    The augmented state [z, Δ] follows dz/dγ = f(z, γ), dΔ/dγ = tr ∂f/∂z from γ₀ to γ₁, and
    log p₀(z₀) = log N(z₁; 0, I) + Δ(γ₁). The trace is exact (D Jacobian-vector products, for
    small D) or Hutchinson's vᵀ(∂f/∂z)v with one probe v per example, fixed along the path.
    `step_control`: "per_example" solves each example with its own steps (a vmapped solve:
    an example's result does not depend on the rest of the batch, and the slowest example
    sets the batch's cost); "batch" solves the batch as one ODE with one step size and the
    error norm over all of it (the way score_sde computes likelihoods: fewer steps, each
    example's error controlled in aggregate). Returns (log p₀ per example, info).
    """
    if trace not in ("hutchinson", "exact"):
        raise ValueError(f"eval.pf_ode_trace must be one of ['hutchinson', 'exact'], got {trace!r}")
    if solver not in SOLVERS:
        raise ValueError(f"eval.pf_ode_solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    if step_control not in STEP_CONTROLS:
        raise ValueError(
            f"eval.pf_ode_step_control must be one of {list(STEP_CONTROLS)}, got {step_control!r}"
        )
    g0, g1 = gamma_fn(jnp.zeros(())), gamma_fn(jnp.ones(()))
    keys = example_keys(key, z_0.shape[0], offset)
    v = jax.vmap(lambda k: _probe(k, z_0.shape[1:], probe))(keys)

    def drift(y, g):
        return diffusion.pf_ode_drift(eps_hat_fn, y, jnp.broadcast_to(g, y.shape[:1]))

    def log_prior(z_1):
        flat = z_1.reshape(z_1.shape[0], -1)
        return -0.5 * jnp.sum(flat**2, axis=1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)

    def solve(z, v):  # z, v: (B, …); returns (log p₀ (B,), steps)
        def field(g, state, args):
            return _drift_and_trace(lambda y: drift(y, g), state[0], v, trace)

        sol = _solve(field, (z, jnp.zeros(z.shape[:1])), g0, g1, solver, rtol, atol, max_steps)
        return log_prior(sol.ys[0][-1]) + sol.ys[1][-1], sol.stats["num_steps"]

    if step_control == "batch":
        logp, n_steps = solve(z_0, v)
        steps = jnp.broadcast_to(n_steps, z_0.shape[:1])
    else:
        logp, steps = jax.vmap(lambda z, vv: solve(z[None], vv[None]))(z_0, v)
        logp = logp[:, 0]
    per_eval = z_0[0].size if trace == "exact" else 1
    return logp, {"steps": steps, "nfe": jnp.max(steps) * EVALS_PER_STEP[solver] * per_eval}


def dequantize(key: jax.Array, x_int: jax.Array, vocab_size: int | elbo.Encoding) -> jax.Array:
    """Uniform dequantization: y = encoded x + (u − ½) Δ, u ~ U[0, 1), bin width Δ (2/V for the
    bin centres, 1/std per channel when standardised).

    For integer x, P(x) = ∫_bin p(y) dy = ΠΔ E_u[p(y)] ≥ ΠΔ exp E_u[log p(y)] (Jensen), so
    −log₂ P(x) / D ≤ −(E_u[log p(y)] + Σ log Δ) / (D ln 2): the bin-width offset in `pf_ode_bpd`.
    """
    enc = elbo.as_encoding(vocab_size)
    u = jax.random.uniform(key, x_int.shape)
    return enc.encode(x_int) + (u - 0.5) * enc.bin_width


def log_bin_volume(x_shape: tuple[int, ...], vocab_size: int | elbo.Encoding) -> jax.Array:
    """Σ_d log Δ_d over one example's dimensions: the log-volume of one integer cell."""
    enc = elbo.as_encoding(vocab_size)
    return jnp.sum(jnp.broadcast_to(jnp.log(enc.bin_width), x_shape))


def pf_ode_bpd_terms(key, model: VDM, params, x_int, *, offset=0, **ode_options):
    """Per-example PF-ODE bpd upper bound for integer data, and the solver info.

    The ODE starts at z₀ = α₀ y for dequantized y, so log p(y) = log p₀(α₀ y) + D log α₀; the
    discrete bound adds the bin widths: bpd = −(log p(y) + Σ log Δ) / (D ln 2).
    """
    k_u, k_probe = jax.random.split(key)
    d = math.prod(x_int.shape[1:])
    y = dequantize(jax.random.fold_in(k_u, offset), x_int, model.encoding)
    gamma_fn = model.gamma_fn(params)
    alpha_0, _ = diffusion.alpha_sigma(gamma_fn(jnp.zeros(())))
    logp_0, info = pf_ode_log_prob(
        k_probe, model.eps_hat_fn(params), gamma_fn, alpha_0 * y, offset=offset, **ode_options
    )
    log_p_y = logp_0 + d * jnp.log(alpha_0)
    log_cell = log_bin_volume(x_int.shape[1:], model.encoding)
    bpd = -(log_p_y + log_cell) / (d * math.log(2.0))
    return bpd, info


def make_pf_ode_step(model: VDM, key: jax.Array, mesh=None, **ode_options):
    """Jitted (params, x_int, offset) → (per-example PF-ODE bpd, solver info), built once.

    With a `mesh` the examples are split over its devices (each solve is one example's, so
    they are independent); the results are gathered on every process.
    """

    def step(params, x_int, offset):
        if mesh is not None:
            x_int = jax.lax.with_sharding_constraint(x_int, sharding.data_sharded(mesh))
        return pf_ode_bpd_terms(key, model, params, x_int, offset=offset, **ode_options)

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
    **ode_options,
) -> dict:
    """PF-ODE bpd over the first `n_examples` of a split (0 = all): mean ± standard error.

    Every call of `step_fn` (from `make_pf_ode_step`; built here if not given) sees a batch of
    the same size, `batch_size` rounded up to a multiple of `n_devices`, so it compiles once;
    the last batch is padded by repeating its last example, and the padding is dropped.
    """
    n = len(split) if not n_examples else min(n_examples, len(split))
    batch = -(-min(batch_size, n) // n_devices) * n_devices
    fn = step_fn or make_pf_ode_step(model, key, **ode_options)
    bpds, nfes = [], []
    for start in range(0, n, batch):
        real = np.arange(start, min(start + batch, n))
        idx = np.concatenate([real, np.full(batch - len(real), real[-1])])
        bpd, info = fn(params, jnp.asarray(split.get(idx)["image"]), jnp.asarray(start))
        bpds.append(np.asarray(bpd, np.float64)[: len(real)])
        nfes.append(int(info["nfe"]))
    bpds = np.concatenate(bpds)
    return {
        "pf_ode_bpd": float(bpds.mean()),
        "pf_ode_bpd_se": float(bpds.std(ddof=1) / math.sqrt(len(bpds))) if len(bpds) > 1 else 0.0,
        "pf_ode_n": int(len(bpds)),
        "pf_ode_nfe_max": int(max(nfes)),
    }
