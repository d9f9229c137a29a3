"""Denoising networks: the paper's ScoreUNet, an MLP for low-dimensional data, shared layers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.networks.layers import FLAG_INPUTS, FOURIER_GATES, fourier_top_n
from vdm.networks.mlp import MLP, ConcatMLP
from vdm.networks.unet import ScoreUNet

NETWORKS = {"unet": ScoreUNet, "mlp": MLP, "concat_mlp": ConcatMLP}
# Those that take `model.gamma_map_input` (the colab's concat MLP always sees γ as an input).
GAMMA_MAP_NETWORKS = ("unet", "mlp")
__all__ = [
    "DTYPES",
    "FLAG_INPUTS",
    "FOURIER_GATES",
    "GAMMA_MAP_NETWORKS",
    "NETWORKS",
    "SCAN_BLOCKS",
    "fourier_top_n",
    "make_network",
    "resolve_fourier_top_n",
    "resolve_scan_blocks",
]


def resolve_fourier_top_n(model_cfg, vocab_size: int) -> float:
    """`model.fourier_top_n`, or (None) the exponent whose period is one bin of the vocab."""
    n = model_cfg.get("fourier_top_n")
    return fourier_top_n(vocab_size) if n is None else float(n)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


SCAN_BLOCKS = ("auto", "true", "false")


def resolve_scan_blocks(value, backend: str | None = None) -> bool:
    """`model.scan_blocks`: 'true' runs the ScoreUNet's down and up stacks each as one scan
    (`ScoreUNet.scan_blocks`), 'false' unrolls them, 'auto' scans on accelerators and
    unrolls on CPU.

    Scanning compiles in a fraction of the time at the paper's depth on every backend; on
    XLA:CPU its loop body also runs slower than straight-line code, which at CPU sizes costs
    more than the compile saves (docs/benchmarks.md#compile-time-and-memory-at-the-papers-size).
    A ScoreUNet with n_layer = 0 has no stack to scan: it is never scanned.
    """
    if isinstance(value, bool):
        return value
    if str(value).lower() not in SCAN_BLOCKS:
        raise ValueError(f"model.scan_blocks must be one of {list(SCAN_BLOCKS)}, got {value!r}")
    value = str(value).lower()
    if value == "auto":
        return (backend or jax.default_backend()) != "cpu"
    return value == "true"


def unet_options(model_cfg) -> dict:
    """The ScoreUNet's own fields: attention, compute dtype, rematerialisation, scan."""
    return {
        "with_attention": model_cfg.with_attention,
        "dtype": DTYPES[model_cfg.get("dtype", "float32")],
        "remat": bool(model_cfg.get("remat", False)),
        "scan_blocks": resolve_scan_blocks(model_cfg.get("scan_blocks", "false"))
        and model_cfg.n_layer >= 1,
        "flag_input": model_cfg.get("flag_input", "embed"),
    }


def make_network(
    model_cfg, schedule_cfg, vocab_size: int, num_classes: int = 0, n_cond_flags: int = 0
) -> nn.Module:
    """The denoiser named by `model.network`, built from the config's fields."""
    if model_cfg.network not in NETWORKS:
        raise ValueError(
            f"model.network must be one of {sorted(NETWORKS)}, got {model_cfg.network!r}"
        )
    return NETWORKS[model_cfg.network](
        n_embd=model_cfg.n_embd,
        n_layer=model_cfg.n_layer,
        gamma_min=schedule_cfg.gamma_min,
        gamma_max=schedule_cfg.gamma_max,
        dropout=model_cfg.dropout,
        fourier=model_cfg.fourier_features,
        fourier_top_n=resolve_fourier_top_n(model_cfg, vocab_size),
        fourier_octaves=model_cfg.fourier_octaves,
        fourier_gate=model_cfg.fourier_gate,
        base_measure_skip=model_cfg.base_measure_skip,
        num_classes=num_classes,
        n_cond_flags=n_cond_flags,
        **(unet_options(model_cfg) if model_cfg.network == "unet" else {}),
        **(
            {"gamma_map_input": bool(model_cfg.get("gamma_map_input", False))}
            if model_cfg.network in GAMMA_MAP_NETWORKS
            else {}
        ),
    )
