"""`vdm import --from=google-research/vdm SRC --workdir=DIR`: a released checkpoint as a workdir.

The workdir it writes is an ordinary run: `config.json` (the settings the official model was
trained with, its architecture read from the file), `checkpoints/<step>/` (orbax, the stored
form of this project's train state: parameters, EMA parameters, and the optimizer state where
AdamW's moments map) and `import.json` (where it came from: file, size, SHA-256, official step,
model, what was mapped or dropped). Every mode then reads it as its own run.

The workdir is written in a hidden folder beside its final path (`.DIR.importing-*`) and
renamed into place at the end: an import that fails or is stopped leaves nothing (a killed
one may leave that folder, which can be deleted), and an existing run is never touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid

import numpy as np

from vdm import storage
from vdm.importers import google_vdm, remote
from vdm.importers.flax_msgpack import CheckpointImportError, find_checkpoint, read_tree

OFFICIAL_GAMMA_RANGE = (-13.3, 5.0)  # gamma_min, gamma_max of every official config
BUCKET = "https://storage.googleapis.com/gresearch/vdm"


@dataclasses.dataclass(frozen=True)
class Released:
    """A checkpoint google-research/vdm released, and the config it was trained with."""

    name: str
    url: str  # the clu directory (host 0), over HTTPS
    official_bpd: float  # test bpd its README reports for it
    model: dict  # OfficialModel fields that identify it
    config: str  # this project's config of the same training settings
    overrides: dict  # fields where the official config differs from `config`
    notes: tuple[str, ...] = ()


RELEASED = (
    Released(
        name="cifar10",
        url=f"{BUCKET}/cifar10/checkpoint-final/checkpoints-0",
        official_bpd=2.637,
        model=dict(n_embd=128, n_layer=32, with_attention=False, gamma_type="learnable_scalar"),
        config="cifar10",
        overrides={},
    ),
    Released(
        name="cifar10_aug",
        url=f"{BUCKET}/cifar10/aug-checkpoint-final/checkpoints-0",
        official_bpd=2.522,
        model=dict(n_embd=256, n_layer=32, with_attention=False, gamma_type="learnable_nnet"),
        config="cifar10_aug",
        overrides={
            "model.dropout": 0.05,
            "optimizer.learning_rate": 1e-4,
            "training.batch_size": 768,
        },
        notes=(
            "the official aug model's flag is 1 for a flip or a 90° rotation (dataset.py "
            "cifar10_aug); this project's data.random_flip draws flips only: exact for eval "
            "(flag 0), a different augmentation if training continues",
        ),
    ),
)


def released_match(m: google_vdm.OfficialModel) -> Released | None:
    """The released model whose sizes and schedule `m` has, if any."""
    for r in RELEASED:
        if all(getattr(m, k) == v for k, v in r.model.items()):
            return r
    return None


def architecture(m: google_vdm.OfficialModel, random_flip: bool) -> dict:
    """The config fields the checkpoint fixes: {dotted field: value}."""
    fields = {
        "data.vocab_size": 256,
        "data.encoding": "bin_centres",
        "model.network": "unet",
        "model.head": "eps",
        "model.base_measure_skip": True,
        "model.n_embd": m.n_embd,
        "model.n_layer": m.n_layer,
        "model.with_attention": m.with_attention,
        "model.fourier_features": m.fourier,
        "model.fourier_octaves": 2,
        "model.fourier_gate": "none",
        "model.gamma_map_input": False,
        "model.class_conditional": False,
        "model.n_timesteps": 0,
        "schedule.name": google_vdm.SCHEDULES[m.gamma_type],
        "schedule.conditional": False,
        "schedule.gamma_min": OFFICIAL_GAMMA_RANGE[0],
        "schedule.gamma_max": OFFICIAL_GAMMA_RANGE[1],
    }
    if m.gamma_type == "learnable_nnet":
        fields["schedule.n_features"] = m.n_features
    if random_flip:
        fields["model.flag_input"] = "concat"
    return fields


def _get(config, dotted: str):
    node = config
    for k in dotted.split("."):
        node = node.get(k) if hasattr(node, "get") else None
    return node


def _set(config, dotted: str, value) -> None:
    *path, leaf = dotted.split(".")
    node = config
    for k in path:
        node = node[k]
    with node.unlocked():
        node[leaf] = value


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-9 * abs(b)
    return a == b


def make_config(m: google_vdm.OfficialModel, config=None):
    """The run's config: `config` (checked against the file: one line naming the fields that
    differ) or else the released model's config, or cifar10's with the file's sizes."""
    import importlib

    released = released_match(m)
    if config is None:
        if released is not None:
            config = importlib.import_module(f"vdm.configs.{released.config}").get_config()
            for field, value in released.overrides.items():
                _set(config, field, value)
        else:
            config = importlib.import_module("vdm.configs.cifar10").get_config()
            config.data.random_flip = False
        for field, value in architecture(m, bool(config.data.random_flip)).items():
            _set(config, field, value)
    else:
        fixed = architecture(m, bool(config.data.random_flip))
        wrong = [
            f"{k} {_get(config, k)!r} (the checkpoint's {v!r})"
            for k, v in fixed.items()
            if not _same(_get(config, k), v)
        ]
        if wrong:
            raise CheckpointImportError(
                f"--config does not describe the checkpoint ({m.describe()}): "
                + ", ".join(wrong[:4])
                + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else "")
                + "; override them (--config.a.b=value) or leave --config out"
            )
    _check_channels(config, m)
    return config, released


