"""Multivariate schedules (MuLAN): one γ per data dimension, checked against exact answers.

The scalar bound depends on the schedule only through its endpoints (VDM eq. 18). With a γ
per dimension the exact denoiser's bound still does, even for correlated data (I-MMSE), but
a model's bound in general does not (MuLAN's point): a denoiser that is not the posterior
mean under the path has a path-dependent bound. Both are checked by quadrature on Gaussian
data.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import samplers
from vdm.core import elbo, schedules
from vdm.core.gmm import GaussianMixture
from vdm.eval import likelihood


def _schedule(event_shape, endpoints="per_dim", **params):
    """A LearnedMultivariate of `event_shape` with the given parameter values; gamma_fn."""
    sched = schedules.make_schedule(
        "learned_multivariate",
        gamma_min=-6.0,
        gamma_max=6.0,
        event_shape=event_shape,
        endpoints=endpoints,
    )
    p = sched.init(jax.random.key(0), jnp.zeros(()))["params"]
    p = {
        k: jnp.broadcast_to(jnp.asarray(params.get(k, v), jnp.float32), v.shape)
        for k, v in p.items()
    }
    return sched, p, lambda t: sched.apply({"params": p}, t)


# ---- The schedule. ----


def test_polynomial_schedule_hits_its_endpoints_and_never_decreases():
    rng = np.random.default_rng(0)
    shape = (3, 5)
    a, b, c = (rng.normal(size=shape) * 3 for _ in range(3))
    c[0, 0], b[0, 0], a[0, 0] = 0.0, 0.0, 0.0  # a vanishing quadratic: the δ t term carries it
    a[1, 1], b[1, 1], c[1, 1] = 1.0, -1.0, 0.25  # (s − ½)²: γ′ = 0 at t = ½
    g0, w = rng.normal(size=shape) - 5, np.abs(rng.normal(size=shape)) * 5 + 1
    _, _, gamma = _schedule(shape, a=a, b=b, c=c, gamma_0=g0, w=w)
    np.testing.assert_allclose(gamma(jnp.zeros(())), g0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gamma(jnp.ones(())), g0 + w, rtol=1e-6, atol=1e-5)
    t = jnp.linspace(0.0, 1.0, 401)
    g, dg = jax.jvp(gamma, (t,), (jnp.ones_like(t),))
    assert g.shape == (401, *shape) and dg.shape == g.shape
    assert float(dg.min()) >= 0.0
    assert float(jnp.diff(g, axis=0).min()) >= -1e-6
    # γ′ matches the closed form (γ₁ − γ₀)(a t² + b t + c)² / P(1) away from the δ term
    quad = a[1, 1] * t**2 + b[1, 1] * t + c[1, 1]
    p1 = a[1, 1] ** 2 / 5 + a[1, 1] * b[1, 1] / 2 + (b[1, 1] ** 2 + 2 * a[1, 1] * c[1, 1]) / 3
    p1 += b[1, 1] * c[1, 1] + c[1, 1] ** 2 + schedules.POLY_DELTA
    expect = w[1, 1] * (quad**2 + schedules.POLY_DELTA) / p1
    np.testing.assert_allclose(dg[:, 1, 1], expect, rtol=1e-4, atol=1e-5)


def test_initial_schedule_is_linear_in_every_dimension_and_shared_endpoints_are_scalars():
    sched, p, gamma = _schedule((2, 3))
    t = jnp.linspace(0, 1, 5)
    np.testing.assert_allclose(
        gamma(t), np.broadcast_to((-6 + 12 * t)[:, None, None], (5, 2, 3)), atol=1e-5
    )
    shared, ps, _ = _schedule((2, 3), endpoints="shared")
    assert ps["gamma_0"].shape == () and ps["w"].shape == ()
    assert p["gamma_0"].shape == (2, 3)


def test_bad_multivariate_options_are_one_line():
    with pytest.raises(ValueError, match="event_shape"):
        schedules.make_schedule("learned_multivariate", gamma_min=-1.0, gamma_max=1.0)
    with pytest.raises(ValueError, match="schedule.endpoints must be one of"):
        schedules.make_schedule(
            "learned_multivariate", gamma_min=-1.0, gamma_max=1.0, event_shape=(2,), endpoints="x"
        )


# ---- Equal dimensions are the scalar schedule. ----


def _toy_eps_hat(w):
    """A denoiser that sees γ only through its mean per example (so equal dimensions give the
    scalar schedule's input exactly)."""

    def eps_hat(z, g):
        g = g if g.ndim == 1 else jnp.mean(g, axis=tuple(range(1, g.ndim)))
        return jnp.tanh(w * z + 0.1 * g.reshape(g.shape + (1,) * (z.ndim - 1)))

    return eps_hat


@pytest.mark.parametrize("n_timesteps", [0, 10])
def test_equal_dimensions_reproduce_the_scalar_schedule_and_its_gradients(n_timesteps):
    shape = (4, 3, 2)
    coef = dict(a=0.7, b=-1.3, c=0.9, gamma_0=-5.0, w=9.0)
    scalar, p_s, _ = _schedule((), endpoints="shared", **coef)
    vector, p_v, _ = _schedule(shape, endpoints="per_dim", **coef)
    enc = elbo.Encoding.bin_centres(16)
    x = jax.random.randint(jax.random.key(1), (8, *shape), 0, 16)

    def loss(sched, p, w):
        terms = elbo.vlb_terms(
            jax.random.key(2),
            x,
            lambda t: sched.apply({"params": p}, t),
            _toy_eps_hat(w),
            encoding=enc,
            n_timesteps=n_timesteps,
        )
        return sum(jnp.mean(v) for v in terms.values()), terms

    (l_s, terms_s), (g_ps, g_ws) = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(
        scalar, p_s, 0.5
    )
    (l_v, terms_v), (g_pv, g_wv) = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(
        vector, p_v, 0.5
    )
    for k in terms_s:
        np.testing.assert_allclose(terms_v[k], terms_s[k], rtol=2e-6, atol=1e-5)
    np.testing.assert_allclose(g_wv, g_ws, rtol=1e-5)
    for k in g_ps:  # the scalar's gradient is the sum of the tied dimensions'
        np.testing.assert_allclose(jnp.sum(g_pv[k]), g_ps[k], rtol=1e-4, atol=1e-5)


# ---- Gaussian data, exact denoiser, quadrature. ----


def _gain(cov, g, xp):
    """M(γ) = S (A Σ A + S²)⁻¹ (…, D, D): E[ε | z_t] = M z for x ~ N(0, Σ) and a γ per
    dimension (A, S diagonal)."""
    a, s = xp.sqrt(1 / (1 + xp.exp(g))), xp.sqrt(1 / (1 + xp.exp(-g)))
    c = a[..., :, None] * cov * a[..., None, :] + s[..., :, None] ** 2 * xp.eye(cov.shape[-1])
    return s[..., :, None] * xp.linalg.inv(c)


def _seen(g, blind):
    """The γ the denoiser is given: every dimension's, or (`blind`) their mean for all."""
    return g.mean(-1, keepdims=True) + 0 * g if blind else g


def _gaussian_eps_hat(cov, blind=False):
    """The exact E[ε | z_t] for x ~ N(0, Σ); `blind`: the same formula given the mean γ only
    (a denoiser that does not see each dimension's noise level)."""
    cov = jnp.asarray(cov, jnp.float32)
    return lambda z, g: jnp.einsum("bij,bj->bi", _gain(cov, _seen(g, blind), jnp), z)


def _quadrature(cov, gamma_fn, blind=False, n=4001):
    """L_∞ = ½ ∫₀¹ Σ_i γ′_i(t) E(ε_i − ε̂_i)² dt (Simpson) for x ~ N(0, Σ) and ε̂ = M z
    (`_gaussian_eps_hat`): z = A x + S ε gives E(ε − ε̂)(ε − ε̂)ᵀ = (I − M S)(I − M S)ᵀ +
    M A Σ A Mᵀ."""
    t = jnp.linspace(0.0, 1.0, n)
    g, dg = jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))
    g, dg = np.asarray(g, np.float64), np.asarray(dg, np.float64)
    eye = np.eye(len(cov))
    a, s = (np.sqrt(v)[..., None] * eye for v in (1 / (1 + np.exp(g)), 1 / (1 + np.exp(-g))))
    m = _gain(cov, _seen(g, blind), np)
    r = eye - m @ s
    err = np.diagonal(r @ r.transpose(0, 2, 1) + m @ a @ cov @ a @ m.transpose(0, 2, 1), 0, 1, 2)
    f = 0.5 * np.sum(dg * err, axis=1)
    h = 1.0 / (n - 1)
    return h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())


