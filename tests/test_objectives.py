"""Weighted diffusion losses (vdm/objectives.py) against analytic answers for Gaussian data.

For x ∼ N(0, s² I) in D dimensions the optimal denoiser is ε̂*(z) = σ z / (α² s² + σ²), whose
error at log-SNR λ is E‖ε − ε̂*‖² = D · sigmoid(λ + log s²); so every weighted loss has the
value ½ D ∫ w(λ) sigmoid(λ + log s²) dλ over the schedule's λ range (for w = 1 in closed form:
½ D [softplus(λ + log s²)] between the ends), computed here with scipy's quad in float64.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from vdm import diffusion, elbo, objectives, schedules

S2, D, N = 0.25, 4, 20_000  # data variance, dimensions, Monte-Carlo draws
SCHED = schedules.make_schedule("fixed_linear", gamma_min=-8.0, gamma_max=6.0)


def gamma_fn(t):
    return SCHED.apply({}, t)


LAM_MIN, LAM_MAX = -6.0, 8.0  # −γ₁, −γ₀


def eps_star(z, gamma):
    alpha, sigma = diffusion.alpha_sigma(diffusion.bcast(gamma, z))
    return sigma * z / (alpha**2 * S2 + sigma**2)


def reference(name: str, shift: float = 0.0) -> float:
    w = objectives.WEIGHTINGS[name]

    def f(lam):  # w(λ) · E‖ε − ε̂*‖² / D at log-SNR λ
        return float(w(jnp.asarray(lam), shift)) / (1 + math.exp(-(lam + math.log(S2))))

    val, _ = integrate.quad(f, LAM_MIN, LAM_MAX, limit=200, points=[0.0, 2.4])
    return 0.5 * D * val


def _draws(seed, n=N):
    k_x, k_u, k_e = jax.random.split(jax.random.key(seed), 3)
    x = math.sqrt(S2) * jax.random.normal(k_x, (n, D))
    return x, jax.random.uniform(k_u, (n,)), jax.random.normal(k_e, (n, D))


def fit_hist(name, shift=0.0, bins=50, rounds=20):
    """The adaptive p(λ)'s histogram fitted online to the exact model, as training does."""
    hist = jnp.ones((bins,))
    parts = jax.jit(
        lambda x, u, e, h: objectives.weighted_diffusion_parts(
            x,
            u,
            e,
            gamma_fn,
            eps_star,
            weighting_name=name,
            weighting_shift=shift,
            noise="adaptive",
            hist=h,
        )
    )
    for r in range(rounds):
        _, lam, integrand = parts(*_draws(100 + r, 2_000), hist)
        sums, counts = objectives.bin_stats(lam, integrand, LAM_MIN, LAM_MAX, bins)
        hist = objectives.update_hist(hist, sums, counts, decay=0.5)
    return hist


def estimate(noise, name, shift=0.0, seed=0, with_var=False):
    hist = fit_hist(name, shift) if noise == "adaptive" else None
    fn = jax.jit(
        lambda x, u, e: objectives.weighted_diffusion_loss(
            x,
            u,
            e,
            gamma_fn,
            eps_star,
            weighting_name=name,
            weighting_shift=shift,
            noise=noise,
            hist=hist,
        )
    )
    loss = np.asarray(fn(*_draws(seed)), np.float64)
    if with_var:
        return loss.mean(), loss.std() / math.sqrt(N), loss.var()
    return loss.mean(), loss.std() / math.sqrt(N)


def test_elbo_reference_is_the_closed_form():
    c = math.log(S2)
    closed = 0.5 * D * (np.logaddexp(0, LAM_MAX + c) - np.logaddexp(0, LAM_MIN + c))
    np.testing.assert_allclose(reference("elbo"), closed, rtol=1e-8)