def _check_channels(config, m: google_vdm.OfficialModel) -> None:
    from vdm.data.sources import SOURCES

    source = SOURCES.get(config.data.name)
    if source is not None and source.shape[-1] != m.channels:
        raise CheckpointImportError(
            f"data.name {config.data.name!r} has {source.shape[-1]} channels; the "
            f"checkpoint's model has {m.channels}"
        )


class _HashingReader:
    """A binary file whose bytes are hashed (SHA-256) as they are read."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.sha.update(b)
        return b


def import_checkpoint(
    src: str, workdir: str, config=None, log=print, cache: str | None = None
) -> dict:
    """Import google-research/vdm's checkpoint `src` (clu directory or `ckpt-N.flax`, local or
    a gs:// or http(s) URL, fetched into `cache`: `remote.fetch_checkpoint`) into a new
    workdir; returns the import record (also written as `workdir/import.json`)."""
    if storage.is_url(workdir):
        return _import_to_cloud(src, storage.abspath(workdir), config, log, cache)
    target = os.path.abspath(workdir)
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise _exists(workdir)
    parent = os.path.dirname(target)
    try:  # before any download: a workdir that cannot be written is the first line
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target)}.importing-")
    except OSError as e:
        raise CheckpointImportError(
            f"--workdir={workdir}: cannot write in {parent} ({e.strerror or e})"
        ) from None
    try:  # only the staging folder made here is ever removed
        record = _import_into(staging, src, config, log, cache)
        if os.path.isdir(target) and not os.path.islink(target):
            os.rmdir(target)  # empty (checked above); a run written since then stops the rename
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def _exists(workdir: str) -> CheckpointImportError:
    return CheckpointImportError(
        f"--workdir={workdir} already exists and is not empty: an import writes a new "
        "run and never overwrites one; give a new --workdir"
    )


def _import_to_cloud(src: str, target: str, config, log, cache) -> dict:
    """The import into a gs:// workdir: written under a hidden prefix beside it (orbax commits
    there as on any bucket), then moved into place, every object copied before any is
    deleted; an import stopped midway leaves only the hidden prefix."""
    if storage.listdir(target):
        raise _exists(target)
    name = target.rsplit("/", 1)[1]
    staging = storage.join(storage.dirname(target), f".{name}.importing-{uuid.uuid4().hex[:8]}")
    try:
        record = _import_into(staging, src, config, log, cache)
    except BaseException:
        storage.remove_tree(staging)  # only the prefix made here, whatever stopped it
        raise
    if storage.listdir(target):  # a run written meanwhile: keep both, say where this one is
        raise CheckpointImportError(f"{_exists(target)} (this import is in {staging})")
    storage.move_tree(staging, target)
    return record


def _import_into(staging: str, src: str, config, log, cache) -> dict:
    url = src if remote.is_remote(src) else None
    path = remote.fetch_checkpoint(src, cache, log) if url else find_checkpoint(src)
    size = os.path.getsize(path)
    log(f"reading {path} ({size / 2**20:,.1f} MiB)")
    start = time.time()
    try:
        with open(path, "rb") as f:
            reader = _HashingReader(f)
            tree = read_tree(path, reader)
            reader.sha.update(f.read())  # anything after the map (read_tree checked: nothing)
        _check_state(path, tree)
    except CheckpointImportError as e:
        if url:  # not what a checkpoint is: fetched again next time, not read from the cache
            os.remove(path)
            raise CheckpointImportError(f"{e} (removed from the cache: {url})") from None
        raise
    m = google_vdm.describe(tree["params"])
    log(f"the checkpoint's model: {m.describe()}")
    config, released = make_config(m, config)
    keep_flag = bool(config.data.random_flip)
    pmap = google_vdm.parameter_map(m, keep_flag=keep_flag)
    google_vdm.check_tree(tree["params"], pmap, "params")
    google_vdm.check_tree(tree["ema_params"], pmap, "ema_params")
    step = int(np.asarray(tree["step"]))
    adam = google_vdm.adam_moments(tree.get("opt_state"))
    if adam is not None:
        google_vdm.check_tree(adam["mu"], pmap, "opt_state's Adam mu")
        google_vdm.check_tree(adam["nu"], pmap, "opt_state's Adam nu")
    record = _write(staging, tree, pmap, adam, step, config, m, released, keep_flag)
    record.update(
        source=google_vdm.SOURCE,
        url=url,
        file=os.path.abspath(path),
        bytes=size,
        sha256=reader.sha.hexdigest(),
        seconds=round(time.time() - start, 1),
    )
    from vdm.run import workdir as workdir_lib

    workdir_lib.write_atomic(
        storage.join(staging, "import.json"), json.dumps(record, indent=2, default=str)
    )
    return record


def _check_state(path: str, tree: dict) -> None:
    """The train state's top level: step (an integer), params and ema_params (maps)."""
    names = sorted(map(str, tree))
    missing = [k for k in ("step", "params", "ema_params") if k not in tree]
    if missing:
        raise CheckpointImportError(
            f"{path} is not a {google_vdm.SOURCE} train state: no {', '.join(missing)} "
            f"(found {names[:6]})"
        )
    for k in ("params", "ema_params"):
        if not isinstance(tree[k], dict):
            raise CheckpointImportError(
                f"{path}: its {k} is a {type(tree[k]).__name__}, not a map of parameters"
            )
    if np.ndim(tree["step"]) or not np.issubdtype(np.asarray(tree["step"]).dtype, np.integer):
        raise CheckpointImportError(f"{path}: its step {tree['step']!r} is not an integer")


