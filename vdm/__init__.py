"""Variational Diffusion Models (Kingma, Salimans, Poole & Ho, 2021) in JAX/Flax."""

__version__ = "0.1.0"
