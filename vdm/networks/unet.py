"""The ScoreUNet of VDM App. B: a U-Net without down- or upsampling.

All blocks run at the input resolution, so it works for any image size and channel count;
depth (n_layer residual blocks down, n_layer + 1 up) buys receptive field instead.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from vdm.networks.layers import (
    Conditioning,
    Dropout,
    FourierFeatures,
    GroupNorm,
    gamma_inputs,
)

# What a scanned block keeps for its backward pass when not rematerialised: the outputs of
# its two 3×3 convolutions (named with `checkpoint_name`) and of its matrix products (the
# conditioning projection, attention), nothing else.
SAVE_CONVS = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.save_only_these_names("conv"), jax.checkpoint_policies.dots_saveable
)


def _groups(channels: int) -> int:
    """GroupNorm groups: 32 as in the paper, fewer for narrow (smoke-sized) layers."""
    g = min(32, channels)
    while channels % g:
        g -= 1
    return g


GROUP_NORMS = ("flax", "affine")


def group_norm(channels: int, dtype: Any, form: str = "flax") -> nn.Module:
    """Group normalisation (Wu & He, 2018) of `channels` in `_groups(channels)` groups, as the
    official ScoreUNet: ε = 1e-6, statistics in float32, output in `dtype`.

    `form` 'flax' is `flax.linen.GroupNorm` (the default); 'affine' the same values written as
    one affine map (`layers.GroupNorm`), which the network used from 2026-12-03 to 12-06: it
    made whole train steps slower (docs/benchmarks.md, "The default job against the code of
    2026-11-23") and is kept to decode .vdmz files coded with it. Both are named
    GroupNorm_k with the same parameters, so either restores the other's checkpoints."""
    g = _groups(channels)
    if form == "flax":
        return nn.GroupNorm(num_groups=g, epsilon=1e-6, dtype=dtype)
    if form == "affine":
        return GroupNorm(g, dtype=dtype)
    raise ValueError(f"group_norm form must be one of {GROUP_NORMS}, got {form!r}")


class ResnetBlock(nn.Module):
    """GN → swish → conv → + cond → GN → swish → dropout → conv(zero-init), with a skip.

    Convolutions and dense layers compute in `dtype` (parameters stay float32); GroupNorm
    reduces in float32 whatever the input.
    """

    out_ch: int
    dropout: float
    dtype: Any = jnp.float32
    group_norm: str = "flax"  # `group_norm`'s form

    @nn.compact
    def __call__(self, x, cond, train: bool):
        h = nn.swish(group_norm(x.shape[-1], self.dtype, self.group_norm)(x))
        h = checkpoint_name(nn.Conv(self.out_ch, (3, 3), dtype=self.dtype)(h), "conv")
        # Zero-initialised and without bias, as the official ScoreUNet: every block starts as
        # the identity whatever the conditioning.
        cond_proj = nn.Dense(
            self.out_ch,
            use_bias=False,
            kernel_init=nn.initializers.zeros,
            dtype=self.dtype,
            name="cond_proj",
        )
        h = h + cond_proj(cond)[:, None, None, :]
        h = nn.swish(group_norm(self.out_ch, self.dtype, self.group_norm)(h))
        h = Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
        h = checkpoint_name(h, "conv")
        if x.shape[-1] != self.out_ch:
            # A 1×1 convolution: the faster form under the XLA:CPU flag `import vdm` sets, but
            # with its gradient 24× a matrix product's time under YNNPACK (jaxlib's CPU
            # defaults; docs/benchmarks.md#train-step-against-google-researchvdm).
            x = nn.Conv(self.out_ch, (1, 1), dtype=self.dtype, name="skip")(x)
        return x + h


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q kᵀ / √c) v over the tokens of each example: (batch, tokens, c) each.

    Written as two einsums around a float32 softmax, as the official AttnBlock: on XLA:CPU
    `jax.nn.dot_product_attention` takes 1.4–1.6× as long forward and backward over 1,024
    tokens (`experiments/benchmarks/bench_train.py --official`'s profile).
    """
    scores = jnp.einsum("bqc,bkc->bqk", q / jnp.sqrt(q.shape[-1]).astype(q.dtype), k)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bqk,bkc->bqc", weights, v)


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, residual, zero-initialised output."""

    dtype: Any = jnp.float32
    group_norm: str = "flax"

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = group_norm(c, self.dtype, self.group_norm)(x).reshape(b, hh * ww, c)
        q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(h) for n in ("q", "k", "v"))
        h = attention(q, k, v)
        h = nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="proj_out")(h)
        return x + h.reshape(b, hh, ww, c)


