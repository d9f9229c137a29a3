"""google-research/vdm's checkpoints as this project's parameters.

The official `model_vdm.py` and this project's ScoreUNet compute the same function with other
names; `parameter_map` lists, for a model of given sizes, every official parameter, where it
goes and how it is reshaped:

  score_model/dense0            → net/Conditioning_0/dense0: its kernel (n_embd + 1, 4 n_embd)
                                  takes [time embedding, conditioning]; the last row (the
                                  conditioning's) is dropped, exact for conditioning 0 (the
                                  official eval, and every input of the plain model), or kept
                                  with `model.flag_input='concat'` (the aug model's flag)
  score_model/dense1, conv_in, conv_out, GroupNorm_0    → net/… of the same names
  down.block_i / mid.block_1, mid.block_2 / up.block_i  → ResnetBlock_k (in order of use)
    conv1, conv2 → Conv_0, Conv_1; nin_shortcut (Dense, (C_in, C_out)) → skip (a 1×1
    convolution, (1, 1, C_in, C_out)); GroupNorm_0/1, cond_proj as named
  down.attn_i / mid.attn_1 / up.attn_i                  → AttnBlock_k (q, k, v, proj_out)
  gamma/b, gamma/w  (γ = b + |w| t, `learnable_scalar`) → schedule/gamma_0, schedule/w
  gamma/l1, l2, l3  (`learnable_nnet`)                  → schedule/l1, l2, l3 of
                                  `learned_net_unnormalized` (the same network, no eq. 59)

The time input is (γ_t − γ_min)/(γ_max − γ_min) with the config's γ_min, γ_max (−13.3, 5 in
every official config), which the file does not hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from vdm.importers.flax_msgpack import CheckpointImportError, as_array, flatten
from vdm.networks.unet import block_names

SOURCE = "google-research/vdm"
# Official `gamma_type` → this project's `schedule.name` (the same γ(t) for the same values).
SCHEDULES = {
    "learnable_scalar": "learned_scalar",
    "learnable_nnet": "learned_net_unnormalized",
    "fixed": "fixed_linear",
}
FOURIER_FREQS = 2  # Base2FourierFeatures(start=6, stop=8): 2 frequencies, sin and cos each


@dataclasses.dataclass(frozen=True)
class OfficialModel:
    """What a checkpoint's parameter names and shapes say about the official model."""

    n_embd: int
    n_layer: int
    with_attention: bool
    fourier: bool
    channels: int
    gamma_type: str
    n_features: int = 0  # learnable_nnet's hidden width
    cond_inputs: int = 1  # dense0's inputs beyond the time embedding

    def describe(self) -> str:
        extra = (
            f", γ network width {self.n_features}" if self.gamma_type == "learnable_nnet" else ""
        )
        return (
            f"ScoreUNet n_embd {self.n_embd}, n_layer {self.n_layer}, attention "
            f"{'after every block' if self.with_attention else 'in the middle only'}, Fourier "
            f"features {'on' if self.fourier else 'off'}, {self.channels} channels, "
            f"gamma_type {self.gamma_type}{extra}"
        )


def _shape(flat: dict, path: tuple) -> tuple:
    if path not in flat:
        raise CheckpointImportError(f"not a {SOURCE} ScoreUNet: no parameter {'/'.join(path)}")
    return tuple(np.shape(flat[path]))


