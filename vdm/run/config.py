"""Config files and the checks on a config before anything runs.

Config files are found by path or, for the ones shipped in vdm/configs/, by name (`digits`);
`validate` raises one clear error naming the field and the allowed values.
"""

from __future__ import annotations

import os

import jax

from vdm import data, samplers, storage
from vdm.core import diffusion, elbo, objectives, schedules
from vdm.data import datasets
from vdm.eval import dequantization, likelihood
from vdm.networks import (
    DTYPES,
    FLAG_INPUTS,
    FOURIER_GATES,
    GAMMA_MAP_NETWORKS,
    NETWORKS,
    SCAN_BLOCKS,
)
from vdm.run import train_step

DECAYS = ("none", "cosine")


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def named_configs() -> list[str]:
    """The configs that ship with the package (vdm/configs/<name>.py)."""
    return sorted(
        f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_")
    )


def resolve(spec: str) -> str:
    """`path/to/config.py[:arg]` as given, or a shipped config's name (`digits[:arg]`) as the
    path of vdm/configs/<name>.py[:arg], so a run can start from any directory."""
    path, sep, arg = spec.partition(":")
    if path.endswith(".py") or os.sep in path or os.path.exists(path):
        if not os.path.isfile(path):
            what = "is a directory" if os.path.isdir(path) else "does not exist"
            raise ConfigError(
                f"--config={spec}: the config file {path} {what} (or name a shipped config: "
                f"{', '.join(named_configs())})"
            )
        if not os.access(path, os.R_OK):
            raise ConfigError(f"--config={spec}: the config file {path} cannot be read")
        return spec
    if path not in named_configs():
        raise ConfigError(
            f"--config={spec}: no config file {path!r} and no shipped config of that name "
            f"(shipped: {', '.join(named_configs())})"
        )
    return os.path.join(CONFIG_DIR, path + ".py") + sep + arg


def load_file(spec: str):
    """`path/to/config.py[:arg]` or `name[:arg]` → the config, as absl's config_flags would
    load it."""
    import importlib.util

    path, _, arg = resolve(spec).partition(":")
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
    """Raise ConfigError for the first bad value in `config`: names, then sizes, ranges,
    combinations of fields, and the batch sizes against the devices."""
    _check_names(config)
    _check_data_dir(config)
    _check_sizes(config)
    _check_ranges(config)
    _check_combinations(config)
    _check_devices(config, jax.device_count() if n_devices is None else n_devices)


def _check_data_dir(config) -> None:
    """The data's folder is a local one: a URL there is one line, never a local 'gs:' folder."""
    d = config.data.get("data_dir")
    if d and storage.is_url(str(d)):
        raise ConfigError(
            f"data.data_dir={d}: the data sets are read from a local folder (their archives are "
            "fetched and cached there); give a local path, or leave it unset for the default "
            "cache (a run directory may be gs://, data.data_dir may not)"
        )


def _check_multivariate(config) -> None:
    """What a schedule with a γ per data dimension cannot do (yet), each in one line."""
    what = f"schedule.name={config.schedule.name!r} (a γ per data dimension)"
    s = config.schedule
    if s.get("conditional", False):
        for field in ("latent_size", "latent_draws", "encoder_embd"):
            if not (isinstance(s[field], int) and s[field] >= 1):
                raise ConfigError(f"schedule.{field} must be a positive integer, got {s[field]!r}")
        if s.latent_size < 2:
            raise ConfigError(f"schedule.latent_size must be >= 2, got {s.latent_size}")
        if not s.latent_temperature > 0:
            raise ConfigError(
                f"schedule.latent_temperature must be > 0, got {s.latent_temperature}"
            )
        if not (isinstance(s.encoder_layers, int) and s.encoder_layers >= 0):
            raise ConfigError(
                f"schedule.encoder_layers must be an integer >= 0, got {s.encoder_layers!r}"
            )
    o = config.objective
    if objectives.is_weighted(o.weighting, o.noise_dist):
        raise ConfigError(
            f"{what} trains on the ELBO: objective.weighting and noise_dist weight a scalar λ; "
            f"set them to 'elbo' and 'uniform_t', got {o.weighting!r} and {o.noise_dist!r}"
        )
    if config.eval.pf_ode and s.get("conditional", False):
        raise ConfigError(
            "eval.pf_ode with schedule.conditional=True is not implemented (the PF-ODE bound "
            "would need the latent drawn per image); set eval.pf_ode=False"
        )
    if config.sample.grid != "uniform_t":
        raise ConfigError(
            f"{what} samples on the path γ(t): sample.grid must be 'uniform_t', got "
            f"{config.sample.grid!r}"
        )