class DownStep(nn.Module):
    """One step of the down stack: a residual block at n_embd, then attention if configured.
    Scanned over its stacked parameters by `ScoreUNet` with `scan_blocks`."""

    n_embd: int
    dropout: float
    with_attention: bool
    train: bool
    dtype: Any = jnp.float32
    group_norm: str = "flax"

    @nn.compact
    def __call__(self, h, cond):
        h = ResnetBlock(self.n_embd, self.dropout, self.dtype, self.group_norm, name="res")(
            h, cond, self.train
        )
        if self.with_attention:
            h = AttnBlock(self.dtype, self.group_norm, name="attn")(h)
        return h, h  # the carry, and the skip the up stack takes


class UpStep(nn.Module):
    """One step of the up stack: a residual block from [h, skip] (2 n_embd channels) to
    n_embd, then attention if configured."""

    n_embd: int
    dropout: float
    with_attention: bool
    train: bool
    dtype: Any = jnp.float32
    group_norm: str = "flax"

    @nn.compact
    def __call__(self, h, skip, cond):
        h = ResnetBlock(self.n_embd, self.dropout, self.dtype, self.group_norm, name="res")(
            jnp.concatenate([h, skip], -1), cond, self.train
        )
        if self.with_attention:
            h = AttnBlock(self.dtype, self.group_norm, name="attn")(h)
        return h, None


def _scan(step: type[nn.Module], length: int, in_axes, remat: bool):
    """`step` as a `flax.linen.scan` over `length` stacked copies of its parameters, with one
    dropout key per copy. Under `remat`, each copy is recomputed in the backward pass; without
    it, each copy keeps its convolutions' and matrix products' outputs (`SAVE_CONVS`) and
    recomputes the norms, activations and dropout between them: the scan's backward pass would
    otherwise keep every intermediate of every copy (at the paper's size 4.7 GiB of
    temporaries against 1.1 GiB; docs/benchmarks.md#compile-time-and-memory-at-the-papers-size)."""
    if remat:
        step = nn.remat(step, prevent_cse=False)  # inside a loop CSE cannot undo the remat
    else:
        step = nn.remat(step, prevent_cse=False, policy=SAVE_CONVS)
    return nn.scan(
        step,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=in_axes,
        length=length,
    )


def block_names(n_layer: int, with_attention: bool) -> dict[str, list[str]]:
    """The parameter names of the unrolled ScoreUNet's blocks, by stack: 'down_res',
    'down_attn', 'up_res', 'up_attn' (in order of use) and 'mid' (kept as named)."""
    res = [f"ResnetBlock_{i}" for i in range(2 * n_layer + 3)]
    n_attn = 2 * n_layer + 2 if with_attention else 1
    attn = [f"AttnBlock_{i}" for i in range(n_attn)]
    down_attn = attn[:n_layer] if with_attention else []
    mid_attn = attn[len(down_attn)]
    return {
        "down_res": res[:n_layer],
        "down_attn": down_attn,
        "mid": [res[n_layer], mid_attn, res[n_layer + 1]],
        "up_res": res[n_layer + 2 :],
        "up_attn": attn[n_layer + 1 :] if with_attention else [],
    }