def _monte_carlo(cov, gamma_fn, blind=False, n=200_000):
    k_x, k_t, k_e = jax.random.split(jax.random.key(3), 3)
    x = jax.random.multivariate_normal(k_x, jnp.zeros(2), jnp.asarray(cov, jnp.float32), (n,))
    t = elbo.sample_t(k_t, n)
    eps = jax.random.normal(k_e, x.shape)
    eps_hat = _gaussian_eps_hat(cov, blind)
    loss = jax.jit(lambda x, t, e: elbo.diffusion_loss_continuous(x, t, e, gamma_fn, eps_hat))(
        x, t, eps
    )
    return float(jnp.mean(loss)), float(jnp.std(loss) / np.sqrt(n))


def _mutual_information(cov, gamma):
    """I(x; z) = ½ log det(I + diag(SNR) Σ) for x ~ N(0, Σ), z = α ⊙ x + σ ⊙ ε."""
    return 0.5 * np.linalg.slogdet(np.eye(len(cov)) + np.diag(np.exp(-gamma)) @ cov)[1]


ENDS = dict(gamma_0=[-6.0, -4.0], w=[12.0, 9.0])  # γ₀ = (−6, −4), γ₁ = (6, 5)
G0, G1 = np.array(ENDS["gamma_0"]), np.array(ENDS["gamma_0"]) + np.array(ENDS["w"])
PATHS = {
    "linear": dict(a=[0.0, 0.0], b=[0.0, 0.0], c=[1.0, 1.0], **ENDS),
    # dimension 0 noised early (γ̂ = 3t − 3t² + t³), dimension 1 late (γ̂ = t³)
    "early_late": dict(a=[0.0, 0.0], b=[-1.0, 1.0], c=[1.0, 0.0], **ENDS),
}
RHO = 0.95
CORRELATED = np.array([[1.0, RHO], [RHO, 1.0]]) * 0.5


