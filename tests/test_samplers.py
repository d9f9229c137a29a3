"""Samplers against exact answers: a 2-D Gaussian mixture, its closed-form ε̂ (vdm/core/gmm.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import samplers
from vdm.core import diffusion, elbo, schedules
from vdm.core.gmm import GaussianMixture

GMM = GaussianMixture.ring()
_SCHED = schedules.make_schedule("fixed_linear", gamma_min=-10.0, gamma_max=8.0)
N = 4000
ENC_256 = elbo.Encoding.bin_centres(256)
REF = GMM.sample(jax.random.key(123), N)
REF_LOGP = float(GMM.log_prob(REF).mean())  # 0.96 nats, MC standard error ≈ 0.02


def gamma_fn(t):
    return _SCHED.apply({}, t)


# (sampler, options, tolerance on the mean true log-density of the samples, in nats)
CASES = [
    ("ancestral", dict(steps=200), 0.08),
    ("ddim", dict(steps=50, eta=0.0), 0.15),
    ("ddim", dict(steps=200, eta=1.0), 0.08),
    ("euler_maruyama", dict(steps=500), 0.1),
    ("pc", dict(steps=200, n_corrector=1, snr=0.16), 0.1),
    ("pf_ode", dict(steps=0, solver="tsit5", rtol=1e-5, atol=1e-5), 0.1),
    ("pf_ode", dict(steps=50, solver="heun"), 0.1),
    ("pf_ode", dict(steps=0, solver="dopri5", grid="uniform_logsnr"), 0.1),
    ("dpm_solver_pp_2m", dict(steps=20), 0.15),
    ("dpm_solver_pp_2m", dict(steps=20, grid="uniform_t"), 0.2),
]


def _run(name, key, n=N, eps=GMM.eps_hat, g=gamma_fn, **opts):
    fn = jax.jit(lambda k: samplers.sample(name, k, eps, g, (n, 2), **opts))
    x, info = fn(key)
    return np.asarray(x), info


def _run_offsets(name, key, offsets, **opts):
    """One example at a time, each with its global index as a traced offset (one compile)."""
    fn = jax.jit(
        lambda o: samplers.sample(name, key, GMM.eps_hat, gamma_fn, (1, 2), offset=o, **opts)[0][0]
    )
    return np.stack([np.asarray(fn(jnp.asarray(o))) for o in offsets])


@pytest.mark.parametrize("name,opts,tol", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_sampler_matches_the_mixture(name, opts, tol):
    x, info = _run(name, jax.random.key(0), **opts)
    assert np.all(np.isfinite(x)) and int(info["nfe"]) > 0
    np.testing.assert_allclose(x.mean(0), GMM.mean(), atol=0.03)
    np.testing.assert_allclose(np.cov(x.T), GMM.cov(), atol=0.02)
    logp = float(GMM.log_prob(jnp.asarray(x)).mean())
    assert abs(logp - REF_LOGP) < tol, (logp, REF_LOGP)


def test_learned_schedule_and_any_head_work_through_the_conversions():
    sched = schedules.make_schedule("learned_net", gamma_min=-10.0, gamma_max=8.0, n_features=8)
    params = sched.init(jax.random.key(1), jnp.zeros(()))
    g = lambda t: sched.apply(params, t)

    def v_head_model(z, gamma):  # a model that outputs v, converted back to ε
        v = diffusion.eps_to_v(z, GMM.eps_hat(z, gamma), gamma)
        return diffusion.to_eps("v", z, v, gamma)

    x, _ = _run("ancestral", jax.random.key(0), eps=v_head_model, g=g, steps=200)
    assert abs(float(GMM.log_prob(jnp.asarray(x)).mean()) - REF_LOGP) < 0.1


def test_pf_ode_encode_then_decode_returns_the_input():
    g0 = gamma_fn(jnp.zeros(()))
    alpha0, sigma0 = diffusion.alpha_sigma(g0)
    z0 = alpha0 * REF[:64] + sigma0 * jax.random.normal(jax.random.key(3), (64, 2))
    to_latent = lambda z: samplers.to_latent(GMM.eps_hat, gamma_fn, z, rtol=1e-6, atol=1e-6)
    z1, info = jax.jit(to_latent)(z0)
    back, _ = _run("pf_ode", None, n=64, z_init=z1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(back, z0, atol=1e-3)
    assert float(jnp.std(z1)) > 0.5  # really a latent, not the input


@pytest.mark.parametrize(
    "name,opts,deterministic",
    [
        ("ddim", dict(steps=20, eta=0.0), True),
        ("pf_ode", dict(steps=0), True),
        ("dpm_solver_pp_2m", dict(steps=10), True),
        ("ddim", dict(steps=20, eta=0.5), False),
        ("ancestral", dict(steps=20), False),
        ("pc", dict(steps=20), False),
    ],
)
def test_deterministic_samplers_depend_only_on_the_start(name, opts, deterministic):
    """From one z₁, a deterministic sampler gives the same samples whatever the key (it draws
    no noise after the start); a stochastic one gives different samples for different keys."""
    z1 = jax.random.normal(jax.random.key(11), (16, 2))
    a, _ = _run(name, jax.random.key(5), n=16, z_init=z1, **opts)
    b, _ = _run(name, jax.random.key(6), n=16, z_init=z1, **opts)
    if not deterministic:
        assert np.min(np.abs(a - b).max(axis=1)) > 1e-3  # every example moved
        return
    np.testing.assert_array_equal(a, b)
    c, _ = _run(name, jax.random.key(5), n=16, **opts)  # without z_init the key draws z₁
    assert np.min(np.abs(a - c).max(axis=1)) > 1e-3  # ... which the samples follow


@pytest.mark.parametrize(
    "name,opts",
    [
        ("ancestral", dict(steps=30)),
        ("ddim", dict(steps=30, eta=0.5)),
        ("pc", dict(steps=30)),
        ("pf_ode", dict(steps=0)),
        ("dpm_solver_pp_2m", dict(steps=10)),
    ],
)
def test_same_seed_same_samples_with_batch_size_1_and_8(name, opts):
    key = jax.random.key(7)
    batch, _ = _run(name, key, n=8, **opts)
    np.testing.assert_allclose(_run_offsets(name, key, range(8), **opts), batch, atol=2e-5)


def test_ddim_eta_1_is_the_ancestral_sampler():
    a, _ = _run("ancestral", jax.random.key(9), n=256, steps=50)
    d, _ = _run("ddim", jax.random.key(9), n=256, steps=50, eta=1.0)
    np.testing.assert_allclose(a, d, atol=1e-4)


def _component_eps(k):
    comp = GaussianMixture(GMM.means[k : k + 1], GMM.stds[k : k + 1], np.ones(1))
    return comp.eps_hat


def test_guidance_w0_is_unconditional_and_w1_is_conditional():
    cond, uncond = _component_eps(0), GMM.eps_hat
    x_w0, _ = _run(
        "ancestral", jax.random.key(2), n=512, eps=samplers.guided(cond, uncond, 0.0), steps=50
    )
    x_u, _ = _run("ancestral", jax.random.key(2), n=512, eps=uncond, steps=50)
    np.testing.assert_array_equal(x_w0, x_u)
    x_w1, _ = _run(
        "ancestral", jax.random.key(2), n=512, eps=samplers.guided(cond, uncond, 1.0), steps=50
    )
    np.testing.assert_allclose(x_w1.mean(0), GMM.means[0], atol=0.02)
    x_w3, _ = _run(
        "ddim", jax.random.key(2), n=512, eps=samplers.guided(cond, uncond, 3.0), steps=50
    )
    # Guidance extrapolates past the conditional model, away from the unconditional mean.
    d = GMM.means[0] - GMM.mean()
    assert (x_w3.mean(0) - GMM.mean()) @ d > 1.1 * (x_w1.mean(0) - GMM.mean()) @ d


def test_final_denoise_and_decode_give_integers():
    x, info = _run("ddim", jax.random.key(4), n=32, steps=20, encoding=ENC_256, final_denoise=True)
    assert x.dtype == np.int32 and x.min() >= 0 and x.max() < 256 and int(info["nfe"]) == 21
    y, _ = _run("ddim", jax.random.key(4), n=32, steps=20, encoding=ENC_256)
    assert np.abs(x.astype(int) - y).max() <= 1  # both sit on the same bins, up to a boundary


def test_bad_sampler_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"sample.sampler must be one of .*'ddim'"):
        samplers.sample("ddpm", jax.random.key(0), GMM.eps_hat, gamma_fn, (2, 2), steps=2)
    with pytest.raises(ValueError, match=r"sample.grid must be one of"):
        samplers.sample(
            "ddim", jax.random.key(0), GMM.eps_hat, gamma_fn, (2, 2), steps=2, grid="log"
        )
    with pytest.raises(ValueError, match=r"sample.solver must be one of"):
        samplers.sample("pf_ode", jax.random.key(0), GMM.eps_hat, gamma_fn, (2, 2), solver="rk4")
