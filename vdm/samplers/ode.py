"""The probability-flow ODE, solved with diffrax (jitted, no host round trip per step).

dz/dγ = ½ σ (ε̂ − σ z) (see `diffusion.pf_ode_drift`). Integrating from γ₁ down to γ₀ samples;
from γ₀ up to γ₁ encodes data into the latent. Adaptive steps (rtol, atol) or a fixed grid.
With a γ per dimension there is no common γ to integrate in: the ODE runs in t,
dz/dt = γ′(t) ⊙ ½ σ (ε̂ − σ z) (`pf_ode_drift_t`).
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp

from vdm.core.diffusion import pf_ode_drift
from vdm.samplers.common import example_keys, gamma_grid, initial_noise, per_example

SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "heun": diffrax.Heun}


def adaptive_step_control(rtol: float, atol: float, gamma_start, gamma_end):
    """The one adaptive step control of the PF-ODE, for sampling and for the likelihood:
    a PI controller (diffrax's suggested pcoeff 0.3, icoeff 0.4) and a first step of 1/8 of
    the γ range. On the digits model at rtol = atol = 1e-5 the slowest of 64 images took 11–12
    steps with it instead of 13–14 with 1/64 and the I controller, the same bpd to 2e-5
    (experiments/benchmarks/bench_pf_ode.py). Returns (stepsize_controller, dt0)."""
    controller = diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.4)
    return controller, (gamma_end - gamma_start) / 8


# Network evaluations per step (first-same-as-last solvers reuse one).
EVALS_PER_STEP = {"tsit5": 6, "dopri5": 6, "heun": 2}


def solve(field, y0, t0, t1, *, solver: str, controller, dt0, max_steps: int):
    """One diffrax solve of dy/dt = field(t, y) from t0 to t1 (y a pytree): (y(t1), steps).
    The one place the PF-ODE's samplers and its likelihood call diffrax."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: field(t, y)),
        SOLVERS[solver](),
        t0=t0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        stepsize_controller=controller,
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    return jax.tree.map(lambda y: y[-1], sol.ys), sol.stats["num_steps"]


def _solve_each(drift, z, t0, t1, ts, *, solver, steps, rtol, atol, max_steps):
    """Each example of z (B, …) as its own ODE dy/dt = drift(t, y) from t0 to t1 (vmap), so
    adaptive step sizes, and hence results, do not depend on what else is in the batch: on
    the grid `ts` (steps > 0) or adaptive (`adaptive_step_control`). Returns (z(t1), steps
    per example)."""
    if steps:
        controller, dt0 = diffrax.StepTo(ts=ts), None
    else:
        controller, dt0 = adaptive_step_control(rtol, atol, t0, t1)
    options = dict(
        solver=solver, controller=controller, dt0=dt0, max_steps=max(max_steps, steps + 1)
    )
    return jax.vmap(lambda y0: solve(drift, y0, t0, t1, **options))(z)


def solve_pf_ode(
    eps_hat_fn,
    z,
    gamma_start,
    gamma_end,
    *,
    forward: bool,
    solver="tsit5",
    steps=0,
    gamma_fn=None,
    grid="uniform_t",
    rtol=1e-5,
    atol=1e-5,
    max_steps=4096,
):
    """Integrate the PF-ODE from γ_start to γ_end (`forward`: γ increasing, data → latent).

    steps > 0: a fixed grid (with `gamma_fn`, `grid`); steps = 0: adaptive
    (`adaptive_step_control`, shared with the likelihood). Each example is solved as its own
    ODE (`_solve_each`). Returns (z_end, steps per example).
    """
    if solver not in SOLVERS:
        raise ValueError(f"sample.solver must be one of {sorted(SOLVERS)}, got {solver!r}")

    def drift(g, y):
        return pf_ode_drift(eps_hat_fn, y[None], per_example(g, 1))[0]

    ts = None
    if steps:
        ts = gamma_grid(gamma_fn, steps, grid)  # decreasing: γ₁ → γ₀
        ts = ts[::-1] if forward else ts
    return _solve_each(
        drift,
        z,
        gamma_start,
        gamma_end,
        ts,
        solver=solver,
        steps=steps,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
    )


def pf_ode_drift_t(eps_hat_fn, gamma_fn, z: jax.Array, t: jax.Array) -> jax.Array:
    """dz/dt = γ′(t) ⊙ ½ σ (ε̂ − σ z) for a γ per dimension (one example or a batch z with a
    shared t): each dimension moves in its own γ_i(t), so the ODE runs in t, not in γ."""
    gamma, dgamma = jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))
    return dgamma * pf_ode_drift(eps_hat_fn, z, per_example(gamma, z.shape[0]))


