"""PF-ODE likelihood speed: the project's jitted diffrax solve against scipy on the host.

    python experiments/benchmarks/bench_pf_ode.py --config=configs/digits.py --workdir=runs/digits \
        --n=64 --rounds=3 --out=results/bench_pf_ode.json

Both sides integrate the same augmented ODE [z, Δ log p] of the same network in γ from γ₀ to
γ₁, with the same dequantized images and the same Rademacher probe per image, at the same
rtol = atol, and report the same bpd. The reference is the way score_sde computes
likelihoods: `scipy.integrate.solve_ivp` (RK45, Dormand–Prince 5(4)) over the whole batch as
one flat state, calling one jitted drift-and-trace function per evaluation (a host round trip
each). The project's path is one jitted diffrax solve per batch (`vdm.eval.likelihood`): vmapped,
each image with its own step sizes (`eval.pf_ode_step_control=per_example`, the default),
with Tsit5 (the default solver) and Dopri5 (RK45's method); and Dopri5 with the batch as one
ODE under one step size (`step_control=batch`, the reference's own error control).
Timed after a warm-up call (compile excluded, reported apart), rounds alternated; the ratio
of images/s is reported with the bpd agreement and the NFE.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from experiments.common import write_results
from vdm.core import diffusion  # noqa: E402
from vdm.eval import likelihood  # noqa: E402
from vdm.run.config import load_file  # noqa: E402
from vdm.run.session import Run  # noqa: E402


def scipy_reference(model, params, x_int, key, rtol, atol):
    """(bpd per image, NFE): solve_ivp RK45 over the batch, one jitted call per evaluation."""
    gamma_fn = model.gamma_fn(params)
    eps_hat = model.eps_hat_fn(params)
    n, d = x_int.shape[0], math.prod(x_int.shape[1:])
    # The same dequantization and probe as likelihood.pf_ode_bpd_terms (offset 0, one draw).
    k_deq, k_probe = likelihood.draw_keys(key, n, 0, 1)
    y = jax.vmap(lambda k, x: likelihood.dequantize(k, x[None], model.encoding)[0])(k_deq[0], x_int)
    v = jax.vmap(lambda k: likelihood._probe(k, (1, *x_int.shape[1:]), "rademacher")[0])(k_probe[0])
    g0, g1 = float(gamma_fn(jnp.zeros(()))), float(gamma_fn(jnp.ones(())))
    alpha_0 = math.sqrt(1.0 / (1.0 + math.exp(g0)))

    @jax.jit
    def drift_and_trace(z, g):
        f = lambda zz: diffusion.pf_ode_drift(eps_hat, zz, jnp.full((n,), g))  # noqa: E731
        dz, jv = jax.jvp(f, (z,), (v,))
        return dz, jnp.sum(v * jv, axis=tuple(range(1, z.ndim)))

    shape = x_int.shape
    nfe = [0]

    def fun(g, state):
        nfe[0] += 1
        z = jnp.asarray(state[: n * d].reshape(shape), jnp.float32)
        dz, tr = drift_and_trace(z, jnp.float32(g))
        return np.concatenate([np.asarray(dz, np.float64).ravel(), np.asarray(tr, np.float64)])

    state0 = np.concatenate([np.asarray(alpha_0 * y, np.float64).ravel(), np.zeros(n)])
    sol = solve_ivp(fun, (g0, g1), state0, method="RK45", rtol=rtol, atol=atol)
    end = sol.y[:, -1]
    z1, delta = end[: n * d].reshape(n, d), end[n * d :]
    logp0 = -0.5 * np.sum(z1**2, axis=1) - 0.5 * d * math.log(2 * math.pi) + delta
    log_p_y = logp0 + d * math.log(alpha_0)
    log_cell = float(likelihood.log_bin_volume(x_int.shape[1:], model.encoding))
    return -(log_p_y + log_cell) / (d * math.log(2.0)), nfe[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/digits.py")
    p.add_argument("--workdir", default="runs/digits")
    p.add_argument("--n", type=int, default=64, help="test images (one batch)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tol", type=float, default=1e-5, help="rtol = atol")
    p.add_argument("--out", default="results/bench_pf_ode.json")
    a = p.parse_args(argv)

    run = Run(load_file(a.config), a.workdir)
    params = run.eval_params(run.restore())
    x_int = jnp.asarray(run.test_split.get(np.arange(a.n))["image"])
    key = jax.random.key(11)
    variants = {
        "project_tsit5": ("tsit5", "per_example"),
        "project_dopri5": ("dopri5", "per_example"),
        "project_dopri5_batch": ("dopri5", "batch"),
    }
    steps = {
        name: likelihood.make_pf_ode_step(
            run.model, key, None, solver=solver, rtol=a.tol, atol=a.tol, step_control=control
        )
        for name, (solver, control) in variants.items()
    }
    sides = {
        **{name: (lambda f=f: f(params, x_int, jnp.asarray(0))) for name, f in steps.items()},
        "scipy_rk45": lambda: scipy_reference(run.model, params, x_int, key, a.tol, a.tol),
    }
    compile_s, times, results = {}, {k: [] for k in sides}, {}
    for name, fn in sides.items():  # warm-up: compile (and the reference's jit) excluded
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out[0])
        compile_s[name] = time.perf_counter() - t0
    for r in range(a.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            t0 = time.perf_counter()
            out = sides[name]()
            jax.block_until_ready(out[0])
            times[name].append(time.perf_counter() - t0)
            results[name] = out
    ref = "scipy_rk45"
    bpd_ref = np.asarray(results[ref][0])
    rows = []
    for name in sides:
        bpd = np.asarray(results[name][0], np.float64)
        nfe = results[name][1]
        nfe = int(nfe) if name == ref else int(nfe["nfe"])
        best = min(times[name])
        row = {
            "side": name,
            "images_per_s": a.n / best,
            "speedup_vs_scipy": min(times[ref]) / best,
            "seconds_per_batch": times[name],
            "first_call_s": compile_s[name],
            "bpd": float(bpd.mean()),
            "bpd_se": float(bpd.std(ddof=1) / math.sqrt(len(bpd))),
            "max_abs_bpd_diff_vs_scipy": float(np.max(np.abs(bpd - bpd_ref))),
            "nfe": nfe,
        }
        rows.append(row)
        print(
            f"{name:20s} {row['images_per_s']:8.2f} img/s  ×{row['speedup_vs_scipy']:.2f} vs "
            f"scipy  bpd {row['bpd']:.4f} ± {row['bpd_se']:.4f} (max |Δ| vs scipy "
            f"{row['max_abs_bpd_diff_vs_scipy']:.2e})  NFE {nfe}  first call "
            f"{row['first_call_s']:.1f} s"
        )
    write_results(a.out, __file__, [{"n": a.n, "tol": a.tol, "rounds": a.rounds}, *rows])


if __name__ == "__main__":
    main()
