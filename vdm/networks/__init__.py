"""Denoising networks: the paper's ScoreUNet, an MLP for low-dimensional data, shared layers."""

from __future__ import annotations

import flax.linen as nn

from vdm.networks.mlp import MLP
from vdm.networks.unet import ScoreUNet

NETWORKS = {"unet": ScoreUNet, "mlp": MLP}


def make_network(model_cfg, schedule_cfg, num_classes: int = 0, n_cond_flags: int = 0) -> nn.Module:
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
        fourier_min=model_cfg.fourier_min,
        fourier_max=model_cfg.fourier_max,
        base_measure_skip=model_cfg.base_measure_skip,
        num_classes=num_classes,
        n_cond_flags=n_cond_flags,
        **({"with_attention": model_cfg.with_attention} if model_cfg.network == "unet" else {}),
    )