def stack_blocks(params: dict, n_layer: int, with_attention: bool) -> dict:
    """The unrolled ScoreUNet's parameters → those of `scan_blocks=True`: each stack's
    blocks stacked on a new leading axis under 'down' / 'up' ('res', 'attn'); the rest as is."""
    names = block_names(n_layer, with_attention)
    moved = {n for k in ("down_res", "down_attn", "up_res", "up_attn") for n in names[k]}
    out = {k: v for k, v in params.items() if k not in moved}

    def stacked(keys):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *(params[k] for k in keys))

    for stack in ("down", "up"):
        out[stack] = {"res": stacked(names[f"{stack}_res"])}
        if with_attention:
            out[stack]["attn"] = stacked(names[f"{stack}_attn"])
    return out


def unstack_blocks(params: dict, n_layer: int, with_attention: bool) -> dict:
    """The inverse of `stack_blocks`: `scan_blocks=True` parameters → the unrolled names."""
    names = block_names(n_layer, with_attention)
    out = {k: v for k, v in params.items() if k not in ("down", "up")}
    for stack in ("down", "up"):
        for kind in ("res", "attn") if with_attention else ("res",):
            for i, name in enumerate(names[f"{stack}_{kind}"]):
                out[name] = jax.tree.map(lambda x, i=i: x[i], params[stack][kind])
    return out


