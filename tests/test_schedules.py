"""Noise schedules γ(t) (vdm/core/schedules.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.core import schedules

GAMMA_MIN, GAMMA_MAX = -13.3, 5.0
T_GRID = jnp.linspace(0.0, 1.0, 4001)


def _init(name, seed=0, n_features=64):
    module = schedules.make_schedule(
        name, gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX, n_features=n_features
    )
    params = module.init(jax.random.key(seed), jnp.zeros(()))
    return module, params


def _perturb(params, seed):
    """A random draw of every learned parameter (far from the initialisation)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [p + jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, new)


# the scalar schedules; those with a γ per dimension: tests/test_multivariate.py
SCALAR = sorted(set(schedules.SCHEDULES) - set(schedules.MULTIVARIATE))


@pytest.mark.parametrize("name", SCALAR)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_strictly_increasing_with_finite_gradients(name, seed):
    module, params = _init(name, seed)
    if seed:
        params = _perturb(params, seed)
        if name == "learned_net":  # eq. 59 needs γ₁ > γ₀; random shape, ordered endpoints
            params["params"]["gamma_0"] = jnp.asarray(GAMMA_MIN - seed)
            params["params"]["gamma_1"] = jnp.asarray(GAMMA_MAX + seed)
    gamma = module.apply(params, T_GRID)
    assert gamma.shape == T_GRID.shape
    assert jnp.all(jnp.isfinite(gamma))
    assert jnp.all(jnp.diff(gamma) > 0), f"{name} not strictly increasing"

    def mean_gamma(p):
        return jnp.mean(module.apply(p, T_GRID))

    grads = jax.grad(mean_gamma)(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    dgamma = jax.vmap(jax.grad(lambda t: module.apply(params, t)))(T_GRID)
    assert jnp.all(jnp.isfinite(dgamma)) and jnp.all(dgamma > 0)


@pytest.mark.parametrize("name", ["fixed_linear", "cosine", "learned_scalar", "learned_net"])
def test_endpoints_at_initialisation(name):
    module, params = _init(name)
    np.testing.assert_allclose(
        module.apply(params, jnp.array([0.0, 1.0])), [GAMMA_MIN, GAMMA_MAX], rtol=1e-5
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_learned_net_hits_learned_endpoints_exactly(seed):
    module, params = _init("learned_net", seed)
    params = _perturb(params, seed)
    g0, g1 = params["params"]["gamma_0"], params["params"]["gamma_1"]
    ends = module.apply(params, jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(ends, [g0, g1], atol=1e-5)
    np.testing.assert_allclose(module.apply(params, method="endpoints"), [g0, g1])
    shape = module.apply(params, T_GRID, method="shape")
    assert shape[0] == 0.0 and abs(float(shape[-1]) - 1.0) < 1e-6


def test_unnormalized_net_endpoints_drift_with_parameters():
    """The original code's variant: endpoints are whatever the network says (no eq. 59)."""
    module, params = _init("learned_net_unnormalized", 1)
    params = _perturb(params, 1)
    ends = module.apply(params, jnp.array([0.0, 1.0]))
    assert abs(float(ends[0]) - GAMMA_MIN) > 1e-2 or abs(float(ends[1]) - GAMMA_MAX) > 1e-2
    assert "gamma_0" not in params["params"]


def test_cosine_is_the_alpha_cos_family():
    """α_t = cos(π t′/2) with t′ an affine map of t: α² / σ² = cot²(π t′/2)."""
    module, params = _init("cosine")
    gamma = module.apply(params, T_GRID)
    t_prime = 2 / jnp.pi * jnp.arctan(jnp.exp(gamma / 2))
    np.testing.assert_allclose(jnp.diff(t_prime, 2), 0.0, atol=1e-5)  # affine in t


def test_bad_schedule_config_is_a_clear_error():
    with pytest.raises(ValueError, match=r"schedule.name must be one of .*'cosine'.*got 'cosin'"):
        schedules.make_schedule("cosin", gamma_min=-13.0, gamma_max=5.0)
    with pytest.raises(ValueError, match=r"schedule.gamma_min must be < schedule.gamma_max"):
        schedules.make_schedule("fixed_linear", gamma_min=5.0, gamma_max=-13.0)
