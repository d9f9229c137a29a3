"""Variational Diffusion Models (Kingma, Salimans, Poole & Ho, 2021) in JAX/Flax."""

from vdm import runtime

runtime.apply_cpu_defaults()  # before any JAX backend starts: see vdm/runtime.py

__version__ = "0.1.0"
