"""What a healthy training step is, checked on the host before anything is saved.

Every term of the bound is non-negative per example when γ is increasing: −log p(x | z₀) of a
normalised decoder, a KL divergence, and ½ γ′(t) ‖ε − ε̂‖² with γ′ > 0 (or ½ T expm1(γ_t − γ_s)
‖·‖² with γ_t > γ_s). So a batch's bpd is ≥ 0 exactly, up to float rounding, whatever the
network: a negative value is not noise but a schedule that has stopped being increasing,
that is, a diverged run. A step is healthy when its loss, gradient norm and parameters are
finite, γ₀ < γ₁, and its bpd is above `BPD_FLOOR`.

A healthy step can still be a terrible one (lr = 30: a finite train bpd of 29,158 after 5.5),
so a log interval whose mean train loss is more than `training.spike_factor` times the running
median of the intervals before it (`SPIKE_WINDOW` of them, at least `SPIKE_MIN_HISTORY`, read
back from `metrics.jsonl` on resume) is a loss spike, treated like divergence: nothing from it
is saved.
"""

from __future__ import annotations

import numpy as np

BPD_FLOOR = -1e-3  # float32 rounding of a sum of non-negative terms stays far above this
SPIKE_WINDOW = 20
SPIKE_MIN_HISTORY = 3


class DivergedError(FloatingPointError):
    """Training reached an unhealthy state; nothing from it was saved."""


def problems(metrics: dict) -> list[str]:
    """What is wrong with one step's metrics (host arrays or floats); empty if healthy."""
    # A weighted objective (Kingma & Gao) is a sum of non-negative terms as well.
    bpd = np.ravel(np.asarray(metrics.get("bpd", metrics.get("objective")), np.float64))
    out = []
    if not np.all(np.isfinite(bpd)):
        out.append("non-finite loss")
    elif np.any(bpd < BPD_FLOOR):
        out.append(f"bpd {float(bpd.min()):.4g} < 0, impossible for a valid bound")
    if "params_finite" in metrics and not np.all(np.asarray(metrics["params_finite"]) == 1.0):
        out.append("non-finite parameters")
    if "grad_norm" in metrics and not np.all(np.isfinite(np.asarray(metrics["grad_norm"]))):
        out.append("non-finite gradient norm")
    if "gamma_0" in metrics and "gamma_1" in metrics:
        g0 = np.ravel(np.asarray(metrics["gamma_0"], np.float64))
        g1 = np.ravel(np.asarray(metrics["gamma_1"], np.float64))
        if not np.all(g0 < g1):
            out.append(f"γ₀ {float(g0[-1]):.3g} ≥ γ₁ {float(g1[-1]):.3g}")
    return out


def loss_key(metrics: dict) -> str:
    """The loss a step is judged by: the ELBO bpd, or a weighted objective's value."""
    return "bpd" if "bpd" in metrics else "objective"


def spike(interval_mean: float, history: list[float], factor: float) -> str | None:
    """A loss spike: the interval's mean loss over `factor` × the running median of the
    intervals before it; None if not (or with too little history, or `factor` 0)."""
    recent = history[-SPIKE_WINDOW:]
    if factor <= 0 or len(recent) < SPIKE_MIN_HISTORY:
        return None
    median = float(np.median(recent))
    if median > 0 and interval_mean > factor * median:
        return (
            f"loss spike: mean train loss {interval_mean:.4g} since the last log, "
            f"{interval_mean / median:.0f}× the running median {median:.4g}"
        )
    return None


def check(
    metrics_per_call: list[dict],
    first_step: int,
    steps_per_call: int,
    ckpt_info: str,
    history: list[float] | None = None,
    spike_factor: float = 0.0,
):
    """Raise DivergedError naming the first unhealthy step and the last healthy checkpoint.

    `metrics_per_call[i]` holds the metrics of steps first_step + i·k … (stacked k deep).
    With `history` (earlier intervals' mean losses) a loss spike counts as unhealthy too.
    Returns the interval's mean loss (NaN for no steps).
    """
    if not metrics_per_call:
        return float("nan")
    for i, m in enumerate(metrics_per_call):
        n = int(np.size(np.asarray(m.get("bpd", m.get("objective")))))
        for j in range(n):
            step_m = {k: np.ravel(np.asarray(v))[j] for k, v in m.items()}
            bad = problems(step_m)
            if bad:
                step = first_step + i * steps_per_call + j + 1
                raise DivergedError(_diverged(step, bad, ckpt_info))
    key = loss_key(metrics_per_call[0])
    values = np.concatenate([np.ravel(np.asarray(m[key], np.float64)) for m in metrics_per_call])
    mean = float(np.mean(values))
    bad = spike(mean, history, spike_factor) if history is not None else None
    if bad:
        raise DivergedError(_diverged(first_step + int(np.argmax(values)) + 1, [bad], ckpt_info))
    return mean


def _diverged(step: int, problems_: list[str], ckpt_info: str) -> str:
    return (
        f"training diverged at step {step} ({'; '.join(problems_)}); stopped without saving. "
        f"{ckpt_info} Lower optimizer.learning_rate or set optimizer.grad_clip."
    )