def test_independent_dimensions_bound_depends_only_on_each_dimensions_endpoints():
    var = np.array([0.3, 1.7])
    g0, g1 = np.array(ENDS["gamma_0"]), np.array(ENDS["gamma_0"]) + np.array(ENDS["w"])
    exact = 0.5 * np.sum(np.log1p(var * np.exp(-g0)) - np.log1p(var * np.exp(-g1)))
    for path in PATHS.values():
        _, _, gamma = _schedule((2,), **path)
        assert _quadrature(np.diag(var), gamma) == pytest.approx(exact, abs=2e-5)


def test_exact_denoiser_bound_depends_only_on_the_endpoints_even_for_correlated_data():
    """With the exact ε̂, Σ_i γ′_i Var(ε_i | z_t) is the derivative of the mutual information
    along the path (I-MMSE: ∂I/∂SNR_i = ½ mmse_i), so L_∞ = I(x; z₀) − I(x; z₁) on every path."""
    exact = _mutual_information(CORRELATED, G0) - _mutual_information(CORRELATED, G1)
    for name, path in PATHS.items():
        _, _, gamma = _schedule((2,), **path)
        assert _quadrature(CORRELATED, gamma) == pytest.approx(exact, abs=2e-5), name
        mc, se = _monte_carlo(CORRELATED, gamma)
        assert abs(mc - exact) < 4 * se, (name, mc, exact, se)


def test_a_denoiser_blind_to_each_dimensions_noise_level_has_a_path_dependent_bound():
    """MuLAN's point, and why the denoiser must see γ_t per dimension: a model's bound is not
    invariant to the path once its ε̂ is not the posterior mean under that path. The Gaussian
    denoiser given only the mean γ: the same endpoints, two paths, two bounds; the
    Monte-Carlo bound matches the quadrature on both, and both exceed the exact one."""
    exact = _mutual_information(CORRELATED, G0) - _mutual_information(CORRELATED, G1)
    quad = {}
    for name, path in PATHS.items():
        _, _, gamma = _schedule((2,), **path)
        quad[name] = _quadrature(CORRELATED, gamma, blind=True)
        mc, se = _monte_carlo(CORRELATED, gamma, blind=True)
        assert abs(mc - quad[name]) < 4 * se, (name, mc, quad[name], se)
        assert quad[name] > exact + 0.01
    assert abs(quad["linear"] - quad["early_late"]) > 0.05, quad