def is_vector(gamma_fn) -> bool:
    """Whether `gamma_fn` has a γ per data dimension (its value at one t has axes)."""
    return bool(jax.eval_shape(gamma_fn, jnp.zeros(())).shape)


def solve_pf_ode_t(eps_hat_fn, gamma_fn, z, *, forward: bool, solver, steps, rtol, atol, max_steps):
    """The PF-ODE in t between 0 and 1 (`pf_ode_drift_t`), each example its own ODE, on a
    uniform t grid (steps > 0) or adaptive (`adaptive_step_control`)."""
    t0, t1 = (0.0, 1.0) if forward else (1.0, 0.0)

    def drift(t, y):
        return pf_ode_drift_t(eps_hat_fn, gamma_fn, y[None], t)[0]

    ts = jnp.linspace(t0, t1, steps + 1) if steps else None
    return _solve_each(
        drift, z, t0, t1, ts, solver=solver, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps
    )


def _solve_between_endpoints(eps_hat_fn, gamma_fn, z, forward: bool, solver, **options):
    """The PF-ODE between the schedule's endpoints, γ₁ → γ₀ (sampling) or γ₀ → γ₁ (encoding);
    with a γ per dimension, in t from 1 to 0 or 0 to 1 (`solve_pf_ode_t`)."""
    if is_vector(gamma_fn):
        if options.get("grid", "uniform_t") != "uniform_t":
            raise ValueError(
                "sample.grid='uniform_logsnr' has no meaning for a γ per dimension: the "
                "PF-ODE runs in t; use 'uniform_t'"
            )
        if solver not in SOLVERS:
            raise ValueError(f"sample.solver must be one of {sorted(SOLVERS)}, got {solver!r}")
        z_end, n_steps = solve_pf_ode_t(
            eps_hat_fn,
            gamma_fn,
            z,
            forward=forward,
            solver=solver,
            steps=options.get("steps", 0),
            rtol=options.get("rtol", 1e-5),
            atol=options.get("atol", 1e-5),
            max_steps=options.get("max_steps", 4096),
        )
        return z_end, {"nfe": jnp.max(n_steps) * EVALS_PER_STEP[solver], "steps": n_steps}
    g0, g1 = gamma_fn(jnp.zeros(())), gamma_fn(jnp.ones(()))
    start, end = (g0, g1) if forward else (g1, g0)
    z_end, n_steps = solve_pf_ode(
        eps_hat_fn, z, start, end, forward=forward, solver=solver, gamma_fn=gamma_fn, **options
    )
    return z_end, {"nfe": jnp.max(n_steps) * EVALS_PER_STEP[solver], "steps": n_steps}


def probability_flow(
    key,
    eps_hat_fn,
    gamma_fn,
    shape,
    *,
    steps=0,
    solver="tsit5",
    grid="uniform_t",
    rtol=1e-5,
    atol=1e-5,
    z_init=None,
    offset=0,
):
    """Sample by solving the probability-flow ODE from z₁ ~ N(0, I) at γ₁ to γ₀."""
    z = initial_noise(example_keys(key, shape[0], offset), shape[1:]) if z_init is None else z_init
    return _solve_between_endpoints(
        eps_hat_fn, gamma_fn, z, False, solver, steps=steps, grid=grid, rtol=rtol, atol=atol
    )


def to_latent(
    eps_hat_fn, gamma_fn, z_0, *, steps=0, solver="tsit5", grid="uniform_t", rtol=1e-5, atol=1e-5
):
    """Run the probability-flow ODE forward, z₀ (at γ₀) → z₁ (at γ₁): a deterministic latent."""
    return _solve_between_endpoints(
        eps_hat_fn, gamma_fn, z_0, True, solver, steps=steps, grid=grid, rtol=rtol, atol=atol
    )
