"""A VDM: schedule γ_η(t) + denoiser, as pure functions of a parameter pytree.

params = {"schedule": …, "net": …}. The Flax modules are only used through `apply`, so the
bound in `vdm/core/elbo.py` sees plain closures `gamma_fn(t)` and `eps_hat_fn(z, γ)` that jax
transformations (jvp, grad, custom_vjp) act on directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm.core import diffusion, elbo, latent, objectives, schedules
from vdm.networks import make_network
from vdm.networks.conditional_schedule import ConditionalMultivariate

Params = Any


@dataclasses.dataclass(frozen=True)
class VDM:
    """Model definition for one config: call its methods with a parameter pytree."""

    schedule: nn.Module
    network: nn.Module
    head: str
    encoding: elbo.Encoding
    n_timesteps: int
    antithetic_time: bool
    variance_min: bool
    num_classes: int
    label_dropout: float
    objective: objectives.Objective = objectives.Objective()

    @classmethod
    def from_config(
        cls,
        config,
        num_classes: int = 0,
        n_cond_flags: int = 0,
        encoding: elbo.Encoding | None = None,
        data_shape: tuple[int, ...] | None = None,
    ) -> VDM:
        """The model of `config`; `encoding` defaults to the bin centres of data.vocab_size
        (data.encoding='standardize' needs the training split's statistics: pass
        `elbo.make_encoding(name, vocab_size, mean, std)`, as `vdm.run.session.Run` does).
        `data_shape`, one example's shape, is needed by a schedule with a γ per dimension."""
        s = config.schedule
        schedule = schedules.make_schedule(
            s.name,
            gamma_min=s.gamma_min,
            gamma_max=s.gamma_max,
            n_features=s.n_features,
            event_shape=data_shape,
            endpoints=s.get("endpoints", "per_dim"),
        )
        if s.get("conditional", False):
            schedule = conditional_schedule(s, data_shape)
        num_classes = num_classes if config.model.class_conditional else 0
        return cls(
            schedule=schedule,
            network=make_network(
                config.model, s, config.data.vocab_size, num_classes, n_cond_flags
            ),
            head=diffusion.check_head(config.model.head),
            encoding=encoding or elbo.Encoding.bin_centres(config.data.vocab_size),
            n_timesteps=config.model.n_timesteps,
            antithetic_time=config.model.antithetic_time,
            variance_min=s.variance_min,
            num_classes=num_classes,
            label_dropout=config.model.label_dropout,
            objective=objectives.Objective.from_config(config.objective),
        )

    @property
    def vocab_size(self) -> int:
        return self.encoding.vocab_size

    @property
    def multivariate(self) -> bool:
        """Whether γ(t) has one value per data dimension (MuLAN): the denoiser then sees the
        map of γ_t over the data as well as its mean."""
        return isinstance(self.schedule, (schedules.LearnedMultivariate, ConditionalMultivariate))

    @property
    def conditional(self) -> bool:
        """Whether γ depends on the data through an auxiliary latent c (`vdm.core.latent`):
        the bound then has a fourth term, 'latent', KL(q(c | x) ‖ p(c))."""
        return isinstance(self.schedule, ConditionalMultivariate)

    def init(self, key: jax.Array, x_shape: tuple[int, ...]) -> Params:
        """Parameters for data of per-example shape `x_shape`."""
        k_s, k_n = jax.random.split(key)
        z = jnp.zeros((1, *x_shape))
        if self.multivariate and tuple(self.schedule.event_shape) != tuple(x_shape):
            raise ValueError(
                f"the schedule has one γ per dimension of shape {self.schedule.event_shape}, "
                f"the data {tuple(x_shape)}: build the model with data_shape={tuple(x_shape)}"
            )
        gamma = jnp.zeros(z.shape if self.multivariate else (1,))
        if self.conditional:
            schedule = self.schedule.init(k_s, jnp.zeros(()), z, method="init_all")
        else:
            schedule = self.schedule.init(k_s, jnp.zeros(()))
        return {
            "schedule": schedule.get("params", {}),
            "net": self.network.init(k_n, z, gamma)["params"],
        }

    @property
    def group_norm(self) -> str | None:
        """The form of the network's GroupNorm (`vdm.networks.unet.group_norm`), None for a
        network without one: ε̂ depends on its float32 roundings, so a .vdmz header records it."""
        return getattr(self.network, "group_norm", None)

    def with_group_norm(self, form: str | None) -> VDM:
        """This model with its network's GroupNorm in `form`: the same parameters."""
        if form is None or form == self.group_norm:
            return self
        return dataclasses.replace(self, network=self.network.clone(group_norm=form))

    def stored_params(self, params: Params) -> Params:
        """Parameters as checkpoints hold them: the network's in `stored_form`."""
        return {**params, "net": stored_form(self.network, params["net"])}

    def applied_params(self, params: Params) -> Params:
        """Stored parameters (`stored_params`) in the form this model applies."""
        return {**params, "net": apply_form(self.network, params["net"])}

    def gamma_fn(self, params: Params, latent: jax.Array | None = None):
        """t ↦ γ_t; an input-conditional schedule also needs the latent counts c (…, n)."""
        p = {"params": params["schedule"]}
        if not self.conditional:
            return lambda t: self.schedule.apply(p, t)
        if latent is None:
            raise ValueError(
                "this schedule depends on an auxiliary latent (schedule.conditional=True): "
                "gamma_fn needs its counts, from VDM.latent_posterior or VDM.latent_prior"
            )
        return lambda t: self.schedule.apply(p, t, latent)

    def latent_prior(self, key: jax.Array, n: int, offset=0) -> jax.Array:
        """Latent counts c ~ p(c) for examples offset … offset + n − 1 (one key each, as
        the samplers' noise): shape (n, n_latent)."""
        s = self.schedule
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(n))
        return jax.vmap(lambda k: latent.prior_counts(k, (), s.n_latent, s.n_draws))(keys)

    def latent_posterior(self, params: Params, key: jax.Array, x_int: jax.Array):
        """(c ~ q(c | x), KL(q(c | x) ‖ p(c)) in nats), per example of the batch x_int."""
        s, p = self.schedule, {"params": params["schedule"]}
        logits = s.apply(p, self.encoding.encode(x_int), method="logits")
        counts = latent.draw_counts(key, logits, s.n_draws, s.temperature)
        return counts, latent.kl_uniform(logits, s.n_draws)

    def eps_hat_fn(self, params: Params, label=None, flags=None, train=False, rng=None):
        """z, γ_t ↦ ε̂(z_t; t), converting the network's head through vdm/core/diffusion.py."""
        rngs = {"dropout": rng} if (train and rng is not None) else {}

        def eps_hat(z, gamma_t):
            # one γ per example, or per dimension (multivariate: the data's shape)
            gamma_t = jnp.asarray(gamma_t)
            if self.multivariate and gamma_t.shape not in (z.shape, z.shape[1:]):
                raise ValueError(
                    f"a γ per dimension must have the shape of z {z.shape} or of one example "
                    f"{z.shape[1:]}, got {gamma_t.shape}"
                )
            gamma_t = jnp.broadcast_to(gamma_t, z.shape if self.multivariate else z.shape[:1])
            out = self.network.apply(
                {"params": params["net"]}, z, gamma_t, label, flags, train=train, rngs=rngs
            )
            return diffusion.to_eps(self.head, z, out, gamma_t)

        return eps_hat

    def endpoints(self, params: Params) -> tuple[jax.Array, jax.Array]:
        """(γ(0), γ(1)): scalars, or arrays of the data's shape for a multivariate γ."""
        if self.conditional:  # the same for every latent
            return self.schedule.apply({"params": params["schedule"]}, method="endpoints")
        gamma_fn = self.gamma_fn(params)
        return gamma_fn(jnp.zeros(())), gamma_fn(jnp.ones(()))

    @property
    def weighted(self) -> bool:
        """Whether training uses a weighted diffusion loss rather than the ELBO."""
        return self.objective.weighted

    def _conditioning(self, key, batch: dict, train: bool):
        """(label, flags) of a batch, labels dropped to the null class at train time."""
        label = batch.get("label") if self.num_classes else None
        if label is not None and train and self.label_dropout > 0:
            drop = jax.random.bernoulli(key, self.label_dropout, label.shape)
            label = jnp.where(drop, self.num_classes, label)
        flags = batch["flip"][:, None] if "flip" in batch else None
        return label, flags

    def train_terms(self, params: Params, key: jax.Array, batch: dict, hist=None, stats=False):
        """(terms, stats): per-example training terms in nats — the VLB's, or with a weighted
        objective (Kingma & Gao 2023) recon, prior and the weighted diffusion loss L_w — and,
        with `stats`, what the adaptive p(λ) (histogram `hist`) is fitted to."""
        if not self.weighted:
            return self.vlb_terms(params, key, batch, train=True), None
        k_obj, k_drop, k_label = jax.random.split(key, 3)
        label, flags = self._conditioning(k_label, batch, True)
        terms, fit = objectives.objective_terms(
            k_obj,
            batch["image"],
            self.gamma_fn(params),
            self.eps_hat_fn(params, label, flags, True, k_drop),
            encoding=self.encoding,
            objective=self.objective,
            antithetic_time=self.antithetic_time,
            hist=hist,
            stats=True,
        )
        return terms, (fit if stats else None)

    def vlb_terms(self, params: Params, key: jax.Array, batch: dict, train: bool = False):
        """Per-example VLB terms in nats for a batch {'image': int, 'label'?, 'flip'?}."""
        k_vlb, k_drop, k_label = jax.random.split(key, 3)
        x = batch["image"]
        label, flags = self._conditioning(k_label, batch, train)
        gamma_fn, kl = self.gamma_fn, None
        if self.conditional:  # c ~ q(c | x), and its KL to the prior as a fourth term
            counts, kl = self.latent_posterior(params, jax.random.fold_in(key, LATENT_STREAM), x)
            gamma_fn = lambda p: self.gamma_fn(p, counts)  # noqa: E731
        vm = None
        if self.variance_min:
            p = {"params": params["schedule"]}
            vm = (
                *self.schedule.apply(p, method="endpoints"),
                lambda t: self.schedule.apply(p, t, method="shape"),
            )
        terms = elbo.vlb_terms(
            k_vlb,
            x,
            gamma_fn(params),
            self.eps_hat_fn(params, label, flags, train, k_drop),
            encoding=self.encoding,
            n_timesteps=self.n_timesteps,
            antithetic_time=self.antithetic_time,
            variance_min=vm,
            mask=batch.get("mask"),
        )
        if kl is not None:
            terms["latent"] = kl
        return terms