# ---- Samplers on a Gaussian mixture with its exact ε̂ under a γ per dimension. ----

GMM = GaussianMixture.ring()
N = 4000
_, _, GAMMA_2D = _schedule(
    (2,), a=[0.0, 0.0], b=[-0.5, 0.5], c=[1.0, 0.5], gamma_0=[-10.0, -9.0], w=[18.0, 16.0]
)
REF_LOGP = float(GMM.log_prob(GMM.sample(jax.random.key(123), N)).mean())

VECTOR_CASES = [
    # the scalar cases' tolerances (tests/test_samplers.py); ancestral steps doubled: on the
    # uniform t grid the late dimension's γ moves slowly early and fast late
    ("ancestral", dict(steps=400), 0.08),
    ("ddim", dict(steps=50, eta=0.0), 0.15),
    ("ddim", dict(steps=400, eta=1.0), 0.08),
    ("euler_maruyama", dict(steps=500), 0.1),
    ("pc", dict(steps=200, n_corrector=1, snr=0.16), 0.1),
    ("dpm_solver_pp_2m", dict(steps=20, grid="uniform_t"), 0.2),
    # the PF-ODE runs in t for a γ per dimension (samplers.ode.pf_ode_drift_t)
    ("pf_ode", dict(steps=0, solver="tsit5", rtol=1e-5, atol=1e-5), 0.1),
    ("pf_ode", dict(steps=50, solver="heun"), 0.1),
]


def test_gmm_denoiser_per_dimension_equals_per_example_when_dimensions_agree():
    z = jax.random.normal(jax.random.key(0), (16, 2))
    g = jnp.linspace(-5, 5, 16)
    np.testing.assert_allclose(
        GMM.eps_hat(z, jnp.stack([g, g], 1)), GMM.eps_hat(z, g), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(
    "name,opts,tol", VECTOR_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(VECTOR_CASES)]
)
def test_samplers_with_a_gamma_per_dimension_match_the_mixture(name, opts, tol):
    fn = jax.jit(lambda k: samplers.sample(name, k, GMM.eps_hat, GAMMA_2D, (N, 2), **opts))
    x, info = fn(jax.random.key(0))
    x = np.asarray(x)
    assert np.all(np.isfinite(x)) and int(info["nfe"]) > 0
    np.testing.assert_allclose(x.mean(0), GMM.mean(), atol=0.03)
    np.testing.assert_allclose(np.cov(x.T), GMM.cov(), atol=0.02)
    logp = float(GMM.log_prob(jnp.asarray(x)).mean())
    assert abs(logp - REF_LOGP) < tol, (logp, REF_LOGP)


def test_log_snr_grids_refuse_a_gamma_per_dimension_in_one_line():
    """Stepping each dimension's γ on its own line leaves the path the model was trained on."""
    with pytest.raises(ValueError, match="use 'uniform_t'"):
        samplers.sample(
            "dpm_solver_pp_2m", jax.random.key(0), GMM.eps_hat, GAMMA_2D, (4, 2), steps=4
        )
    with pytest.raises(ValueError, match="use 'uniform_t'"):
        samplers.sample(
            "pf_ode", jax.random.key(0), GMM.eps_hat, GAMMA_2D, (4, 2), grid="uniform_logsnr"
        )


# γ₁ = 12 in both dimensions: q(z₁) = N(0, I) to ~1e-3 nats, so the prior is not measured
_, _, GAMMA_LIK = _schedule(
    (3,),
    a=[0.0, 1.0, 0.0],
    b=[-0.5, -1.0, 0.5],
    c=[1.0, 0.5, 0.5],
    gamma_0=[-10.0, -9.0, -8.0],
    w=[22.0, 21.0, 20.0],
)
GAUSS = GaussianMixture(np.full((1, 3), 0.3), np.array([0.5]), np.ones(1))


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_pf_ode_likelihood_with_a_gamma_per_dimension_is_exact_on_gaussian_data(trace):
    """log p₀(z₀) by the PF-ODE in t against the true log q(z₀) (per-dimension γ₀), as
    tests/test_likelihood.py checks the scalar schedule: within 0.01 nats per dimension."""
    g0 = GAMMA_LIK(jnp.zeros(()))
    alpha, sigma = (jnp.sqrt(jax.nn.sigmoid(s * g0)) for s in (-1, 1))
    x = GAUSS.sample(jax.random.key(0), 32)
    z0 = alpha * x + sigma * jax.random.normal(jax.random.key(1), x.shape)
    logp, info = jax.jit(
        lambda z: likelihood.pf_ode_log_prob(
            jax.random.key(0), GAUSS.eps_hat, GAMMA_LIK, z, trace=trace, rtol=1e-6, atol=1e-6
        )
    )(z0)
    true = GAUSS.log_prob_t(z0, jnp.broadcast_to(g0, z0.shape))
    err = np.abs(np.asarray(logp - true, np.float64)) / 3
    assert int(info["nfe"]) > 0
    # this model's ∂f/∂z is diagonal, so Hutchinson's Rademacher estimate is exact too
    assert err.max() < 0.01 and err.mean() < 1e-3, err


