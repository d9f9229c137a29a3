"""Denoising networks: the paper's ScoreUNet, an MLP for low-dimensional data, shared layers."""
