"""Bits-back ANS coding of integer images along a VDM's T-step chain (Townsend et al. 2019).

Encoding one chunk of images x (the stack is constriction's `AnsCoder`):

  pop z₀ ~ q(z₀ | x);  push x under p(x | z₀)
  for i = 1 … T:  pop z_i ~ q(z_i | z_{i−1});  push z_{i−1} under p(z_{i−1} | z_i)
  push z_T under N(0, I)

Decoding runs the same operations backwards, each pop undone by a push of the same symbols
under the same model, so decode(encode(x)) = x exactly and the stack returns to its initial
words. The net codelength (bits pushed − bits popped) has the T-step negative ELBO as its
expectation (vdm/compress/chain.py). The first pops need bits on the stack: the message starts
from pseudo-random "clean" words that the decoder regenerates; those that the coder never
touches are not stored, so the clean bits actually consumed are the overhead, reported apart
and amortised over the chunks of one message (each later chunk pops what earlier ones pushed).

Before each pop from q the top of the stack is mixed by a keyed bijection (no bits spent),
so the popped latents are draws from q even where the last push fitted its model badly.
The clean words and the mix are vdm/compress/words.py's: a counter-mode SplitMix64, a fixed
function of (seed, counter), so no library's random stream can change a file's meaning;
format 1 files used numpy Generators (`generator="numpy"`, kept to decode them).

A decode that goes wrong (another model's or platform's ε̂, damaged words) raises
`CoderError` as early as the coder can see it.

Latents are integers k on their grid (z = k δ_i); a Gaussian model codes the offset of k from
its rounded mean in [−R_i, R_i]. Under p, an offset beyond the range (a poor prediction) is
coded as the edge symbol followed by its excess in three 16-bit uniform words, so any image
can be coded; q's pops never leave the range, so its pushes never need the escape.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import constriction
import numpy as np
from scipy.special import ndtr

from vdm.compress.chain import Chain
from vdm.compress.words import MIX_BITS_PER_SYMBOL, clean_words, mix, n_clean_words

_MODEL = constriction.stream.model
_UNIFORM16 = _MODEL.Uniform(2**16)
_CATEGORICAL = _MODEL.Categorical(perfect=False)
PRECISION = 24  # constriction's default: probabilities are integers out of 2^24
MEAN_GRID = 2.0**-10  # p's mean (in grid units) is rounded to this before building the model

# eps_hat(z, i) → ε̂ of the network at latent i for z of shape (n, *image_shape), float64.
EpsHat = Callable[[np.ndarray, int], np.ndarray]


class CoderError(ValueError):
    """A chunk the models cannot code (a non-finite ε̂), or a stack that does not decode as
    it was coded: another ε̂ (model or platform) or damaged words."""


@dataclasses.dataclass
class Ledger:
    """Ideal costs in bits per image, pushes minus pops: `bits`, −log₂ of the coded
    probabilities; `gauss`, the same latents under the unquantised Gaussians (density × bin,
    no probability floor, no escapes) — what the chain's Gaussian models alone would cost."""

    bits: np.ndarray
    gauss: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> Ledger:
        return cls(np.zeros(n), np.zeros(n))

    def _per_image(self, v: np.ndarray) -> np.ndarray:
        return v.reshape(len(self.bits), -1).sum(axis=1)

    def push(self, per_symbol: np.ndarray, gauss: np.ndarray | None = None) -> None:
        self.bits += self._per_image(per_symbol)
        self.gauss += self._per_image(per_symbol if gauss is None else gauss)

    def pop(self, per_symbol: np.ndarray, gauss: np.ndarray | None = None) -> None:
        self.bits -= self._per_image(per_symbol)
        self.gauss -= self._per_image(per_symbol if gauss is None else gauss)


# ---- Gaussian latents on a grid ----