@pytest.mark.parametrize(
    "name,shift", [(n, 0.0) for n in objectives.WEIGHTINGS] + [("sigmoid", 2.0)]
)
def test_every_weighting_matches_its_integral(name, shift):
    mean, se = estimate("uniform_t", name, shift)
    ref = reference(name, shift)
    assert abs(mean - ref) < 4 * se + 1e-6, (name, mean, se, ref)


@pytest.mark.parametrize("noise", objectives.NOISE_DIST_NAMES)
def test_importance_sampling_under_every_noise_distribution_is_unbiased(noise):
    for name in ("elbo", "sigmoid", "edm"):
        mean, se = estimate(noise, name, seed=1)
        assert abs(mean - reference(name)) < 4 * se, (noise, name, mean, se, reference(name))


def test_elbo_weighting_with_uniform_t_is_the_continuous_elbo_value_and_gradient():
    sched = schedules.make_schedule("learned_net", gamma_min=-8.0, gamma_max=6.0, n_features=8)
    params = sched.init(jax.random.key(0), jnp.zeros(()))
    x = jax.random.normal(jax.random.key(1), (8, 3))
    t = jax.random.uniform(jax.random.key(2), (8,))
    eps = jax.random.normal(jax.random.key(3), (8, 3))
    eps_hat = lambda z, g: 0.3 * z + 0.1 * g[:, None]  # noqa: E731

    def ours(p):
        g = lambda tt: sched.apply(p, tt)  # noqa: E731
        return objectives.weighted_diffusion_loss(x, t, eps, g, eps_hat).sum()

    def vdm(p):
        g = lambda tt: sched.apply(p, tt)  # noqa: E731
        return elbo.diffusion_loss_continuous(x, t, eps, g, eps_hat).sum()

    np.testing.assert_array_equal(ours(params), vdm(params))
    ga, gb = jax.grad(ours)(params), jax.grad(vdm)(params)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_array_equal(a, b)


def test_monotone_flags_match_the_functions():
    lam = jnp.linspace(-12.0, 12.0, 2001)
    for name, fn in objectives.WEIGHTINGS.items():
        w = np.asarray(fn(lam, 0.0))
        non_increasing = bool(np.all(np.diff(w) <= 1e-12 * np.abs(w).max()))
        assert non_increasing == objectives.MONOTONE[name], name
        assert np.all(w >= 0), name


def test_noise_distributions_are_densities_with_matching_cdfs():
    for name in objectives.NOISE_DISTS:
        d = objectives.noise_dist(name, shift=0.5)
        total, _ = integrate.quad(lambda v, d=d: float(jnp.exp(d.log_pdf(v))), -60, 60, limit=200)
        np.testing.assert_allclose(total, 1.0, rtol=1e-5)
        q = jnp.array([0.01, 0.3, 0.5, 0.9])
        np.testing.assert_allclose(d.cdf(d.icdf(q)), q, atol=1e-5)


def test_bad_names_are_one_clear_error():
    with pytest.raises(ValueError, match="objective.weighting must be one of"):
        objectives.weighting("snr")
    with pytest.raises(ValueError, match="objective.noise_dist must be one of"):
        objectives.noise_dist("lognormal")


# ---- The objective as a training option (the `objective` config section). ----


