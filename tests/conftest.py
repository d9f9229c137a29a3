"""Shared test set-up: small, deterministic, CPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
