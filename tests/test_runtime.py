"""XLA:CPU runtime defaults set on import (vdm/runtime.py)."""

import os
import subprocess
import sys

import pytest

from vdm import runtime

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"


@pytest.fixture
def fresh(monkeypatch):
    """As in a process where no backend has started yet, on the measured jaxlib."""
    monkeypatch.setattr(runtime, "_backends_started", lambda: False)
    monkeypatch.setattr(runtime, "_jaxlib_version", lambda: (0, 10))


def test_adds_the_flag_after_the_users_flags(fresh):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    added = runtime.apply_cpu_defaults(env)
    assert added == runtime.CPU_FLAGS
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {FLAG}"
    assert runtime.apply_cpu_defaults(env) == {}  # idempotent
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_the_users_own_value_and_the_opt_out_win(fresh):
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
    assert runtime.apply_cpu_defaults(env) == {}
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
    env = {runtime.OPT_OUT: "0"}
    assert runtime.apply_cpu_defaults(env) == {} and "XLA_FLAGS" not in env


def test_left_alone_on_other_jaxlibs_and_once_a_backend_runs(monkeypatch):
    import jax.numpy as jnp

    monkeypatch.setattr(runtime, "_jaxlib_version", lambda: (0, 11))
    env = {}
    assert runtime.apply_cpu_defaults(env) == {} and env == {}
    monkeypatch.setattr(runtime, "_jaxlib_version", lambda: (0, 10))
    jnp.zeros(1).block_until_ready()  # a backend runs in this process now
    assert runtime._backends_started()
    assert runtime.apply_cpu_defaults(env) == {} and env == {}


PROBE = """
import vdm, jax, jax.numpy as jnp
f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = f.lower(jnp.ones((4, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
print("ynn" if "__ynn_fusion" in hlo else "xla")
"""


@pytest.mark.parametrize("opt_out, want", [("1", "xla"), ("0", "ynn")])
def test_importing_vdm_keeps_convolutions_out_of_ynnpack(opt_out, want):
    """In a fresh process: with the default, XLA:CPU compiles the convolution itself; opted
    out, the jaxlib's default (a YNNPACK fusion) is back, so the flag is what changed it."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env[runtime.OPT_OUT] = opt_out
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == want


def test_it_says_what_it_did_on_cpu_only():
    for status, says in [("added", "outside YNNPACK"), ("late", "were not applied")]:
        old, runtime.STATUS = runtime.STATUS, status
        try:
            assert says in runtime.describe("cpu")
            assert runtime.describe("gpu") == ""
        finally:
            runtime.STATUS = old
    for status in ("user", "opted_out", "other_jaxlib", ""):
        old, runtime.STATUS = runtime.STATUS, status
        try:
            assert runtime.describe("cpu") == ""
        finally:
            runtime.STATUS = old


LATE = """
import warnings, jax.numpy as jnp
jnp.zeros(1).block_until_ready()
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import vdm
from vdm import runtime
assert runtime.STATUS == "late", runtime.STATUS
print([str(x.message) for x in w if x.category is RuntimeWarning])
"""


def test_a_late_import_warns_that_the_defaults_were_not_applied():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", runtime.OPT_OUT)}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", LATE], env=env, capture_output=True, text=True, check=True
    )
    assert "were not applied" in out.stdout, out.stdout + out.stderr
