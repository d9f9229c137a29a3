"""A Gaussian mixture under the VP process: the exact denoiser, for checking samplers exactly.

x ~ Σ_k π_k N(μ_k, s_k² I). Then q(z_t) = Σ_k π_k N(α μ_k, (α² s_k² + σ²) I) and the optimal
ε̂(z_t) = E[ε | z_t] = Σ_k r_k(z_t) σ (z_t − α μ_k) / (α² s_k² + σ²), r_k the responsibilities.
With one γ per dimension (MuLAN) the same holds elementwise: each component's q(z_t) is
N(α ⊙ μ_k, diag(α_i² s_k² + σ_i²)).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vdm.core import diffusion


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    means: np.ndarray  # (K, D)
    stds: np.ndarray  # (K,)
    weights: np.ndarray  # (K,), sums to 1

    @classmethod
    def ring(cls, k: int = 4, radius: float = 0.6, std: float = 0.08, dim: int = 2):
        angle = 2 * np.pi * np.arange(k) / k
        means = np.zeros((k, dim))
        means[:, 0], means[:, 1] = radius * np.cos(angle), radius * np.sin(angle)
        weights = np.arange(1, k + 1, dtype=np.float64)
        return cls(means, np.full(k, std), weights / weights.sum())

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        k1, k2 = jax.random.split(key)
        comp = jax.random.choice(k1, len(self.weights), (n,), p=jnp.asarray(self.weights))
        noise = jax.random.normal(k2, (n, self.means.shape[1]))
        return jnp.asarray(self.means)[comp] + jnp.asarray(self.stds)[comp, None] * noise

    def _component_logpdf(self, z, alpha, var):
        """log π_k N(z; α ⊙ μ_k, diag var_k) for every example and component: (N, K).
        alpha: (N, 1, D or 1) or a scalar; var: (N or 1, K, D or 1)."""
        var = jnp.broadcast_to(var, var.shape[:2] + z.shape[-1:])
        sq = jnp.sum((z[:, None, :] - alpha * jnp.asarray(self.means)[None]) ** 2 / var, -1)
        return -0.5 * sq - 0.5 * jnp.sum(jnp.log(2 * jnp.pi * var), -1) + jnp.log(self.weights)

    def _alpha_sigma_var(self, z, gamma):
        """α, σ of shape (N, 1, D or 1) and the components' variances (N, K, D or 1), for γ a
        scalar, one per example (N,) or one per example and dimension (N, D)."""
        gamma = jnp.asarray(gamma)
        if gamma.ndim == 2:
            gamma = jnp.broadcast_to(gamma, z.shape)
        else:
            gamma = jnp.broadcast_to(gamma, z.shape[:1])[:, None]
        alpha, sigma = diffusion.alpha_sigma(gamma[:, None, :])
        return alpha, sigma, alpha**2 * jnp.asarray(self.stds)[None, :, None] ** 2 + sigma**2

    def log_prob_t(self, z: jax.Array, gamma: jax.Array) -> jax.Array:
        """log q(z_t) under the VP process at log-SNR −γ (γ scalar, per example, or per
        example and dimension)."""
        alpha, _, var = self._alpha_sigma_var(z, gamma)
        return jax.nn.logsumexp(self._component_logpdf(z, alpha, var), axis=-1)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """log p(x) of the mixture itself."""
        var = jnp.asarray(self.stds)[None, :, None] ** 2
        return jax.nn.logsumexp(self._component_logpdf(x, 1.0, var), axis=-1)

    def eps_hat(self, z: jax.Array, gamma: jax.Array) -> jax.Array:
        """The exact E[ε | z_t] = Σ_k r_k σ ⊙ (z − α ⊙ μ_k) / var_k."""
        alpha, sigma, var = self._alpha_sigma_var(z, gamma)  # (N, 1, ·), (N, 1, ·), (N, K, ·)
        resp = jax.nn.softmax(self._component_logpdf(z, alpha, var), axis=-1)
        diff = z[:, None, :] - alpha * jnp.asarray(self.means)[None]  # (N, K, D)
        return jnp.sum(resp[..., None] * sigma * diff / var, axis=1)

    def mean(self) -> np.ndarray:
        return self.weights @ self.means

    def cov(self) -> np.ndarray:
        mu = self.mean()
        d = self.means.shape[1]
        return sum(
            w * ((s**2) * np.eye(d) + np.outer(m - mu, m - mu))
            for w, m, s in zip(self.weights, self.means, self.stds, strict=True)
        )