# fold_in(key, ·) for the latent's draw: apart from the bound's own splits and from every
# example's sampler key (fold_in(key, example index), `samplers.example_keys`), so no sample
# index below 2³¹ − 1 shares a stream with the latents
LATENT_STREAM = 2**31 - 1


def conditional_schedule(s, data_shape) -> ConditionalMultivariate:
    """The input-conditional schedule of the config's `schedule` section."""
    if data_shape is None:
        raise ValueError(
            "schedule.conditional=True has one γ per data dimension: VDM.from_config needs "
            "data_shape"
        )
    return ConditionalMultivariate(
        s.gamma_min,
        s.gamma_max,
        tuple(data_shape),
        s.get("endpoints", "per_dim"),
        n_latent=s.latent_size,
        n_draws=s.latent_draws,
        temperature=s.latent_temperature,
        n_embd=s.encoder_embd,
        n_layer=s.encoder_layers,
    )


def stored_form(network: nn.Module, net_params: Params) -> Params:
    """A network's parameters as checkpoints hold them, whatever form it applies (the
    ScoreUNet's `scan_blocks` stacks its blocks; checkpoints keep them unrolled, so a run
    restores under either setting, on any backend)."""
    convert = getattr(network, "to_stored_form", None)
    return convert(net_params) if convert else net_params


def apply_form(network: nn.Module, net_params: Params) -> Params:
    """Stored parameters in the form `network.init` makes and `network.apply` takes (the
    inverse of `stored_form`)."""
    convert = getattr(network, "to_apply_form", None)
    return convert(net_params) if convert else net_params


def count_params(params: Params) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def params_fingerprint(params: Params) -> str:
    """Hash of every parameter's bytes: two checkpoints agree only if their weights do."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]