def describe(params: dict) -> OfficialModel:
    """The official model whose `params` these are, read from names and shapes."""
    if not isinstance(params.get("score_model"), dict):
        found = sorted(map(str, params))[:6]
        raise CheckpointImportError(
            f"not a {SOURCE} VDM: its params have no 'score_model' (found {found})"
        )
    flat = flatten(params)
    conv_in = _shape(flat, ("score_model", "conv_in", "kernel"))
    conv_out = _shape(flat, ("score_model", "conv_out", "kernel"))
    dense0 = _shape(flat, ("score_model", "dense0", "kernel"))
    if len(conv_in) != 4 or len(conv_out) != 4 or len(dense0) != 2:
        raise CheckpointImportError(
            f"not a {SOURCE} ScoreUNet: conv_in {conv_in}, conv_out {conv_out}, dense0 {dense0}"
        )
    n_embd, channels = conv_in[-1], conv_out[-1]
    sm = params["score_model"]
    n_layer = sum(1 for k in sm if str(k).startswith("down.block_"))
    gamma = params.get("gamma", {})
    if not isinstance(gamma, dict):
        raise CheckpointImportError(f"not a {SOURCE} VDM: its gamma is not a map of parameters")
    if {"w", "b"} <= set(gamma):
        gamma_type, n_features = "learnable_scalar", 0
    elif {"l1", "l2", "l3"} <= set(gamma):
        gamma_type = "learnable_nnet"
        n_features = _shape(flat, ("gamma", "l2", "kernel"))[-1]
    elif not gamma:
        gamma_type, n_features = "fixed", 0
    else:
        raise CheckpointImportError(
            f"unknown {SOURCE} noise schedule with parameters {sorted(map(str, gamma))} (known: "
            "learnable_scalar's w, b; learnable_nnet's l1, l2, l3; fixed has none)"
        )
    return OfficialModel(
        n_embd=n_embd,
        n_layer=n_layer,
        with_attention="down.attn_0" in sm or "up.attn_0" in sm,
        fourier=conv_in[2] == channels * (1 + 2 * FOURIER_FREQS),
        channels=channels,
        gamma_type=gamma_type,
        n_features=n_features,
        cond_inputs=dense0[0] - n_embd,
    )


# ---- The official tree of a model, and where each of its parameters goes. ----

Transform = Callable[[np.ndarray], np.ndarray]


def _same(x):
    return x


def _as_scalar(x):
    return x.reshape(())


def _as_1x1(x):
    return x.reshape((1, 1, *x.shape))


def _drop_cond_rows(n_embd: int) -> Transform:
    return lambda x: x[:n_embd]


def parameter_map(m: OfficialModel, keep_flag: bool = False) -> dict[tuple, tuple]:
    """{official path: (official shape, project path, transform)} for every parameter of `m`:
    paths under 'params' (official) and {'schedule', 'net'} (project)."""
    n, c, cond = m.n_embd, m.channels, 4 * m.n_embd
    out: dict[tuple, tuple] = {}

    def add(src, shape, dst, fn=_same):
        out[("score_model", *src) if src[0] != "gamma" else src] = (tuple(shape), dst, fn)

    def dense(src, dst, c_in, c_out, bias=True, kernel_fn=_same):
        add((*src, "kernel"), (c_in, c_out), ("net", *dst, "kernel"), kernel_fn)
        if bias:
            add((*src, "bias"), (c_out,), ("net", *dst, "bias"))

    def conv(src, dst, c_in, c_out):
        add((*src, "kernel"), (3, 3, c_in, c_out), ("net", *dst, "kernel"))
        add((*src, "bias"), (c_out,), ("net", *dst, "bias"))

    def norm(src, dst, ch):
        add((*src, "scale"), (ch,), ("net", *dst, "scale"))
        add((*src, "bias"), (ch,), ("net", *dst, "bias"))

    def resnet(src, dst, c_in, c_out):
        norm((src, "GroupNorm_0"), (dst, "GroupNorm_0"), c_in)
        conv((src, "conv1"), (dst, "Conv_0"), c_in, c_out)
        dense((src, "cond_proj"), (dst, "cond_proj"), cond, c_out, bias=False)
        norm((src, "GroupNorm_1"), (dst, "GroupNorm_1"), c_out)
        conv((src, "conv2"), (dst, "Conv_1"), c_out, c_out)
        if c_in != c_out:
            dense((src, "nin_shortcut"), (dst, "skip"), c_in, c_out, kernel_fn=_as_1x1)

    def attn(src, dst, ch):
        norm((src, "GroupNorm_0"), (dst, "GroupNorm_0"), ch)
        for name in ("q", "k", "v", "proj_out"):
            dense((src, name), (dst, name), ch, ch)

    rows = n + m.cond_inputs
    add(
        ("dense0", "kernel"),
        (rows, cond),
        ("net", "Conditioning_0", "dense0", "kernel"),
        _same if keep_flag else _drop_cond_rows(n),
    )
    add(("dense0", "bias"), (cond,), ("net", "Conditioning_0", "dense0", "bias"))
    dense(("dense1",), ("Conditioning_0", "dense1"), cond, cond)
    conv(("conv_in",), ("conv_in",), c * (1 + 2 * FOURIER_FREQS) if m.fourier else c, n)
    names = block_names(m.n_layer, m.with_attention)
    for i in range(m.n_layer):
        resnet(f"down.block_{i}", names["down_res"][i], n, n)
        if m.with_attention:
            attn(f"down.attn_{i}", names["down_attn"][i], n)
    resnet("mid.block_1", names["mid"][0], n, n)
    attn("mid.attn_1", names["mid"][1], n)
    resnet("mid.block_2", names["mid"][2], n, n)
    for i in range(m.n_layer + 1):
        resnet(f"up.block_{i}", names["up_res"][i], 2 * n, n)
        if m.with_attention:
            attn(f"up.attn_{i}", names["up_attn"][i], n)
    norm(("GroupNorm_0",), ("GroupNorm_0",), n)
    conv(("conv_out",), ("conv_out",), n, c)
    if m.gamma_type == "learnable_scalar":
        add(("gamma", "b"), (1,), ("schedule", "gamma_0"), _as_scalar)
        add(("gamma", "w"), (1,), ("schedule", "w"), _as_scalar)
    elif m.gamma_type == "learnable_nnet":
        f = m.n_features
        for name, shape in (
            ("l1/kernel", (1, 1)),
            ("l1/bias", (1,)),
            ("l2/kernel", (1, f)),
            ("l2/bias", (f,)),
            ("l3/kernel", (f, 1)),
        ):
            add(("gamma", *name.split("/")), shape, ("schedule", *name.split("/")))
    return out


