"""Shared test set-up: small, deterministic, CPU. pyproject.toml runs the suite on every core
with pytest-xdist, one test file per worker at a time (`--dist loadfile`), so module-scoped
fixtures (a trained run, two hosts) are built once."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
