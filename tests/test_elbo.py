"""The variational bound (vdm/core/elbo.py), pinned to analytic answers on Gaussian data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from vdm.core import diffusion as D
from vdm.core import elbo, schedules

MU, S = 0.3, 0.5  # x ~ N(μ, s²), one dimension
GAMMA_MIN, GAMMA_MAX = -10.0, 6.0


def _schedule(name, n_features=32, seed=0):
    module = schedules.make_schedule(
        name, gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX, n_features=n_features
    )
    params = module.init(jax.random.key(seed), jnp.zeros(()))
    return module, params


def eps_hat_gaussian(z, gamma):
    """E[ε | z_t] for x ~ N(μ, s²): the optimal denoiser, σ (z − αμ) / (α²s² + σ²)."""
    alpha, sigma = D.alpha_sigma(gamma[:, None])
    return sigma * (z - alpha * MU) / (alpha**2 * S**2 + sigma**2)


def expected_loss_at(gamma):
    """E‖ε − ε̂*‖² = Var(ε | z_t) = α²s² / (α²s² + σ²) = s² SNR / (s² SNR + 1)."""
    snr = np.exp(-gamma)
    return S**2 * snr / (S**2 * snr + 1.0)


def closed_form_continuous(g0, g1):
    """∫ ½ Var(ε | z) dγ = ½ [log(1 + s² e^{−γ₀}) − log(1 + s² e^{−γ₁})]."""
    return 0.5 * (np.log1p(S**2 * np.exp(-g0)) - np.log1p(S**2 * np.exp(-g1)))


def _draws(n, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = MU + S * jax.random.normal(k1, (n, 1))
    eps = jax.random.normal(k2, (n, 1))
    t = elbo.sample_t(k3, n, antithetic=True)
    return x, t, eps


def _mean_se(v):
    v = np.asarray(v, np.float64)
    return v.mean(), v.std(ddof=1) / math.sqrt(v.size)


@pytest.mark.parametrize("name", ["fixed_linear", "cosine"])
def test_continuous_loss_matches_quadrature(name):
    module, params = _schedule(name)
    gamma_fn = lambda t: module.apply(params, t)
    x, t, eps = _draws(200_000)
    loss = jax.jit(elbo.diffusion_loss_continuous, static_argnums=(3, 4))(
        x, t, eps, gamma_fn, eps_hat_gaussian
    )
    mean, se = _mean_se(loss)

    # Independent of the loss code: ∫ ½ γ′(t) Var(ε | z_t) dt by Simpson's rule in float64.
    t_grid = jnp.linspace(0.0, 1.0, 100_001)
    g = np.asarray(gamma_fn(t_grid), np.float64)
    dg = np.asarray(jax.vmap(jax.grad(gamma_fn))(t_grid), np.float64)
    ref = integrate.simpson(0.5 * dg * expected_loss_at(g), x=np.asarray(t_grid, np.float64))
    np.testing.assert_allclose(ref, closed_form_continuous(GAMMA_MIN, GAMMA_MAX), rtol=1e-3)
    assert abs(mean - ref) < 4 * se, (mean, se, ref)


def _exact_discrete(gamma_fn, T):
    i = np.arange(1, T + 1)
    g_t = np.asarray(gamma_fn(jnp.asarray(i / T, jnp.float32)), np.float64)
    g_s = np.asarray(gamma_fn(jnp.asarray((i - 1) / T, jnp.float32)), np.float64)
    return np.sum(0.5 * np.expm1(g_t - g_s) * expected_loss_at(g_t))


def test_discrete_loss_matches_exact_sum_and_approaches_continuous():
    module, params = _schedule("fixed_linear")
    gamma_fn = lambda t: module.apply(params, t)
    x, t, eps = _draws(200_000, seed=1)
    fn = jax.jit(elbo.diffusion_loss, static_argnums=(3, 4, 5))
    cont = closed_form_continuous(GAMMA_MIN, GAMMA_MAX)
    gaps = []
    for T in (10, 100, 1000):
        exact = _exact_discrete(gamma_fn, T)
        mean, se = _mean_se(fn(x, t, eps, gamma_fn, eps_hat_gaussian, T))
        assert abs(mean - exact) < 4 * se, (T, mean, se, exact)
        gaps.append(exact - cont)
    # More steps give a tighter bound (VDM eq. 16) that converges to L_∞.
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[2] < 1e-2 * gaps[0]


def _denoiser(z, gamma):
    """A fixed, non-optimal denoiser written as a function of (z, SNR) only."""
    log_snr = -gamma[:, None]
    return jnp.tanh(z * jax.nn.sigmoid(log_snr)) + 0.1 * jnp.sin(log_snr)


@pytest.mark.parametrize("other", ["cosine", "learned_net"])
def test_continuous_loss_invariant_to_schedule_shape(other):
    """Eq. 18: with equal endpoints, E[L_∞] does not depend on the path of γ between them."""
    x = MU + S * jax.random.normal(jax.random.key(3), (256, 2))
    eps = jax.random.normal(jax.random.key(4), (256, 2))
    t_grid = jnp.linspace(0.0, 1.0, 20_001)

    def expected_loss(gamma_fn):
        def at(t):
            tt = jnp.full((x.shape[0],), t)
            return jnp.mean(elbo.diffusion_loss_continuous(x, tt, eps, gamma_fn, _denoiser))

        vals = np.asarray(jax.lax.map(at, t_grid, batch_size=2000), np.float64)
        return integrate.simpson(vals, x=np.asarray(t_grid, np.float64))

    lin, lin_p = _schedule("fixed_linear")
    mod, p = _schedule(other, seed=5)
    if other == "learned_net":  # a strongly non-linear shape with the same endpoints
        p = jax.tree.map(lambda a: a, p)
        p["params"]["l2"]["kernel"] = 5.0 * jax.random.normal(jax.random.key(6), (1, 32))
        p["params"]["l3"]["kernel"] = 300.0 * jnp.ones((32, 1))
        assert np.abs(np.diff(np.asarray(mod.apply(p, t_grid)), 2)).max() > 1e-6
    ref = expected_loss(lambda t: lin.apply(lin_p, t))
    val = expected_loss(lambda t: mod.apply(p, t))
    np.testing.assert_allclose(val, ref, rtol=2e-3)


def test_recon_loss_is_the_exact_discrete_decoder():
    vocab, gamma_0 = 5, -1.5
    x_int = jnp.array([[0, 2, 4], [1, 3, 3]])
    eps_0 = jax.random.normal(jax.random.key(7), x_int.shape)
    enc = elbo.Encoding.bin_centres(vocab)
    f = elbo.encode(x_int, enc)
    z_0 = D.q_sample(f, jnp.full((2,), gamma_0), eps_0)
    alpha, sigma = (float(a) for a in D.alpha_sigma(jnp.asarray(gamma_0)))
    centres = (2 * np.arange(vocab) + 1) / vocab - 1
    dens = stats.norm.pdf(np.asarray(z_0)[..., None], alpha * centres, sigma)
    p = dens / dens.sum(-1, keepdims=True)
    ref = -np.log(np.take_along_axis(p, np.asarray(x_int)[..., None], -1)[..., 0]).sum(-1)
    got = elbo.recon_loss(x_int, eps_0, jnp.full((2,), gamma_0), enc)
    np.testing.assert_allclose(got, ref, rtol=1e-4)


@pytest.mark.parametrize(
    "encoding",
    [
        elbo.Encoding.bin_centres(256),
        elbo.Encoding.bin_centres(17),
        elbo.Encoding.standardize(256, [100.0, 120.0], [30.0, 50.0]),
    ],
    ids=["8bit", "17levels", "standardized"],
)
def test_recon_loss_value_and_gradient_equal_the_log_softmax_over_the_vocab(encoding):
    """The one-pass log-normaliser (closed-form max, moments for the derivative) gives the
    value and the gradient in γ₀ and ε₀ of log_softmax over every vocab value, at x."""
    enc = encoding
    channels = len(enc.shift)
    x_int = jax.random.randint(jax.random.key(1), (4, 3, 3, channels), 0, enc.vocab_size)
    eps_0 = jax.random.normal(jax.random.key(2), x_int.shape)

    def via_log_softmax(gamma_0, eps_0):
        z_0 = D.q_sample(elbo.encode(x_int, enc), gamma_0, eps_0)
        logp = elbo.decoder_logprobs(z_0, gamma_0, enc)
        return -jnp.take_along_axis(logp, x_int[..., None], -1).sum()

    def one_pass(gamma_0, eps_0):
        return elbo.recon_loss(x_int, eps_0, gamma_0, enc).sum()

    for gamma_0 in (-13.3, -6.0, 0.0, 3.0):
        g = jnp.float32(gamma_0)
        ref, got = via_log_softmax(g, eps_0), one_pass(g, eps_0)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
        ref_g = jax.grad(via_log_softmax, argnums=(0, 1))(g, eps_0)
        got_g = jax.grad(one_pass, argnums=(0, 1))(g, eps_0)
        np.testing.assert_allclose(got_g[0], ref_g[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_g[1], ref_g[1], rtol=1e-4, atol=1e-5)


def test_recon_and_prior_vanish_at_the_extremes():
    x_int = jax.random.randint(jax.random.key(8), (16, 4, 4, 3), 0, 256)
    eps_0 = jax.random.normal(jax.random.key(9), x_int.shape)
    enc = elbo.Encoding.bin_centres(256)
    recon = [float(elbo.recon_loss(x_int, eps_0, g, enc).mean()) for g in (-8.0, -13.0, -20.0)]
    assert recon[0] > recon[1] > recon[2] >= 0 and recon[2] < 1e-3
    f = elbo.encode(x_int, enc)
    prior = [float(elbo.prior_loss(f, g).mean()) for g in (2.0, 8.0, 20.0)]
    assert prior[0] > prior[1] > prior[2] >= 0 and prior[2] < 1e-3
    # The prior term is the analytic KL of N(α₁x, σ₁²) from N(0, 1).
    a2, s2 = jax.nn.sigmoid(-2.0), jax.nn.sigmoid(2.0)
    kl = 0.5 * (s2 + a2 * f**2 - 1 - jnp.log(s2))
    np.testing.assert_allclose(prior[0], float(kl.sum((1, 2, 3)).mean()), rtol=1e-5)


def _vm_problem(n_features=16):
    """A learned_net schedule, a small parametric denoiser, and fixed (x, t, ε)."""
    module, sp = _schedule("learned_net", n_features, seed=11)
    sp = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(12), a.shape), sp)
    net = {"w": jnp.array([0.7, -0.2]), "b": jnp.array([0.05, 0.1])}
    x, t, eps = _draws(64, seed=13)
    x, eps = jnp.tile(x, (1, 2)), jnp.concatenate([eps, -eps], 1)

    def eps_hat(net, z, gamma):
        return jnp.tanh(net["w"] * z) * jax.nn.sigmoid(gamma)[:, None] + net["b"]

    return module, sp, net, x, t, eps, eps_hat


def test_variance_min_gradient_is_grad_of_mean_square_for_shape():
    module, sp, net, x, t, eps, eps_hat = _vm_problem()

    def loss_vm(sp, net):
        g0, g1 = module.apply(sp, method="endpoints")
        shape_fn = lambda tt: module.apply(sp, tt, method="shape")
        fn = lambda z, g: eps_hat(net, z, g)
        return elbo.diffusion_loss_variance_min(x, t, eps, g0, g1, shape_fn, fn)

    def loss_plain(sp, net):
        gamma_fn = lambda tt: module.apply(sp, tt)
        return elbo.diffusion_loss_continuous(x, t, eps, gamma_fn, lambda z, g: eps_hat(net, z, g))

    np.testing.assert_allclose(loss_vm(sp, net), loss_plain(sp, net), rtol=1e-5)
    g_vm_s, g_vm_n = jax.jit(jax.grad(lambda a, b: loss_vm(a, b).mean(), (0, 1)))(sp, net)
    g_vlb_s, g_vlb_n = jax.grad(lambda a, b: loss_plain(a, b).mean(), (0, 1))(sp, net)
    g_sq_s = jax.grad(lambda a: jnp.mean(loss_plain(a, net) ** 2))(sp)

    shape_keys, end_keys = ("l1", "l2", "l3"), ("gamma_0", "gamma_1")
    for k in shape_keys:
        for a, b in zip(
            jax.tree.leaves(g_vm_s["params"][k]), jax.tree.leaves(g_sq_s["params"][k]), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for k in end_keys:
        np.testing.assert_allclose(g_vm_s["params"][k], g_vlb_s["params"][k], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_vm_n), jax.tree.leaves(g_vlb_n), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # The two estimators really differ for the shape (else the test would be vacuous).
    assert not np.allclose(g_vm_s["params"]["l2"]["kernel"], g_vlb_s["params"]["l2"]["kernel"])


def test_vlb_terms_under_jit_any_shape_and_bpd():
    module, params = _schedule("learned_net")
    x_int = jax.random.randint(jax.random.key(14), (8, 5, 3, 2), 0, 17)

    @jax.jit
    def run(params, key):
        gamma_fn = lambda t: module.apply(params, t)
        vm = (
            *module.apply(params, method="endpoints"),
            lambda t: module.apply(params, t, method="shape"),
        )
        enc, zero = elbo.Encoding.bin_centres(17), lambda z, g: jnp.zeros_like(z)
        plain = elbo.vlb_terms(key, x_int, gamma_fn, zero, encoding=enc)
        with_vm = elbo.vlb_terms(key, x_int, gamma_fn, zero, encoding=enc, variance_min=vm)
        return plain, with_vm

    plain, with_vm = run(params, jax.random.key(0))
    for k in ("recon", "prior", "diffusion"):
        assert plain[k].shape == (8,) and jnp.all(jnp.isfinite(plain[k]))
        np.testing.assert_allclose(plain[k], with_vm[k], rtol=1e-5)
    bpd = elbo.bpd_terms(plain, n_dims=30)
    total = plain["recon"] + plain["prior"] + plain["diffusion"]
    np.testing.assert_allclose(bpd["bpd"], total / (30 * math.log(2)), rtol=1e-6)
    np.testing.assert_allclose(elbo.to_bpd(jnp.asarray(30 * math.log(2)), 30), 1.0, rtol=1e-6)


def test_antithetic_time_is_evenly_spread():
    t = elbo.sample_t(jax.random.key(0), 16, antithetic=True)
    assert jnp.all((t >= 0) & (t < 1))
    np.testing.assert_allclose(np.sort(np.diff(np.sort(np.asarray(t)))), 1 / 16, atol=1e-6)


def test_antithetic_time_of_a_padded_batch_spreads_over_its_valid_examples():
    """A padded eval batch (5 real of 16) gets the 5-point grid t = (u + k/5) mod 1, and the
    mask reaches t through vlb_terms; a full mask leaves the 16-point grid unchanged."""
    key = jax.random.key(3)
    mask = jnp.array([1.0] * 5 + [0.0] * 11)
    t = np.asarray(elbo.sample_t(key, 16, antithetic=True, mask=mask))
    u = float(jax.random.uniform(key, ()))
    np.testing.assert_allclose(t[:5], np.mod(u + np.arange(5) / 5, 1.0), atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(elbo.sample_t(key, 16, antithetic=True, mask=jnp.ones(16))),
        np.asarray(elbo.sample_t(key, 16, antithetic=True)),
    )
    seen = []

    def eps_hat(z, gamma_t):
        seen.append(np.asarray(gamma_t))
        return jnp.zeros_like(z)

    elbo.vlb_terms(
        jax.random.key(4), jnp.zeros((16, 3), jnp.int32), lambda t: 2.0 * t - 1.0, eps_hat,
        encoding=elbo.Encoding.bin_centres(4), mask=mask,
    )  # fmt: skip
    k_t = jax.random.split(jax.random.key(4), 3)[0]
    t_valid = np.mod(float(jax.random.uniform(k_t, ())) + np.arange(5) / 5, 1.0)
    np.testing.assert_allclose(seen[0].ravel()[:5], 2.0 * t_valid - 1.0, atol=1e-6)


def test_variance_min_in_discrete_time_is_a_clear_error():
    x_int = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match="schedule.variance_min needs continuous time"):
        elbo.vlb_terms(
            jax.random.key(0),
            x_int,
            lambda t: t,
            lambda z, g: z,
            encoding=elbo.Encoding.bin_centres(4),
            n_timesteps=10,
            variance_min=(0.0, 1.0, lambda t: t),
        )