def _check_names(config) -> None:
    """Every field that names a choice (dataset, schedule, head, network, sampler, …)."""
    if config.data.name in datasets.RETIRED:  # a name that meant another set: say which
        raise ConfigError(datasets.RETIRED[config.data.name])
    _choice(config.data.name, "data.name", data.DATASETS)
    try:
        data.check_vocab(config.data.name, config.data.vocab_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _choice(config.data.encoding, "data.encoding", elbo.ENCODINGS)
    _choice(config.schedule.name, "schedule.name", sorted(schedules.SCHEDULES))
    _choice(config.schedule.get("endpoints", "per_dim"), "schedule.endpoints", schedules.ENDPOINTS)
    _choice(config.model.head, "model.head", diffusion.HEADS)
    _choice(config.model.network, "model.network", sorted(NETWORKS))
    _choice(config.model.fourier_gate, "model.fourier_gate", FOURIER_GATES)
    _choice(config.model.get("flag_input", "embed"), "model.flag_input", FLAG_INPUTS)
    _choice(config.model.dtype, "model.dtype", list(DTYPES))
    if (
        config.model.get("gamma_map_input", False)
        and config.model.network not in GAMMA_MAP_NETWORKS
    ):
        raise ConfigError(
            f"model.gamma_map_input=True needs model.network in {list(GAMMA_MAP_NETWORKS)}, got "
            f"{config.model.network!r} (whose input has γ already)"
        )
    scan = config.model.get("scan_blocks", "auto")
    if not isinstance(scan, bool):
        _choice(str(scan).lower(), "model.scan_blocks", SCAN_BLOCKS)
    _choice(config.optimizer.decay, "optimizer.decay", DECAYS)
    _choice(config.training.loop, "training.loop", train_step.LOOPS)
    _choice(config.sample.sampler, "sample.sampler", sorted(samplers.SAMPLERS))
    _choice(config.sample.grid, "sample.grid", samplers.GRIDS)
    _choice(config.sample.solver, "sample.solver", sorted(samplers.SOLVERS))
    _choice(config.eval.pf_ode_trace, "eval.pf_ode_trace", likelihood.TRACES)
    _choice(config.eval.pf_ode_probe, "eval.pf_ode_probe", likelihood.PROBES)
    _choice(config.eval.dequantization, "eval.dequantization", dequantization.DEQUANTIZATIONS)
    _choice(config.eval.matmul_precision, "eval.matmul_precision", likelihood.MATMUL_PRECISIONS)
    _choice(config.eval.pf_ode_solver, "eval.pf_ode_solver", sorted(samplers.SOLVERS))
    _choice(config.eval.pf_ode_step_control, "eval.pf_ode_step_control", likelihood.STEP_CONTROLS)
    _choice(config.objective.weighting, "objective.weighting", sorted(objectives.WEIGHTINGS))
    _choice(config.objective.noise_dist, "objective.noise_dist", objectives.NOISE_DIST_NAMES)


_POSITIVE = (
    "data.vocab_size",
    "model.n_embd",
    "model.fourier_octaves",
    "training.batch_size",
    "training.steps_per_call",
    "training.log_every",
    "training.eval_every",
    "training.save_every",
    "training.max_to_keep",
    "eval.batch_size",
    "eval.repeats",
    "eval.pf_ode_batch_size",
    "eval.pf_ode_probes",
    "eval.importance_samples",
    "compress.steps",
    "compress.batch_size",
    "compress.range_stds",
    "objective.adaptive_bins",
    "optimizer.learning_rate",
    "sample.n_samples",
    "sample.batch_size",
)
_NON_NEGATIVE = (
    "model.n_timesteps",
    "model.n_layer",
    "training.num_steps",
    "eval.pf_ode_examples",
    "optimizer.weight_decay",
    "optimizer.grad_clip",
    "sample.n_corrector",
    "training.spike_factor",
)


def _field(config, name: str):
    section, key = name.split(".")
    return config[section][key]


def _check_sizes(config) -> None:
    """Counts, sizes and rates that must be > 0 (or ≥ 0)."""
    for name in _POSITIVE:
        _positive(_field(config, name), name)
    for name in _NON_NEGATIVE:
        _positive(_field(config, name), name, allow_zero=True)
    _positive(config.sample.steps, "sample.steps", allow_zero=config.sample.sampler == "pf_ode")
    if 0 < config.training.spike_factor <= 1:
        raise ConfigError(
            "training.spike_factor must be 0 (off) or > 1 (a multiple of the running median), "
            f"got {config.training.spike_factor}"
        )


def _check_ranges(config) -> None:
    """Fractions and intervals: decay rates, dropout, η, the schedule's γ range."""
    for name, low, high, closed in (
        ("sample.eta", 0.0, 1.0, True),
        ("optimizer.ema_decay", 0.0, 1.0, False),
        ("model.dropout", 0.0, 1.0, False),
        ("model.label_dropout", 0.0, 1.0, True),
        ("objective.adaptive_decay", 0.0, 1.0, False),
    ):
        v = _field(config, name)
        if not (low <= v <= high if closed else low <= v < high):
            interval = f"[{low:g}, {high:g}{']' if closed else ')'}"
            raise ConfigError(f"{name} must be in {interval}, got {v}")
    if not 0 <= config.compress.latent_bits <= 8:
        raise ConfigError(
            f"compress.latent_bits must be in [0, 8], got {config.compress.latent_bits}"
        )
    if not config.schedule.gamma_min < config.schedule.gamma_max:
        raise ConfigError(
            "schedule.gamma_min must be < schedule.gamma_max, got "
            f"{config.schedule.gamma_min} and {config.schedule.gamma_max}"
        )


def _check_combinations(config) -> None:
    """Fields that are each allowed but not together."""
    unused = samplers.unused_options(config.sample.sampler, dict(config.sample))
    if unused:
        k = unused[0]
        raise ConfigError(
            f"sample.{k}={config.sample[k]!r} is not an option of "
            f"sample.sampler={config.sample.sampler!r} (its options: "
            f"{', '.join(samplers.options_of(config.sample.sampler))})"
        )
    if not (config.eval.elbo or config.eval.pf_ode):
        raise ConfigError("eval.elbo and eval.pf_ode are both False: nothing to evaluate")
    e = config.eval
    if e.importance_samples > 1 and e.pf_ode_trace == "hutchinson":
        if e.pf_ode_probes < likelihood.MIN_PROBES_IW:
            raise ConfigError(
                f"eval.importance_samples={e.importance_samples} with Hutchinson's trace is "
                "biased (exp of a noisy log-density): set eval.pf_ode_trace='exact', or "
                f"eval.pf_ode_probes >= {likelihood.MIN_PROBES_IW}, got {e.pf_ode_probes}"
            )
    if config.sample.guidance and not config.model.class_conditional:
        raise ConfigError(
            "sample.guidance needs a class-conditional model (model.class_conditional=True), "
            f"got guidance={config.sample.guidance}"
        )
    if config.model.base_measure_skip and config.model.head != "eps":
        raise ConfigError(
            "model.base_measure_skip adds z to the output, the base measure of the ε head only; "
            f"set it False for model.head={config.model.head!r}"
        )
    if objectives.is_weighted(config.objective.weighting, config.objective.noise_dist):
        o = config.objective
        what = f"objective.weighting={o.weighting!r}, objective.noise_dist={o.noise_dist!r}"
        if config.model.n_timesteps != 0:
            raise ConfigError(
                f"{what} is a continuous-time loss: it needs model.n_timesteps=0, got "
                f"{config.model.n_timesteps}"
            )
        if config.schedule.variance_min:
            raise ConfigError(
                f"schedule.variance_min minimises the variance of the ELBO's estimator; with "
                f"{what} set it False"
            )
    if config.schedule.name in schedules.MULTIVARIATE:
        _check_multivariate(config)
    elif config.schedule.get("conditional", False):
        raise ConfigError(
            f"schedule.conditional=True needs schedule.name in {list(schedules.MULTIVARIATE)}, "
            f"got {config.schedule.name!r}"
        )
    elif config.schedule.get("endpoints", "per_dim") != "per_dim":
        raise ConfigError(
            f"schedule.endpoints applies to schedule.name in {list(schedules.MULTIVARIATE)}, "
            f"got {config.schedule.endpoints!r} with {config.schedule.name!r}"
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
    for field, off in (("dtype", "float32"), ("remat", False)):
        if config.model[field] != off and config.model.network != "unet":
            raise ConfigError(
                f"model.{field}={config.model[field]!r} is implemented for the ScoreUNet "
                f"(model.network='unet'), got model.network={config.model.network!r}"
            )
    scan = config.model.get("scan_blocks", "auto")
    if str(scan).lower() == "true" and config.model.network == "unet" and config.model.n_layer < 1:
        raise ConfigError(
            f"model.scan_blocks={scan!r} needs model.n_layer >= 1 (a stack to scan), got "
            f"{config.model.n_layer}"
        )
    if str(scan).lower() == "true" and config.model.network != "unet":
        raise ConfigError(
            f"model.scan_blocks={scan!r} is implemented for the ScoreUNet (model.network='unet'), "
            f"got model.network={config.model.network!r}"
        )
    if config.data.random_flip and config.model.network != "unet":
        raise ConfigError("data.random_flip needs image data (model.network='unet')")


def _check_devices(config, n_devices: int) -> None:
    """Batches split evenly over the devices."""
    for name in ("training.batch_size", "eval.batch_size"):
        if _field(config, name) % n_devices:
            raise ConfigError(
                f"{name} must be divisible by the number of devices ({n_devices}), got "
                f"{_field(config, name)}"
            )
