"""Checks on a config before anything runs: one clear error naming the field and the choices."""

from __future__ import annotations

import jax

from vdm import data, diffusion, elbo, samplers, schedules
from vdm.networks import FOURIER_GATES, NETWORKS

DECAYS = ("none", "cosine")


def load_file(spec: str):
    """`path/to/config.py[:arg]` → the config, as absl's config_flags would load it."""
    import importlib.util
    import os

    path, _, arg = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("vdm_config_file", os.path.abspath(path))
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.get_config(arg)


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the field and the choices."""


def _choice(value, field: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {list(allowed)}, got {value!r}")


def _positive(value, field: str, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ConfigError(f"{field} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def validate(config, n_devices: int | None = None) -> None:
    """Raise ConfigError for the first bad value in `config`."""
    _choice(config.data.name, "data.name", data.DATASETS)
    try:
        data.check_vocab(config.data.name, config.data.vocab_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _choice(config.data.encoding, "data.encoding", elbo.ENCODINGS)
    _choice(config.schedule.name, "schedule.name", sorted(schedules.SCHEDULES))
    _choice(config.model.head, "model.head", diffusion.HEADS)
    _choice(config.model.network, "model.network", sorted(NETWORKS))
    _choice(config.optimizer.decay, "optimizer.decay", DECAYS)
    _choice(config.sample.sampler, "sample.sampler", sorted(samplers.SAMPLERS))
    _choice(config.sample.grid, "sample.grid", samplers.GRIDS)
    unused = samplers.unused_options(config.sample.sampler, dict(config.sample))
    if unused:
        k = unused[0]
        raise ConfigError(
            f"sample.{k}={config.sample[k]!r} is not an option of "
            f"sample.sampler={config.sample.sampler!r} (its options: "
            f"{', '.join(samplers.options_of(config.sample.sampler))})"
        )
    _choice(config.sample.solver, "sample.solver", sorted(samplers.SOLVERS))
    _choice(config.eval.pf_ode_trace, "eval.pf_ode_trace", ["hutchinson", "exact"])
    _choice(config.eval.pf_ode_probe, "eval.pf_ode_probe", ["rademacher", "gaussian"])
    _choice(config.eval.pf_ode_solver, "eval.pf_ode_solver", sorted(samplers.SOLVERS))
    _positive(config.eval.repeats, "eval.repeats")
    _positive(config.eval.pf_ode_examples, "eval.pf_ode_examples", allow_zero=True)
    _positive(config.eval.pf_ode_batch_size, "eval.pf_ode_batch_size")
    if not (config.eval.elbo or config.eval.pf_ode):
        raise ConfigError("eval.elbo and eval.pf_ode are both False: nothing to evaluate")
    _positive(config.data.vocab_size, "data.vocab_size")
    _positive(config.model.n_timesteps, "model.n_timesteps", allow_zero=True)
    _positive(config.model.n_embd, "model.n_embd")
    _positive(config.model.n_layer, "model.n_layer", allow_zero=True)
    _positive(config.training.batch_size, "training.batch_size")
    _positive(config.training.num_steps, "training.num_steps", allow_zero=True)
    _positive(config.training.steps_per_call, "training.steps_per_call")
    _positive(config.training.log_every, "training.log_every")
    _positive(config.training.eval_every, "training.eval_every")
    _positive(config.training.save_every, "training.save_every")
    _positive(config.training.max_to_keep, "training.max_to_keep")
    _positive(config.eval.batch_size, "eval.batch_size")
    _positive(config.optimizer.learning_rate, "optimizer.learning_rate")
    _positive(config.optimizer.weight_decay, "optimizer.weight_decay", allow_zero=True)
    _positive(config.optimizer.grad_clip, "optimizer.grad_clip", allow_zero=True)
    _positive(config.sample.steps, "sample.steps", allow_zero=config.sample.sampler == "pf_ode")
    _positive(config.sample.n_samples, "sample.n_samples")
    _positive(config.sample.batch_size, "sample.batch_size")
    _positive(config.sample.n_corrector, "sample.n_corrector", allow_zero=True)
    if not 0.0 <= config.sample.eta <= 1.0:
        raise ConfigError(f"sample.eta must be in [0, 1], got {config.sample.eta}")
    if config.sample.guidance and not config.model.class_conditional:
        raise ConfigError(
            "sample.guidance needs a class-conditional model (model.class_conditional=True), "
            f"got guidance={config.sample.guidance}"
        )
    if not 0.0 <= config.optimizer.ema_decay < 1.0:
        raise ConfigError(
            f"optimizer.ema_decay must be in [0, 1), got {config.optimizer.ema_decay}"
        )
    if not 0.0 <= config.model.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {config.model.dropout}")
    if not 0.0 <= config.model.label_dropout <= 1.0:
        raise ConfigError(
            f"model.label_dropout must be in [0, 1], got {config.model.label_dropout}"
        )
    if not config.schedule.gamma_min < config.schedule.gamma_max:
        raise ConfigError(
            "schedule.gamma_min must be < schedule.gamma_max, got "
            f"{config.schedule.gamma_min} and {config.schedule.gamma_max}"
        )
    _positive(config.model.fourier_octaves, "model.fourier_octaves")
    _choice(config.model.fourier_gate, "model.fourier_gate", FOURIER_GATES)
    if config.model.base_measure_skip and config.model.head != "eps":
        raise ConfigError(
            "model.base_measure_skip adds z to the output, the base measure of the ε head only; "
            f"set it False for model.head={config.model.head!r}"
        )
    if config.schedule.variance_min:
        if config.schedule.name not in schedules.SEPARABLE:
            raise ConfigError(
                f"schedule.variance_min needs schedule.name in {list(schedules.SEPARABLE)}, "
                f"got {config.schedule.name!r}"
            )
        if config.model.n_timesteps != 0:
            raise ConfigError(
                "schedule.variance_min needs continuous time, model.n_timesteps=0, got "
                f"{config.model.n_timesteps}"
            )
    if config.data.random_flip and config.model.network != "unet":
        raise ConfigError("data.random_flip needs image data (model.network='unet')")
    n_devices = jax.device_count() if n_devices is None else n_devices
    for field in ("training.batch_size", "eval.batch_size"):
        section, name = field.split(".")
        if config[section][name] % n_devices:
            raise ConfigError(
                f"{field} must be divisible by the number of devices ({n_devices}), got "
                f"{config[section][name]}"
            )