def test_v_head_form_is_the_eps_form_per_dimension():
    """½ Σ γ′_i (ε_i − ε̂_i)² = ½ Σ (1 − σ²_i) γ′_i (v_i − v̂_i)² with a γ per dimension."""
    from vdm.core import diffusion

    x = GMM.sample(jax.random.key(4), 64)
    t = elbo.sample_t(jax.random.key(5), 64)
    eps = jax.random.normal(jax.random.key(6), x.shape)

    def wrong_eps(z, g):  # an imperfect denoiser, so the loss is not trivially the optimum's
        return 0.8 * GMM.eps_hat(z, g) + 0.1 * z

    loss_eps = elbo.diffusion_loss_continuous(x, t, eps, GAMMA_2D, wrong_eps)
    g, dg = jax.jvp(GAMMA_2D, (t,), (jnp.ones_like(t),))
    z = diffusion.q_sample(x, g, eps)
    v, v_hat = diffusion.eps_to_v(z, eps, g), diffusion.eps_to_v(z, wrong_eps(z, g), g)
    loss_v = 0.5 * jnp.sum(jax.nn.sigmoid(-g) * dg * (v - v_hat) ** 2, axis=1)
    np.testing.assert_allclose(loss_eps, loss_v, rtol=2e-4, atol=1e-5)


# ---- The config and the command line. ----


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("objective.weighting", "sigmoid", r"trains on the ELBO"),
        ("sample.grid", "uniform_logsnr", r"sample.grid must be 'uniform_t'"),
        ("schedule.variance_min", True, r"schedule.variance_min needs schedule.name in"),
        ("schedule.endpoints", "everywhere", r"schedule.endpoints must be one of"),
    ],
)
def test_config_refuses_what_a_gamma_per_dimension_cannot_do(field, value, match):
    from vdm.configs import digits
    from vdm.run import config as config_lib

    c = digits.get_config("smoke")
    c.schedule.name = "learned_multivariate"
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c, n_devices=1)


def test_pf_ode_eval_is_accepted_per_pixel_and_refused_for_the_conditional_schedule():
    from vdm.configs import digits
    from vdm.run import config as config_lib

    c = digits.get_config("smoke")
    c.schedule.name = "learned_multivariate"
    c.eval.pf_ode, c.sample.sampler = True, "pf_ode"
    config_lib.validate(c, n_devices=1)
    c.schedule.conditional = True
    with pytest.raises(config_lib.ConfigError, match="eval.pf_ode with schedule.conditional"):
        config_lib.validate(c, n_devices=1)


def test_endpoints_option_belongs_to_the_multivariate_schedule():
    from vdm.configs import digits
    from vdm.run import config as config_lib

    c = digits.get_config("smoke")
    c.schedule.endpoints = "shared"
    with pytest.raises(config_lib.ConfigError, match="schedule.endpoints applies to"):
        config_lib.validate(c, n_devices=1)


