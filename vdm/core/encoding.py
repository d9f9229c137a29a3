"""Integer data in model space: the `Encoding` f = (x − shift) / scale and VDM's discrete
decoder p(x | z₀) over its encoded values (VDM eq. 8, App. A).

The bound (`vdm.core.elbo`), the samplers' final decode, dequantization and the entropy coder
all follow from these few numbers; `elbo` re-exports every public name here.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from vdm.core import diffusion

ENCODINGS = ("bin_centres", "standardize")


@dataclasses.dataclass(frozen=True)
class Encoding:
    """The affine map f = (x − shift) / scale from integers in [0, vocab_size) to model space.

    `shift` and `scale` are one float (every channel) or one per channel of the last axis, kept
    as tuples so the encoding is hashable and a compile-time constant. The bin width in model
    space is 1 / scale: the decoder, dequantization and the bpd all follow from these numbers.
    """

    vocab_size: int
    shift: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def bin_centres(cls, vocab_size: int) -> Encoding:
        """f = (2x + 1) / V − 1 ∈ (−1, 1): the VDM paper's encoding (App. A)."""
        return cls(int(vocab_size), ((vocab_size - 1) / 2.0,), (vocab_size / 2.0,))

    @classmethod
    def standardize(cls, vocab_size: int, mean, std) -> Encoding:
        """f = (x − mean) / std per channel, the official 2-D colab's `data_encode`."""
        mean, std = (tuple(float(v) for v in jnp.ravel(jnp.asarray(a))) for a in (mean, std))
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"standardize needs matching mean/std with std > 0, got {mean}, {std}")
        return cls(int(vocab_size), mean, std)

    @property
    def bin_width(self) -> jax.Array:
        """Δ = 1 / scale per channel: the distance between neighbouring values in model space."""
        return 1.0 / jnp.asarray(self.scale)

    def encode(self, x_int: jax.Array) -> jax.Array:
        x = jnp.asarray(x_int, jnp.result_type(float))
        return (x - jnp.asarray(self.shift)) / jnp.asarray(self.scale)

    def centres(self) -> jax.Array:
        """Every vocab value encoded, shape (vocab_size, channels) (channels = 1 if shared)."""
        return self.encode(jnp.arange(self.vocab_size, dtype=jnp.float32)[:, None])

    def to_integers(self, f: jax.Array) -> jax.Array:
        """Model-space values → the integer of the nearest value in [0, vocab_size).

        The one quantizer of the project (samples, generated data). A numpy input is computed
        in numpy at its own precision (float64 for generated 2-D data), a jax one in jax.
        """
        xp = np if isinstance(f, np.ndarray) else jnp
        x = xp.round(f * xp.asarray(self.scale) + xp.asarray(self.shift))
        return xp.clip(x, 0, self.vocab_size - 1).astype(xp.int32)


def make_encoding(name: str, vocab_size: int, mean=None, std=None) -> Encoding:
    """The encoding named by `data.encoding`; 'standardize' needs the training data's
    per-channel mean and std (`vdm.data.channel_stats`)."""
    if name not in ENCODINGS:
        raise ValueError(f"data.encoding must be one of {list(ENCODINGS)}, got {name!r}")
    if name == "bin_centres":
        return Encoding.bin_centres(vocab_size)
    return Encoding.standardize(vocab_size, mean, std)


def check_encoding(encoding: Encoding, where: str = "encoding") -> Encoding:
    """`encoding` if it is an `Encoding`, else one line saying how to make one."""
    if not isinstance(encoding, Encoding):
        raise TypeError(
            f"{where} must be a vdm.core.encoding.Encoding "
            f"(e.g. Encoding.bin_centres(vocab_size)), got {type(encoding).__name__} {encoding!r}"
        )
    return encoding


def encode(x_int: jax.Array, encoding: Encoding) -> jax.Array:
    """Integers in [0, vocab_size) → model space, e.g. the bin centres (2x + 1) / V − 1."""
    return check_encoding(encoding).encode(x_int)


def decoder_logit(d: jax.Array, gamma_0: jax.Array) -> jax.Array:
    """The decoder's logit of a value whose encoding is d away from u = z₀/α₀: −½ e^{−γ₀} d².

    z₀/α₀ = f + exp(γ₀/2) ε₀ (VDM eq. 1), so each value's logit is the Gaussian log-density of
    width exp(γ₀/2) at its distance, up to a constant shared by the vocab (VDM eq. 8).
    """
    return -0.5 * jnp.exp(-gamma_0) * jnp.square(d)


def decoder_logprobs(z_0: jax.Array, gamma_0: jax.Array, encoding: Encoding) -> jax.Array:
    """log p(x | z₀) for every value of the vocab, shape z₀.shape + (vocab_size,)  (VDM eq. 8).

    p(x_i | z_0,i) ∝ q(z_0,i | x_i) normalised over the vocab's encoded values (VDM App. A).
    """
    enc = check_encoding(encoding)
    gamma_0 = diffusion.bcast(gamma_0, z_0)
    alpha_0, _ = diffusion.alpha_sigma(gamma_0)
    centres = enc.centres().T  # (channels, vocab): broadcasts over z₀'s last axis
    logits = decoder_logit((z_0 / alpha_0)[..., None] - centres, gamma_0[..., None])
    return jax.nn.log_softmax(logits, axis=-1)


def _decoder_moments(u: jax.Array, gamma_0: jax.Array, enc: Encoding):
    """(log Z, E[d], E[d²]) of the decoder's logits l_k = −½ e^{−γ₀} d_k², d_k = u − c_k.

    One pass over the vocab, its max known in closed form (the centre nearest u), so the
    (…, vocab) logits are never stored; E is under the decoder's p(k | z₀) = e^{l_k} / Z.
    """
    d = u[..., None] - enc.centres().T
    top = decoder_logit(u - enc.encode(enc.to_integers(u)), gamma_0)  # the largest logit
    e = jnp.exp(decoder_logit(d, gamma_0[..., None]) - top[..., None])
    z = jnp.sum(e, axis=-1)
    log_z = jnp.log(z) + top
    return log_z, jnp.sum(e * d, axis=-1) / z, jnp.sum(e * jnp.square(d), axis=-1) / z


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def decoder_log_normalizer(u: jax.Array, gamma_0: jax.Array, enc: Encoding) -> jax.Array:
    """log Σ_k exp(−½ e^{−γ₀} (u − c_k)²) over the vocab's encoded values c_k (VDM eq. 8).

    u = z₀/α₀ and γ₀ of the same shape. The derivative is exact and needs only the first two
    moments of u − c under the decoder: ∂/∂u = −e^{−γ₀} E[d], ∂/∂γ₀ = ½ e^{−γ₀} E[d²], so
    neither direction stores a (…, vocab) array (the log-softmax over the vocab would).
    """
    return _decoder_moments(u, gamma_0, enc)[0]


@decoder_log_normalizer.defjvp
def _decoder_log_normalizer_jvp(enc, primals, tangents):
    (u, gamma_0), (du, dgamma) = primals, tangents
    log_z, m1, m2 = _decoder_moments(u, gamma_0, enc)
    prec = jnp.exp(-gamma_0)
    return log_z, prec * (0.5 * m2 * dgamma - m1 * du)
