"""What a healthy training step is, checked on the host before anything is saved.

Every term of the bound is non-negative per example when γ is increasing: −log p(x | z₀) of a
normalised decoder, a KL divergence, and ½ γ′(t) ‖ε − ε̂‖² with γ′ > 0 (or ½ T expm1(γ_t − γ_s)
‖·‖² with γ_t > γ_s). So a batch's bpd is ≥ 0 exactly, up to float rounding, whatever the
network: a negative value is not noise but a schedule that has stopped being increasing,
that is, a diverged run. A step is healthy when its loss, gradient norm and parameters are
finite, γ₀ < γ₁, and its bpd is above `BPD_FLOOR`.
"""

from __future__ import annotations

import numpy as np

BPD_FLOOR = -1e-3  # float32 rounding of a sum of non-negative terms stays far above this


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


def check(metrics_per_call: list[dict], first_step: int, steps_per_call: int, ckpt_info: str):
    """Raise DivergedError naming the first unhealthy step and the last healthy checkpoint.

    `metrics_per_call[i]` holds the metrics of steps first_step + i·k … (stacked k deep).
    """
    for i, m in enumerate(metrics_per_call):
        n = int(np.size(np.asarray(m.get("bpd", m.get("objective")))))
        for j in range(n):
            step_m = {k: np.ravel(np.asarray(v))[j] for k, v in m.items()}
            bad = problems(step_m)
            if bad:
                step = first_step + i * steps_per_call + j + 1
                raise DivergedError(
                    f"training diverged at step {step} ({'; '.join(bad)}); stopped without "
                    f"saving. {ckpt_info} Lower optimizer.learning_rate or set "
                    "optimizer.grad_clip."
                )
