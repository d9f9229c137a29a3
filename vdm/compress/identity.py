"""A model's identity as a .vdmz header records it: the hash of the config sections that
define p(x) (and the hashes files of earlier versions recorded), and the parameters' hash."""

from __future__ import annotations

import hashlib
import json

from vdm.core import schedules
from vdm.model import params_fingerprint  # noqa: F401 - part of a model's identity

# Schedule fields that only a γ per dimension reads (compress refuses those schedules): left
# out of the hash, so files coded before the fields existed keep their hash.
MULTIVARIATE_FIELDS = (
    "endpoints",
    "conditional",
    "latent_size",
    "latent_draws",
    "latent_temperature",
    "encoder_embd",
    "encoder_layers",
)


def config_hash(config) -> str:
    """Hash of the sections that define p(x): data, model, schedule.

    Without `model.scan_blocks` (how the network is executed, not which p(x) it is), with
    `data.data_dir` and `data.download` at their defaults and without `data.mirror` and
    `data.verify` (where this machine keeps the data, not which data), without
    `model.gamma_map_input` when it is off, without `model.flag_input` at 'embed', and,
    for a scalar schedule, without the fields only a γ per dimension reads
    (`MULTIVARIATE_FIELDS`): the hash of a config from before these fields existed, so
    earlier files keep theirs.
    """
    spec = _spec(config)
    # where this machine keeps the data is not what the model is of: at their defaults, so
    # that earlier files keep their hash
    spec["data"].update(data_dir="", download=False)
    return _hash(spec)


def earlier_config_hashes(config) -> set[str]:
    """The hashes files written before 2026-12-07 recorded for this config: `data.data_dir`
    and `data.download` (then part of the hash) as given now or at their defaults, and
    `data.name='imagenet32'` for what is now `imagenet32_chrabaszcz`."""
    spec, out = _spec(config), set()
    names = {spec["data"]["name"]}
    if spec["data"]["name"] == "imagenet32_chrabaszcz":
        names.add("imagenet32")
    for name in names:
        for data_dir in {"", config.data.get("data_dir", "")}:
            for download in (False, True):
                spec["data"].update(name=name, data_dir=data_dir, download=download)
                out.add(_hash(spec))
    return out


def _spec(config) -> dict:
    spec = {k: config[k].to_dict() for k in ("data", "model", "schedule")}
    for field in ("mirror", "verify"):  # fields newer than earlier files
        spec["data"].pop(field, None)
    spec["model"].pop("scan_blocks", None)
    if not spec["model"].get("gamma_map_input", False):  # a field newer than earlier files
        spec["model"].pop("gamma_map_input", None)
    if spec["model"].get("flag_input", "embed") == "embed":  # newer too, at its default
        spec["model"].pop("flag_input", None)
    if spec["schedule"].get("name") not in schedules.MULTIVARIATE:
        for field in MULTIVARIATE_FIELDS:
            spec["schedule"].pop(field, None)
    return spec


def _hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
