"""The T-step chain of a VDM as the coder sees it: every conditional of q and p, in float64.

The bits-back coder walks x → z₀ → z_{1/T} → … → z₁ (VDM §3.3, App. B; Townsend et al. 2019):

  q(z₀ | x)        = N(α₀ f, σ₀²)                                    (VDM eq. 1)
  q(z_t | z_s)     = N(α_{t|s} z_s, σ²_{t|s}),  σ²_{t|s} = −σ_t² expm1(γ_s − γ_t)   (eqs. 20–21)
  p(z_s | z_t)     = q(z_s | z_t, x̂):  μ = (α_s/α_t)(z_t − c σ_t ε̂),  σ² = c σ_s²  (eqs. 32–34)
  p(x | z₀)        the exact discrete decoder (eq. 8);   p(z₁) = N(0, I)

with c = −expm1(γ_s − γ_t). The expected net codelength of the chain is the T-step negative
ELBO (eq. 11 with eq. 13). Every number here depends on the schedule only, except p's mean
(the network's ε̂); the coder computes them identically when it encodes and decodes.

Latent i (i = 0 … T, z_i = z_{i/T}) lives on its own grid of spacing δ_i = min(σ_q, σ_p) / 2^b,
where σ_q, σ_p are the standard deviations of the two models it is coded under (popped from q,
pushed under p): each latent is popped once and pushed once on the same grid, so log δ_i
cancels from the net codelength, and a grid fine against both widths makes the bin masses
density × δ_i to O(2^-2b).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Chain:
    """Per-step constants of the T-step chain for the schedule values γ_i = γ(i/T), i = 0 … T."""

    gamma: np.ndarray  # (T + 1,) float64
    latent_bits: int  # b: the grid is 2^b bins per smallest standard deviation
    range_stds: float  # a model's symbols span ± range_stds × the wider of the two widths

    @property
    def T(self) -> int:
        return len(self.gamma) - 1

    @property
    def alpha(self) -> np.ndarray:
        """α_i = sqrt(sigmoid(−γ_i))  (VDM eq. 4)."""
        return np.sqrt(_sigmoid(-self.gamma))

    @property
    def sigma(self) -> np.ndarray:
        """σ_i = sqrt(sigmoid(γ_i))."""
        return np.sqrt(_sigmoid(self.gamma))

    @property
    def c(self) -> np.ndarray:
        """c_i = σ²_{t|s} / σ_t² = −expm1(γ_{i−1} − γ_i) for the step into i (c_0 unused: 1)."""
        return np.concatenate([[1.0], -np.expm1(self.gamma[:-1] - self.gamma[1:])])

    def q_std(self) -> np.ndarray:
        """Width of the model latent i is popped from: σ₀ for q(z₀|x), σ_{t|s} for q(z_t|z_s)."""
        out = self.sigma * np.sqrt(self.c)
        out[0] = self.sigma[0]
        return out

    def p_std(self) -> np.ndarray:
        """Width of the model latent i is pushed under: sqrt(c_{i+1}) σ_i, or 1 for p(z₁)."""
        return np.concatenate([self.sigma[:-1] * np.sqrt(self.c[1:]), [1.0]])

    def delta(self) -> np.ndarray:
        """Grid spacing δ_i = min(σ_q, σ_p) / 2^b of latent i."""
        return np.minimum(self.q_std(), self.p_std()) / 2.0**self.latent_bits

    def symbol_range(self) -> np.ndarray:
        """R_i: both of latent i's models code offsets in [−R_i, R_i] from their rounded mean."""
        wide = np.maximum(self.q_std(), self.p_std())
        return np.ceil(self.range_stds * wide / self.delta()).astype(np.int64)

    def q_mean(self, i: int, z_prev: np.ndarray) -> np.ndarray:
        """Mean of q(z_i | z_{i−1}) = α_{t|s} z_s  (VDM eq. 20), i ≥ 1."""
        return (self.alpha[i] / self.alpha[i - 1]) * z_prev

    def p_mean(self, i: int, z_next: np.ndarray, eps_hat: np.ndarray) -> np.ndarray:
        """Mean of p(z_i | z_{i+1}) = (α_s/α_t)(z_t − c σ_t ε̂), s = i/T, t = (i+1)/T  (eq. 34)."""
        t = i + 1
        return (self.alpha[i] / self.alpha[t]) * (z_next - self.c[t] * self.sigma[t] * eps_hat)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def make_chain(gamma: np.ndarray, latent_bits: int, range_stds: float) -> Chain:
    """A `Chain` from γ(i/T), i = 0 … T; rejects a schedule that is not increasing."""
    gamma = np.asarray(gamma, np.float64)
    if gamma.ndim != 1 or len(gamma) < 2:
        raise ValueError(f"the chain needs γ at T + 1 ≥ 2 points, got shape {gamma.shape}")
    if not np.all(np.diff(gamma) > 0):
        raise ValueError("the chain needs an increasing schedule γ(i/T); this one is not")
    chain = Chain(gamma, int(latent_bits), float(range_stds))
    # ANS gives every symbol in range ≥ 2^-24 of the mass: keep that leak small.
    worst = int(chain.symbol_range().max())
    if 2 * worst + 1 > 2**18:
        raise ValueError(
            f"compress.latent_bits={latent_bits} with compress.range_stds={range_stds} needs "
            f"{2 * worst + 1} symbols for one latent (> 2^18): lower latent_bits or range_stds"
        )
    return chain