def _centre(mean: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """(c, frac): the mean in grid units rounded to MEAN_GRID, split as c + frac, c integer."""
    m = np.round(np.ravel(mean) / delta / MEAN_GRID) * MEAN_GRID
    if not np.all(np.abs(m) < 2.0**62):
        raise CoderError("a model's mean is not finite or beyond 2^62 grid bins")
    c = np.rint(m)
    return c.astype(np.int64), m - c


def _stds(n: int, std: float, delta: float) -> np.ndarray:
    return np.full(n, std / delta, np.float64)


def quantized_gaussian_bits(u: np.ndarray, frac: np.ndarray, std: float, R: int) -> np.ndarray:
    """−log₂ P(u) of the coded model: constriction's leaky quantisation of N(frac, std²) on
    the symbols [−R, R], each bin's cumulative rounded down out of 2^24 − (2R + 1), plus one
    count per symbol, and the tails beyond the range added to the edge symbols."""
    free = 2.0**PRECISION - (2 * R + 1)
    slack = u + R
    left = np.floor(free * ndtr((u - 0.5 - frac) / std)) + slack
    right = np.floor(free * ndtr((u + 0.5 - frac) / std)) + slack + 1
    left = np.where(u == -R, 0.0, left)
    right = np.where(u == R, 2.0**PRECISION, right)
    return PRECISION - np.log2(right - left)


def gaussian_bits(u: np.ndarray, frac: np.ndarray, std: float) -> np.ndarray:
    """−log₂ of N(u; frac, std²) × one bin (grid units): the unquantised model's cost."""
    return (0.5 * np.square((u - frac) / std) + np.log(std * math.sqrt(2 * math.pi))) / math.log(2)


def pop_gaussian(coder, mean, std, delta, R, ledger=None, escapes=False) -> np.ndarray:
    """Pop grid integers k ~ N(mean, std²) binned at δ; offsets beyond ±R follow an escape."""
    c, frac = _centre(mean, delta)
    u = coder.decode(_MODEL.QuantizedGaussian(-R, R), frac, _stds(len(c), std, delta))
    u = u.astype(np.int64)
    if ledger is not None:
        s = std / delta
        ledger.pop(quantized_gaussian_bits(u, frac, s, R), gaussian_bits(u, frac, s))
    if escapes:
        edge = np.flatnonzero(np.abs(u) == R)
        if len(edge):
            words = coder.decode(_UNIFORM16, 3 * len(edge)).astype(np.int64).reshape(-1, 3)
            excess = (words[:, 0] << 32) | (words[:, 1] << 16) | words[:, 2]
            u[edge] = np.sign(u[edge]) * (R + excess)
            if ledger is not None:
                ledger.pop(_escape_bits(len(u), edge), np.zeros(len(u)))
    return c + u


def push_gaussian(coder, k, mean, std, delta, R, ledger=None, escapes=False) -> None:
    """Push grid integers k under N(mean, std²) binned at δ (the inverse of `pop_gaussian`)."""
    k = np.ravel(k)
    c, frac = _centre(mean, delta)
    u = k - c
    gauss = gaussian_bits(u, frac, std / delta) if ledger is not None else None
    far = np.abs(u) >= R if escapes else np.abs(u) > R
    if np.any(far):
        if not escapes:  # q's pops stay in range: only a decode that went wrong gets here
            raise CoderError(f"{int(far.sum())} latents lie outside q's range")
        excess = np.abs(u[far]) - R
        if np.any(excess >= 2**48):
            raise CoderError("a latent lies > 2^48 grid bins from its prediction: cannot code")
        words = np.stack([excess >> 32, (excess >> 16) & 0xFFFF, excess & 0xFFFF], axis=1)
        coder.encode_reverse(words.ravel().astype(np.int32), _UNIFORM16)
        u = np.where(far, np.sign(u) * R, u)
        if ledger is not None:
            ledger.push(_escape_bits(len(u), np.flatnonzero(far)), np.zeros(len(u)))
    coder.encode_reverse(
        u.astype(np.int32), _MODEL.QuantizedGaussian(-R, R), frac, _stds(len(c), std, delta)
    )
    if ledger is not None:
        ledger.push(quantized_gaussian_bits(u, frac, std / delta, R), gauss)


def _escape_bits(n: int, where: np.ndarray) -> np.ndarray:
    """48 bits (three uniform 16-bit words) at each escaped position."""
    out = np.zeros(n)
    out[where] = 48.0
    return out


# ---- The discrete decoder p(x | z₀) ----


def decoder_probs(z0: np.ndarray, gamma0: float, shift, scale, vocab_size: int) -> np.ndarray:
    """p(x | z₀) over the vocab for every dimension, shape (z₀.size, V), float64  (VDM eq. 8).

    The numpy twin of `core.encoding.decoder_logprobs`: p(x_i | z₀,i) ∝ N(z₀,i / α₀; f(x), e^γ₀).
    """
    alpha0 = math.sqrt(0.5 * (1.0 + math.tanh(-0.5 * gamma0)))
    values = np.arange(vocab_size, dtype=np.float64)[:, None]
    centres = ((values - np.asarray(shift)) / np.asarray(scale)).T  # (channels, V)
    diff = (z0 / alpha0)[..., None] - centres
    logits = -0.5 * np.square(diff) * math.exp(-gamma0)
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=-1, keepdims=True)).reshape(-1, vocab_size)