def check_tree(params: dict, pmap: dict, what: str = "params") -> None:
    """Every official parameter `pmap` names is in `params` with its shape, and nothing else:
    else one line naming the first differences."""
    flat = flatten(params)
    missing = [p for p in pmap if p not in flat]
    extra = [p for p in flat if p not in pmap]
    wrong = [
        f"{'/'.join(p)} {tuple(np.shape(flat[p]))} (expected {pmap[p][0]})"
        for p in pmap
        if p in flat and tuple(np.shape(flat[p])) != pmap[p][0]
    ]
    problems = []
    if wrong:
        problems.append("shapes differ: " + ", ".join(wrong[:3]) + (" …" if len(wrong) > 3 else ""))
    if missing:
        problems.append(
            "missing "
            + ", ".join("/".join(p) for p in missing[:3])
            + (" …" if len(missing) > 3 else "")
        )
    if extra:
        problems.append(
            "unexpected "
            + ", ".join("/".join(p) for p in extra[:3])
            + (" …" if len(extra) > 3 else "")
        )
    if problems:
        raise CheckpointImportError(f"{what} do not form one {SOURCE} model: {'; '.join(problems)}")


def convert(params: dict, pmap: dict, release: bool = False) -> dict:
    """The official `params` as this project's {'schedule', 'net'} tree (numpy, float32).
    With `release`, each official array is dropped from `params` once converted, so the two
    trees are never both whole in memory."""
    out: dict = {"schedule": {}, "net": {}}
    for src, (_, dst, fn) in pmap.items():
        node = params
        for k in src[:-1]:
            node = node[k]
        value = fn(as_array(node[src[-1]])).astype(np.float32, copy=False)
        if release:
            del node[src[-1]]
        target = out
        for k in dst[:-1]:
            target = target.setdefault(k, {})
        target[dst[-1]] = value
    return out


def adam_moments(opt_state) -> dict | None:
    """The official optimizer state's Adam record ({'count', 'mu', 'nu'}), wherever optax
    put it in the tuple (`ScaleByAdamState`), or None if there is none."""
    if not isinstance(opt_state, dict):
        return None
    if {"count", "mu", "nu"} <= set(opt_state):
        return opt_state
    for v in opt_state.values():
        found = adam_moments(v)
        if found is not None:
            return found
    return None