def test_gamma_map_input_gives_a_scalar_schedule_the_per_dimension_denoiser():
    """model.gamma_map_input: the control for the per-dimension schedules. A scalar
    schedule's denoiser then takes the same inputs (γ's map as an extra channel) and the same
    parameters as a per-dimension one's, and with every dimension's γ equal gives the same ε̂."""
    from vdm.configs import digits
    from vdm.model import VDM
    from vdm.run import config as config_lib

    shape = (8, 8, 1)
    c = digits.get_config("smoke")
    c.schedule.name = "learned_multivariate"
    per_dim = VDM.from_config(c, data_shape=shape)
    c.schedule.name, c.model.gamma_map_input = "learned_scalar", True
    config_lib.validate(c, n_devices=1)
    control = VDM.from_config(c, data_shape=shape)
    c.model.gamma_map_input = False
    plain = VDM.from_config(c, data_shape=shape)
    params = per_dim.init(jax.random.key(0), shape)
    shapes = lambda m: jax.tree.map(jnp.shape, m.init(jax.random.key(0), shape)["net"])  # noqa: E731
    assert shapes(control) == jax.tree.map(jnp.shape, params["net"])
    assert shapes(plain) != shapes(control)  # one input channel fewer
    z = jax.random.normal(jax.random.key(1), (3, *shape))
    gamma = jnp.array([-5.0, 0.5, 4.0])
    eps_control = control.eps_hat_fn(params)(z, gamma)
    eps_per_dim = per_dim.eps_hat_fn(params)(
        z, jnp.broadcast_to(gamma[:, None, None, None], z.shape)
    )
    np.testing.assert_allclose(eps_control, eps_per_dim, rtol=1e-5, atol=1e-5)
    c.model.network, c.model.gamma_map_input = "concat_mlp", True
    with pytest.raises(config_lib.ConfigError, match="model.gamma_map_input=True needs"):
        config_lib.validate(c, n_devices=1)


