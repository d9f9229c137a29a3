"""How an eval number was made: the records every eval JSON carries (`pf_ode_record`, and
the ELBO's from `vdm.run.session.Run.elbo_record`) and the one line printed for each
(`describe`). Plain Python, so `vdm plot` reads them without starting JAX."""

from __future__ import annotations


def pf_ode_record(options: dict, matmul_precision: str = "highest") -> dict:
    """How a PF-ODE number was made, from the options of `make_pf_ode_step`: the estimator,
    dequantization, K, trace (with probe kind and count when Hutchinson's), solver and
    tolerances, step control, matmul precision (defaults filled in as the code uses them)."""
    o = {
        "dequantization": "uniform",
        "importance_samples": 1,
        "trace": "hutchinson",
        "probe": "rademacher",
        "probes": 1,
        "solver": "tsit5",
        "rtol": 1e-5,
        "atol": 1e-5,
        "step_control": "per_example",
        **options,
    }
    k = int(o["importance_samples"])
    record = {
        "estimator": "pf_ode" if k == 1 else "pf_ode_iw",
        "dequantization": o["dequantization"],
        "importance_samples": k,
        "log_q": "sampled, paired with each draw's log p",
        "trace": o["trace"],
        "solver": o["solver"],
        "rtol": float(o["rtol"]),
        "atol": float(o["atol"]),
        "step_control": o["step_control"],
        "matmul_precision": matmul_precision,
    }
    if o["trace"] == "hutchinson":
        record.update(probe=o["probe"], probes=int(o["probes"]))
    return record


def describe(record: dict) -> str:
    """One line from a `pf_ode_record` (or the ELBO's record): what the printed bpd is."""
    if record["estimator"] == "elbo":
        return f"ELBO, {record['time']}, repeats {record['repeats']}"
    trace = record["trace"]
    if trace == "hutchinson":
        trace = f"Hutchinson ×{record['probes']} {record['probe']}"
    line = (
        f"{record['dequantization']} dequantization, K = {record['importance_samples']}, "
        f"{trace} trace, {record['solver']} rtol {record['rtol']:g} atol {record['atol']:g}"
    )
    if record["importance_samples"] > 1 and record["trace"] == "hutchinson":
        line += " (not a strict bound: Hutchinson's noise biases the IW estimate down)"
    return line