def _write(staging, tree, pmap, adam, step, config, m, released, keep_flag) -> dict:
    """Convert and save the state under `staging`; the import record."""
    import jax
    import jax.numpy as jnp
    import optax

    from vdm import sharding
    from vdm.model import VDM
    from vdm.run import checkpoint, train_step
    from vdm.run import config as config_lib
    from vdm.run import workdir as workdir_lib

    config_lib.validate(config)
    from vdm.data.sources import SOURCES

    shape = SOURCES[config.data.name].shape if config.data.name in SOURCES else (32, 32, 3)
    model = VDM.from_config(config, 0, n_cond_flags=int(config.data.random_flip), data_shape=shape)
    optimizer = train_step.make_optimizer(
        config.optimizer, config.training.num_steps, config.objective
    )
    abstract = jax.eval_shape(
        lambda k: train_step.stored_state(model, train_step.init_state(model, optimizer, k, shape)),
        jax.random.key(0),
    )

    rep = sharding.replicated(sharding.make_mesh())

    def to_device(params: dict) -> dict:
        """numpy → replicated jax arrays, each numpy array (a view of the file's record)
        dropped as soon as it is on the device: the two forms are never both whole."""
        out = {}
        for k in list(params):
            v = params.pop(k)
            out[k] = to_device(v) if isinstance(v, dict) else jax.device_put(v, rep)
        return out

    def converted(official: dict, name: str) -> dict:
        out = to_device(google_vdm.convert(official, pmap, release=True))
        _check_like(out, abstract.params, name)
        return out

    params = converted(tree.pop("params"), "params")
    ema = converted(tree.pop("ema_params"), "ema_params")
    moments = "fresh (the checkpoint holds no Adam moments)"
    if adam is not None:
        mu, nu = converted(adam["mu"], "Adam mu"), converted(adam["nu"], "Adam nu")
        count = int(np.asarray(adam["count"]))
        moments = f"Adam mu, nu and count ({count}) imported"
    tree.clear()

    def fill(node):
        """The abstract optimizer state with the official moments and the step put in."""
        if isinstance(node, optax.ScaleByAdamState) and adam is not None:
            return node._replace(count=jnp.asarray(count, node.count.dtype), mu=mu, nu=nu)
        if isinstance(node, optax.ScaleByScheduleState):
            return node._replace(count=jnp.asarray(step, node.count.dtype))
        if isinstance(node, jax.ShapeDtypeStruct):
            return jax.device_put(jnp.zeros(node.shape, node.dtype), rep)
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(fill(v) for v in node))
        if isinstance(node, tuple | list):
            return type(node)(fill(v) for v in node)
        return node

    state = train_step.TrainState(
        step=jnp.asarray(step, abstract.step.dtype),
        params=params,
        ema_params=ema,
        opt_state=fill(abstract.opt_state),  # without Adam moments: zeros, a fresh AdamW
    )
    _check_like(state, abstract, "train state")
    ckpt = checkpoint.Checkpointer(storage.join(staging, "checkpoints"), 1)
    try:
        ckpt.save(step, state)
        ckpt.wait()
    finally:
        ckpt.close()
    workdir_lib.record_config(staging, config, step, {"import": [None, google_vdm.SOURCE]})
    dropped = (
        "none"
        if keep_flag or m.cond_inputs == 0
        else f"dense0's last {m.cond_inputs} input row (the conditioning's; exact for "
        "conditioning 0, as the official eval uses)"
    )
    n_params = sum(int(np.prod(s)) for s, _, _ in pmap.values())
    return {
        "official_step": step,
        "model": m.describe(),
        "official_model": dataclasses.asdict(m),
        "released": released.name if released else None,
        "official_bpd": released.official_bpd if released else None,
        "official_url": released.url if released else None,
        "config": released.config if released else "cifar10 with the checkpoint's sizes",
        "parameters": n_params,
        "mapped": f"{len(pmap)} arrays of params and of ema_params (eval uses ema_params)",
        "dropped": dropped,
        "optimizer": moments,
        "notes": list(released.notes) if released else [],
    }


def _check_like(tree, abstract, name: str) -> None:
    """`tree` has `abstract`'s structure, shapes and dtypes (a mapping bug otherwise)."""
    import jax

    got = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}
    want = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(abstract)}
    diff = sorted(set(got) ^ set(want)) + [
        f"{k} {got[k].shape} {got[k].dtype} (expected {want[k].shape} {want[k].dtype})"
        for k in set(got) & set(want)
        if (got[k].shape, got[k].dtype) != (want[k].shape, want[k].dtype)
    ]
    if diff:
        raise CheckpointImportError(
            f"the imported {name} does not fit this project's model: {', '.join(diff[:4])}"
        )