# ---- One chunk ----


@dataclasses.dataclass(frozen=True)
class ChunkCoder:
    """Codes chunks of images (n, *shape) along `chain`; `encoding` maps integers to f."""

    chain: Chain
    shift: tuple[float, ...]
    scale: tuple[float, ...]
    vocab_size: int
    eps_hat: EpsHat
    generator: str = "splitmix64"  # of the clean words and the mix: one of words.GENERATORS

    def _f(self, x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float64) - np.asarray(self.shift)) / np.asarray(self.scale)

    def _mix(self, coder, i: int, size: int, inverse: bool = False) -> None:
        """Mix the words the pop of latent i from q will read (undone in decoding)."""
        n_words = math.ceil(size * (self.chain.latent_bits + MIX_BITS_PER_SYMBOL) / 16)
        mix(coder, n_words, (i, size), inverse, self.generator)

    def _probs(self, z0: np.ndarray) -> np.ndarray:
        ch = self.chain
        return decoder_probs(z0, ch.gamma[0], self.shift, self.scale, self.vocab_size)

    def encode(self, coder, x: np.ndarray, ledger: Ledger | None = None, step=None) -> None:
        """Push the images x (n, *shape) onto `coder` (bits-back: pops first)."""
        ch = self.chain
        delta, R, q_std, p_std = ch.delta(), ch.symbol_range(), ch.q_std(), ch.p_std()
        shape = x.shape
        self._mix(coder, 0, x.size)
        k_prev = pop_gaussian(coder, ch.alpha[0] * self._f(x), q_std[0], delta[0], R[0], ledger)
        z_prev = (k_prev * delta[0]).reshape(shape)
        probs = self._probs(z_prev)
        coder.encode_reverse(np.ravel(x).astype(np.int32), _CATEGORICAL, probs)
        if ledger is not None:
            ledger.push(-np.log2(probs[np.arange(x.size), np.ravel(x)]))
        for i in range(1, ch.T + 1):
            self._mix(coder, i, x.size)
            k = pop_gaussian(coder, ch.q_mean(i, z_prev), q_std[i], delta[i], R[i], ledger)
            z = (k * delta[i]).reshape(shape)
            mean = ch.p_mean(i - 1, z, self.eps_hat(z, i))
            push_gaussian(coder, k_prev, mean, p_std[i - 1], delta[i - 1], R[i - 1], ledger, True)
            k_prev, z_prev = k, z
            if step is not None:
                step()
        push_gaussian(coder, k_prev, np.zeros(x.size), 1.0, delta[-1], R[-1], ledger, True)

    def decode(self, coder, shape: tuple[int, ...], step=None) -> np.ndarray:
        """Pop n images of `shape` = (n, *image_shape) off `coder` (the inverse of `encode`)."""
        ch = self.chain
        delta, R, q_std, p_std = ch.delta(), ch.symbol_range(), ch.q_std(), ch.p_std()
        size = math.prod(shape)
        k = pop_gaussian(coder, np.zeros(size), 1.0, delta[-1], R[-1], escapes=True)
        for i in range(ch.T, 0, -1):
            z = (k * delta[i]).reshape(shape)
            mean = ch.p_mean(i - 1, z, self.eps_hat(z, i))
            k_prev = pop_gaussian(coder, mean, p_std[i - 1], delta[i - 1], R[i - 1], escapes=True)
            z_prev = (k_prev * delta[i - 1]).reshape(shape)
            push_gaussian(coder, k, ch.q_mean(i, z_prev), q_std[i], delta[i], R[i])
            self._mix(coder, i, size, inverse=True)
            k = k_prev
            if step is not None:
                step()
        z0 = (k * delta[0]).reshape(shape)
        x = coder.decode(_CATEGORICAL, self._probs(z0)).reshape(shape)
        push_gaussian(coder, k, ch.alpha[0] * self._f(x), q_std[0], delta[0], R[0])
        self._mix(coder, 0, size, inverse=True)
        return x