def test_objective_terms_with_elbo_weighting_are_the_vlb_terms():
    """objective_terms draws its randomness as vlb_terms does: w = 1 with uniform t gives the
    same recon, prior and diffusion values for the same key."""
    net = lambda z, g: 0.3 * z  # noqa: E731
    x = jax.random.randint(jax.random.key(1), (6, 4, 4, 1), 0, 17)
    key = jax.random.key(2)
    a = objectives.objective_terms(key, x, gamma_fn, net, vocab_size=17)
    b = elbo.vlb_terms(key, x, gamma_fn, net, vocab_size=17)
    for k in ("recon", "prior", "diffusion"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
    c = objectives.objective_terms(
        key, x, gamma_fn, net, vocab_size=17, weighting_name="sigmoid", weighting_shift=2.0
    )
    np.testing.assert_allclose(c["recon"], b["recon"], rtol=1e-6)
    assert np.all(np.asarray(c["diffusion"]) < np.asarray(b["diffusion"]))  # sigmoid ≤ 1


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"objective.weighting": "sigmod"}, r"objective.weighting must be one of .*'sigmoid'"),
        ({"objective.noise_dist": "lognormal"}, r"objective.noise_dist must be one of .*'edm'"),
        (
            {"objective.weighting": "sigmoid", "model.n_timesteps": 100},
            r"continuous-time loss: it needs model.n_timesteps=0",
        ),
        (
            {"objective.noise_dist": "edm", "schedule.variance_min": True},
            r"schedule.variance_min .* set it False",
        ),
    ],
)
def test_objective_config_errors_name_the_field(overrides, match):
    from vdm.config import ConfigError, load_file, validate

    config = load_file("configs/digits.py:smoke")
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        config[section][field] = value
    with pytest.raises(ConfigError, match=match):
        validate(config)


def test_weighted_objective_trains_and_eval_reports_the_elbo(tmp_path):
    """A digits smoke run trained with sigmoid(b − λ) under EDM's p(λ): the train metrics
    are named `objective` (it is not a bound), the eval still reports the ELBO in bpd."""
    import json

    from vdm import train
    from vdm.config import load_file

    config = load_file("configs/digits.py:smoke")
    config.objective.weighting = "sigmoid"
    config.objective.weighting_shift = 2.0
    config.objective.noise_dist = "edm"
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert 0 < result["bpd"] < 30 and {"recon", "prior", "diffusion"} <= set(result)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in lines if "objective" in m]
    assert train_lines and all("bpd" not in m for m in train_lines)
    assert all(m["objective"] > 0 and "weighted_diffusion" in m for m in train_lines)


@pytest.mark.parametrize("name,shift", [("elbo", 0.0), ("sigmoid", 2.0), ("v_cosine", 0.0)])
def test_adaptive_noise_distribution_lowers_the_variance_and_stays_unbiased(name, shift):
    """K&G §5: p(λ) fitted online to the expected weighted loss. On a fixed (exact) model the
    estimator stays unbiased and its variance falls well below uniform t's."""
    ref = reference(name, shift)
    m_u, se_u, var_u = estimate("uniform_t", name, shift, seed=3, with_var=True)
    m_a, se_a, var_a = estimate("adaptive", name, shift, seed=3, with_var=True)
    assert abs(m_u - ref) < 4 * se_u and abs(m_a - ref) < 4 * se_a, (m_u, m_a, ref)
    assert var_a < 0.7 * var_u, (name, var_a, var_u)


def test_adaptive_histogram_follows_the_weighted_loss():
    """The fitted bins are ∝ E[w(λ)‖ε − ε̂*‖²] = w(λ) D sigmoid(λ + log s²) at the bins' λ."""
    bins = 50
    hist = np.asarray(fit_hist("elbo", bins=bins, rounds=40))
    centres = LAM_MIN + (np.arange(bins) + 0.5) * (LAM_MAX - LAM_MIN) / bins
    expected = D / (1 + np.exp(-(centres + math.log(S2))))
    np.testing.assert_allclose(hist, expected, rtol=0.25, atol=0.05 * D)


def test_adaptive_objective_trains_and_fits_its_histogram(tmp_path):
    from vdm import session, train, train_step
    from vdm.config import load_file

    config = load_file("configs/digits.py:smoke")
    config.objective.noise_dist = "adaptive"
    config.objective.adaptive_bins = 8
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert 0 < result["bpd"] < 30
    run = session.Run(config, str(tmp_path / "run"))
    hist = np.asarray(train_step.noise_hist(run.restore().opt_state))
    assert hist.shape == (8,) and np.all(hist > 0) and not np.allclose(hist, 1.0)
