"""One eval + sample cycle of a run, as the train loop does it every `eval_every` steps:
jitted functions rebuilt on every cycle (the code before this benchmark's change) against
built once per run and split over the mesh (`vdm.run.session.Run`), on 1 and 2 devices.

    python experiments/benchmarks/bench_eval_cycle.py [--config digits] [--cycles 3] [--devices 1,2]
        [--out results/bench_eval_cycle.json]

A cycle is the test-split ELBO (`eval.batch_size`), `sample.n_samples` samples with the
configured sampler, and the PF-ODE bpd of `--pf_ode_examples` test images. Each device count
runs in its own process (`--xla_force_host_platform_device_count` on CPU). Reported: the first
cycle (compiles) and the mean of the later ones, and the ratio rebuilt / cached measured in the
same process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from experiments import common as bench_io
from experiments.common import ROOT


def run_devices(config: str, cycles: int, pf_ode_examples: int) -> dict:
    import jax

    from vdm.eval import likelihood
    from vdm.run import generate, session
    from vdm.run.config import load_file

    c = load_file(config)
    c.eval.pf_ode_examples = c.eval.pf_ode_batch_size = pf_ode_examples
    run = session.Run(c, "/tmp/vdm_bench_eval_cycle")
    params = run.fresh_state().params
    e, s = c.eval, c.sample
    ode = dict(
        trace=e.pf_ode_trace, probe=e.pf_ode_probe, solver=e.pf_ode_solver,
        rtol=e.pf_ode_rtol, atol=e.pf_ode_atol,
    )  # fmt: skip

    def rebuilt():  # every function jitted afresh, unsharded: what each cycle used to do
        key = jax.random.fold_in(run.key, 2)
        step = likelihood.make_eval_step(run.model, run.n_dims, run.mesh)
        likelihood.elbo_bpd(step, params, run.test_split, e.batch_size, key, run.mesh, e.repeats)
        batch = generate.sampler_batch(s, s.n_samples)
        fn = generate.make_sampler(run.model, s, run.x_shape, batch)
        generate.generate(
            run.model, params, s, run.key, run.x_shape, s.n_samples, sampler=fn, batch=batch
        )
        likelihood.pf_ode_bpd(
            run.model, params, run.test_split, e.pf_ode_batch_size, run.key, e.pf_ode_examples,
            **ode,
        )  # fmt: skip

    def cached():
        run.evaluate(params)
        run.sample(params)
        run.evaluate_pf_ode(params)

    out = {"devices": jax.device_count()}
    for name, fn in (("rebuilt", rebuilt), ("cached", cached)):
        times = []
        for _ in range(cycles):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = {"first_s": times[0], "later_s": sum(times[1:]) / max(len(times) - 1, 1)}
    out["later_rebuilt_over_cached"] = out["rebuilt"]["later_s"] / out["cached"]["later_s"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="digits")
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--devices", default="1,2")
    p.add_argument("--pf_ode_examples", type=int, default=16)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_eval_cycle.json"))
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_devices(args.config, args.cycles, args.pf_ode_examples)))
        return
    results = []
    for n in (int(d) for d in args.devices.split(",")):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        cmd = [sys.executable, __file__, "--one", "--config", args.config]
        cmd += ["--cycles", str(args.cycles), "--pf_ode_examples", str(args.pf_ode_examples)]
        r = bench_io.run_json(cmd, f"{n} device(s)", env)
        results.append(r)
        print(
            f"{r['devices']} device(s): rebuilt first {r['rebuilt']['first_s']:.1f} s, later "
            f"{r['rebuilt']['later_s']:.1f} s; cached first {r['cached']['first_s']:.1f} s, later "
            f"{r['cached']['later_s']:.1f} s → a later cycle takes "
            f"{1 / r['later_rebuilt_over_cached']:.2f}× the time it used to",
            flush=True,
        )
    bench_io.write_results(args.out, __file__, results)


if __name__ == "__main__":
    main()