class ScoreUNet(nn.Module):
    """VDM's ScoreUNet (App. B). Returns the network output for the configured head.

    Attributes:
      n_embd: channels of every block; the conditioning MLP has 4 n_embd units.
      n_layer: residual blocks on the way down (n_layer + 1 on the way up, with skips).
      with_attention: self-attention after every block (the middle block always has one).
      fourier_top_n, fourier_octaves: Fourier features at 2ⁿ · 2π for the `fourier_octaves`
        exponents n ≤ fourier_top_n (`layers.fourier_frequencies`); fourier_gate fades them
        with the noise level ('coherence') or not ('none', the official model).
      base_measure_skip: add z to the output (ε̂ = z + net, the paper's choice for the ε head;
        the config allows it for the ε head only).
      dtype: what convolutions and matmuls compute in (`model.dtype`; bfloat16 for mixed
        precision). Parameters, the conditioning MLP, the Fourier features and the output are
        float32.
      remat: recompute each residual block in the backward pass instead of storing its
        activations (`model.remat`): less memory, the same gradients, more compute.
      scan_blocks: run the down stack (n_layer blocks) and the up stack (n_layer + 1) each
        as one `flax.linen.scan` over stacked parameters: the compiled program holds one copy
        of each block instead of 2 n_layer + 1, so it compiles in a fraction of the time at
        the paper's depth. Its parameters are `stack_blocks` of the unrolled ones; `vdm.model`
        stores the unrolled form whatever this is, so checkpoints restore under either.
      group_norm: the GroupNorm's form, 'flax' or 'affine' (`group_norm`): the same values
        and parameters up to float32 rounding; not a config field: .vdmz decoding picks
        'affine' for files coded with it, and bench_group_norm.py to compare the two.
      flag_input: how conditioning flags enter (`layers.Conditioning`): 'embed', or 'concat'
        as google-research/vdm's ScoreUNet (what its imported aug model needs).
    """

    n_embd: int
    n_layer: int
    gamma_min: float
    gamma_max: float
    dropout: float = 0.1
    with_attention: bool = False
    fourier: bool = True
    fourier_top_n: float = 7.0
    fourier_octaves: int = 2
    fourier_gate: str = "none"
    base_measure_skip: bool = True
    num_classes: int = 0
    n_cond_flags: int = 0
    dtype: Any = jnp.float32
    remat: bool = False
    scan_blocks: bool = False
    gamma_map_input: bool = False
    group_norm: str = "flax"
    flag_input: str = "embed"

    def to_apply_form(self, params: dict) -> dict:
        """Parameters in the stored (unrolled) form → the form this network applies."""
        if not self.scan_blocks:
            return params
        return stack_blocks(params, self.n_layer, self.with_attention)

    def to_stored_form(self, params: dict) -> dict:
        """Parameters of this network's `init` → the stored (unrolled) form."""
        if not self.scan_blocks:
            return params
        return unstack_blocks(params, self.n_layer, self.with_attention)

    @nn.compact
    def __call__(self, z, gamma_t, label=None, flags=None, train: bool = False):
        if z.ndim != 4:
            raise ValueError(f"ScoreUNet expects images (batch, H, W, C), got shape {z.shape}")
        t_norm, gamma_map = gamma_inputs(
            gamma_t, self.gamma_min, self.gamma_max, z if self.gamma_map_input else None
        )
        cond = Conditioning(self.n_embd, self.num_classes, self.n_cond_flags, self.flag_input)(
            t_norm, label, flags
        )

        h = z
        if self.fourier:
            h = FourierFeatures(self.fourier_top_n, self.fourier_octaves, self.fourier_gate)(
                z, gamma_t
            )
        if gamma_map is not None:  # γ's map (per dimension, or spread) as extra input channels
            h = jnp.concatenate([h, gamma_map.astype(h.dtype)], axis=-1)
        # `train` (argument 3, counting self) switches dropout: static under remat.
        block = nn.remat(ResnetBlock, static_argnums=(3,)) if self.remat else ResnetBlock
        count = {"res": 0, "attn": 0}

        def named(kind: str) -> str:  # the same parameter names with and without remat
            count[kind] += 1
            return f"{'ResnetBlock' if kind == 'res' else 'AttnBlock'}_{count[kind] - 1}"

        def res():
            return block(self.n_embd, self.dropout, self.dtype, self.group_norm, name=named("res"))

        def attn():
            return AttnBlock(self.dtype, self.group_norm, name=named("attn"))

        cond = cond.astype(self.dtype)
        h0 = nn.Conv(self.n_embd, (3, 3), dtype=self.dtype, name="conv_in")(h)
        if self.scan_blocks:
            return self._head(z, self._scanned(h0, cond, train))
        hs = [h0]
        for _ in range(self.n_layer):
            h = res()(hs[-1], cond, train)
            if self.with_attention:
                h = attn()(h)
            hs.append(h)

        h = res()(hs[-1], cond, train)
        h = attn()(h)
        h = res()(h, cond, train)

        for _ in range(self.n_layer + 1):
            h = res()(jnp.concatenate([h, hs.pop()], -1), cond, train)
            if self.with_attention:
                h = attn()(h)
        return self._head(z, h)

    def _scanned(self, h0, cond, train):
        """The blocks with each stack as one scan; the middle blocks take their unrolled
        names (`block_names`), the stacks 'down' and 'up'."""
        names = block_names(self.n_layer, self.with_attention)
        step = dict(n_embd=self.n_embd, dropout=self.dropout, dtype=self.dtype, train=train)
        step.update(group_norm=self.group_norm, with_attention=self.with_attention)
        down = _scan(DownStep, self.n_layer, nn.broadcast, self.remat)(**step, name="down")
        h, skips = down(h0, cond)
        # The up stack takes the skips last-in first-out: the last down block's output first,
        # conv_in's last.
        skips = jnp.concatenate([h0[None], skips])[::-1]
        block = nn.remat(ResnetBlock, static_argnums=(3,)) if self.remat else ResnetBlock
        h = block(self.n_embd, self.dropout, self.dtype, self.group_norm, name=names["mid"][0])(
            h, cond, train
        )
        h = AttnBlock(self.dtype, self.group_norm, name=names["mid"][1])(h)
        h = block(self.n_embd, self.dropout, self.dtype, self.group_norm, name=names["mid"][2])(
            h, cond, train
        )
        up = _scan(UpStep, self.n_layer + 1, (0, nn.broadcast), self.remat)(**step, name="up")
        h, _ = up(h, skips, cond)
        return h

    def _head(self, z, h):
        """GN → swish → conv(zero-init) to z's channels, in float32, plus z if skipping."""
        h = nn.swish(group_norm(h.shape[-1], self.dtype, self.group_norm)(h))
        h = nn.Conv(
            z.shape[-1],
            (3, 3),
            kernel_init=nn.initializers.zeros,
            dtype=self.dtype,
            name="conv_out",
        )(h)
        h = h.astype(jnp.float32)  # the loss, the head conversions and the skip in float32
        return z + h if self.base_measure_skip else h