# ---- A message of many chunks ----


@dataclasses.dataclass(frozen=True)
class Message:
    """A coded message: the stack's words above the untouched clean words, and its counts."""

    words: np.ndarray  # uint32
    n_clean: int  # clean words the stack started from
    clean_kept: int  # how many of them (from the bottom) are untouched and not stored
    ideal_bits: np.ndarray  # per image: −log₂ of the coded probabilities (pushes − pops)
    gaussian_bits: np.ndarray  # per image: the same latents under the unquantised Gaussians
    net_bits: int  # bits pushed − bits popped: the stack's growth over its clean words

    @property
    def clean_bits(self) -> int:
        """Clean bits consumed (popped and never returned): the stored overhead."""
        return 32 * (self.n_clean - self.clean_kept)


def chunks(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def encode_message(cc: ChunkCoder, images: np.ndarray, batch_size: int, step=None) -> Message:
    """Code all images, chunk after chunk, as one stack; the first chunk pops clean words."""
    dims = math.prod(images.shape[1:])
    n_clean = n_clean_words(batch_size, dims, cc.chain.latent_bits)
    clean = clean_words(n_clean, cc.generator)
    coder = constriction.stream.stack.AnsCoder(clean.copy())
    start_bits = coder.num_valid_bits()
    ledger = Ledger.zeros(len(images))
    for sl in chunks(len(images), batch_size):
        part = Ledger.zeros(sl.stop - sl.start)
        cc.encode(coder, images[sl], part, step)
        ledger.bits[sl], ledger.gauss[sl] = part.bits, part.gauss
    net_bits = coder.num_valid_bits() - start_bits
    words = coder.get_compressed()
    kept = _common_prefix(words, clean)
    return Message(words[kept:].copy(), n_clean, kept, ledger.bits, ledger.gauss, net_bits)


def decode_message(
    cc: ChunkCoder,
    words: np.ndarray,
    n_clean: int,
    clean_kept: int,
    shape,
    batch_size,
    step=None,
    on_chunk: Callable[[slice, np.ndarray], None] | None = None,
) -> np.ndarray:
    """The images of an `encode_message` (shape (N, *image_shape)), checking that the stack
    ends on exactly its clean words (any corruption or mismatch of model shows there).
    `on_chunk(slice, images)` sees each chunk as it is decoded (last first): a check there
    stops a decode that went wrong after one chunk."""
    if not 0 <= clean_kept <= n_clean:
        raise CoderError(f"{clean_kept} clean words kept of {n_clean}")
    clean = clean_words(n_clean, cc.generator)
    coder = constriction.stream.stack.AnsCoder(np.concatenate([clean[:clean_kept], words]))
    out = np.empty(shape, np.int64)
    for sl in reversed(chunks(shape[0], batch_size)):
        out[sl] = cc.decode(coder, (sl.stop - sl.start, *shape[1:]), step)
        if on_chunk is not None:
            on_chunk(sl, out[sl])
    if not np.array_equal(coder.get_compressed(), clean):
        raise CoderError("decoding did not end on the clean words: wrong model or damaged data")
    return out


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n