@pytest.mark.parametrize(
    "endpoints,extra",
    [
        ("per_dim", []),
        ("shared", ["--config.schedule.conditional=True", "--config.schedule.latent_size=6"]),
    ],
)
def test_trains_evaluates_and_samples_from_the_command_line(tmp_path, endpoints, extra):
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [
        sys.executable,
        "-m",
        "vdm.main",
        "--config=configs/digits.py:smoke",
        f"--workdir={tmp_path}",
        "--config.schedule.name=learned_multivariate",
        f"--config.schedule.endpoints={endpoints}",
        *extra,
    ]
    # the per-pixel run also evaluates the PF-ODE bound and samples by the PF-ODE (in t)
    ode = [] if extra else ["--config.eval.pf_ode=True", "--config.eval.pf_ode_examples=4"]
    ode_sample = [] if extra else ["--config.sample.sampler=pf_ode"]
    for mode, more in (("train", []), ("eval", ode), ("sample", ode_sample)):
        proc = subprocess.run(
            [*args, f"--mode={mode}", *more], cwd=root, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    if not extra:
        evals = [json.load(open(p)) for p in tmp_path.glob("eval_step_*.json")]
        assert any(np.isfinite(e.get("pf_ode_bpd", np.nan)) for e in evals), evals
    lines = [json.loads(s) for s in open(tmp_path / "metrics.jsonl")]
    train_rows = [r for r in lines if "gamma_0" in r]
    assert train_rows and all(np.isfinite(r["bpd"]) for r in train_rows if "bpd" in r)


# ---- The input-conditional schedule and its latent. ----


def test_latent_counts_are_hard_draws_with_relaxed_gradients_and_an_exact_kl():
    from vdm.core import latent

    logits = jnp.array([[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    counts = latent.draw_counts(jax.random.key(0), logits, k=5)
    np.testing.assert_allclose(counts.sum(-1), 5.0, rtol=1e-6)
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-6)  # the value is the hard draw
    grad = jax.grad(
        lambda lg: jnp.sum(latent.draw_counts(jax.random.key(0), lg, 5) * jnp.arange(4.0))
    )(logits)
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0
    # the draws follow softmax(logits): mean counts = k q
    many = latent.draw_counts(jax.random.key(1), jnp.broadcast_to(logits[0], (20000, 4)), k=5)
    np.testing.assert_allclose(many.mean(0), 5 * jax.nn.softmax(logits[0]), atol=0.03)
    q = np.asarray(jax.nn.softmax(logits[0]))
    kl = latent.kl_uniform(logits, k=5)
    np.testing.assert_allclose(kl[0], 5 * np.sum(q * np.log(q * 4)), rtol=1e-5)
    np.testing.assert_allclose(kl[1], 0.0, atol=1e-6)
    prior = latent.prior_counts(jax.random.key(2), (20000,), 4, 5)
    np.testing.assert_allclose(prior.sum(-1), 5.0)
    np.testing.assert_allclose(prior.mean(0), 1.25, atol=0.03)


def _conditional(shape=(4, 4, 1), **kw):
    from vdm.networks.conditional_schedule import ConditionalMultivariate

    sched = ConditionalMultivariate(-6.0, 6.0, shape, n_latent=6, n_draws=3, n_embd=8, **kw)
    f = jnp.zeros((2, *shape))
    params = sched.init(jax.random.key(0), jnp.zeros(()), f, method="init_all")
    return sched, params


def test_conditional_schedule_is_linear_at_init_and_monotone_with_exact_endpoints_for_any_c():
    sched, params = _conditional()
    c = jnp.array([[3.0, 0, 0, 0, 0, 0], [1.0, 1, 0, 0, 1, 0]])
    t = jnp.array([0.25, 0.75])
    np.testing.assert_allclose(
        sched.apply(params, t, c),
        np.broadcast_to((-6 + 12 * t)[:, None, None, None], (2, 4, 4, 1)),
        atol=1e-5,
    )
    # random coefficient MLP: every image's schedule still spans [γ₀, γ₁] monotonically
    p = jax.tree.map(lambda v: v + 0.5 * jax.random.normal(jax.random.key(1), v.shape), params)
    g0, g1 = sched.apply(p, method="endpoints")
    for ci in c:  # one example at a time: t of any shape
        grid = jnp.linspace(0, 1, 101)
        g = sched.apply(p, grid, ci)
        assert g.shape == (101, 4, 4, 1)
        np.testing.assert_allclose(g[0], g0, atol=1e-5)
        np.testing.assert_allclose(g[-1], g1, rtol=1e-5, atol=1e-5)
        assert float(jnp.diff(g, axis=0).min()) >= 0
    assert not np.allclose(sched.apply(p, 0.5, c[0]), sched.apply(p, 0.5, c[1]))


def test_conditional_bound_has_the_latent_kl_and_trains_the_encoder():
    from vdm.configs import digits
    from vdm.model import VDM

    c = digits.get_config("smoke")
    c.schedule.name = "learned_multivariate"
    c.schedule.conditional = True
    c.schedule.latent_size, c.schedule.latent_draws, c.schedule.encoder_embd = 6, 3, 8
    model = VDM.from_config(c, 10, data_shape=(8, 8, 1))
    params = model.init(jax.random.key(0), (8, 8, 1))
    x = jax.random.randint(jax.random.key(1), (4, 8, 8, 1), 0, 17)
    terms = model.vlb_terms(params, jax.random.key(2), {"image": x})
    assert set(terms) == {"recon", "prior", "diffusion", "latent"}
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in terms.values())
    assert float(terms["latent"].min()) >= 0
    g = jax.grad(
        lambda p: jnp.mean(sum(model.vlb_terms(p, jax.random.key(2), {"image": x}).values()))
    )(params)
    enc = g["schedule"]["encoder"]
    assert float(sum(jnp.abs(v).sum() for v in jax.tree.leaves(enc))) > 0
    with pytest.raises(ValueError, match="needs its counts"):
        model.gamma_fn(params)(0.5)


def test_ambiguous_gamma_shapes_are_refused_not_guessed():
    from vdm.core import diffusion

    x = jnp.zeros((3, 4, 4, 1))
    with pytest.raises(ValueError, match="leading axes of x"):
        diffusion.bcast(jnp.zeros((4, 4, 1)), x)  # one example's shape: no batch axis
    with pytest.raises(ValueError, match="one per dimension"):
        elbo.weighted_sum(jnp.ones((4, 4, 1)), jnp.ones((3, 4, 4, 1)))
    sched, params = _conditional()
    with pytest.raises(ValueError, match="vmap over examples"):
        sched.apply(params, jnp.linspace(0, 1, 5), jnp.ones((2, 6)))


def test_dpm_solver_takes_a_first_order_step_where_one_dimension_stalls():
    """A dimension whose γ does not move between grid points (here γ₁ = γ₀: |w| = 0, which
    training can reach) must not turn the multistep correction into 0/0."""
    _, _, stalled = _schedule(
        (2,), a=[0.0, 0.0], b=[0.0, 0.0], c=[1.0, 1.0], gamma_0=[-10.0, -9.0], w=[18.0, 0.0]
    )
    x, _ = jax.jit(
        lambda k: samplers.sample(
            "dpm_solver_pp_2m", k, GMM.eps_hat, stalled, (64, 2), steps=20, grid="uniform_t"
        )
    )(jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(x)))
