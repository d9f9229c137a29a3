"""One session: everything a config needs to train, evaluate or sample, built once.

`Run(config, workdir)` holds the data splits, the encoding, the model, the optimizer, the
mesh, the checkpointer and the jitted functions; the train loop (vdm/run/train.py), the eval and
sample modes (vdm/main.py), the notebooks and the experiments all use this one surface.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math

import jax
import numpy as np

from vdm import data, sharding, storage
from vdm.core import elbo
from vdm.eval import likelihood
from vdm.eval.ledger import Ledger
from vdm.model import VDM, params_fingerprint
from vdm.run import checkpoint, generate, tree_signature
from vdm.run import config as config_lib
from vdm.run import workdir as workdir_lib
from vdm.run.train_step import (
    TrainState,
    applied_state,
    init_state,
    make_optimizer,
    make_train_step,
    stored_state,
)


class Run:
    """Data, model, optimizer, mesh, checkpointer and jitted functions of one config."""

    def __init__(self, config, workdir: str):
        config_lib.validate(config)
        self.config, self.workdir = config, workdir
        self.train_split = data.load_split(config.data, "train")
        self.test_split = data.load_split(config.data, "test")
        self.x_shape = tuple(self.train_split.shape)
        self.n_dims = int(math.prod(self.x_shape))
        stats = (
            data.channel_stats(self.train_split)
            if config.data.encoding == "standardize"
            else (None, None)
        )
        self.encoding = elbo.make_encoding(config.data.encoding, config.data.vocab_size, *stats)
        self.model = VDM.from_config(
            config,
            self.train_split.num_classes,
            n_cond_flags=int(config.data.random_flip),
            encoding=self.encoding,
            data_shape=self.x_shape,
        )
        self.optimizer = make_optimizer(
            config.optimizer, config.training.num_steps, config.objective
        )
        self.mesh = sharding.make_mesh()
        self.rep = sharding.replicated(self.mesh)
        self.key = jax.random.key(config.seed)
        self.ckpt = checkpoint.Checkpointer(
            storage.join(workdir, "checkpoints"), config.training.max_to_keep
        )
        self._samplers: dict = {}
        self._pf_ode_steps: dict = {}

    # ---- state ----

    def fresh_state(self) -> TrainState:
        init = jax.jit(
            lambda k: init_state(self.model, self.optimizer, k, self.x_shape),
            out_shardings=self.rep,
        )
        return init(jax.random.fold_in(self.key, 0))

    def abstract_state(self):
        """The train state this config builds, as its checkpoints hold it (`stored_state`):
        shapes, dtypes and shardings only."""
        abstract = jax.eval_shape(
            lambda k: stored_state(
                self.model, init_state(self.model, self.optimizer, k, self.x_shape)
            ),
            self.key,
        )
        return tree_signature.abstract_like(abstract, self.rep)

    @functools.cached_property
    def _to_stored(self):
        return jax.jit(functools.partial(stored_state, self.model), out_shardings=self.rep)

    @functools.cached_property
    def _to_applied(self):
        return jax.jit(functools.partial(applied_state, self.model), out_shardings=self.rep)

    def save(self, step: int, state: TrainState) -> None:
        """Checkpoint `state` at `step` in the stored form (the ScoreUNet's blocks unrolled,
        whatever `model.scan_blocks` is), so any setting restores it."""
        self.ckpt.save(step, self._to_stored(state) if self._converts else state)

    @property
    def _converts(self) -> bool:
        """Whether the applied and stored forms differ (blocks scanned)."""
        return bool(getattr(self.model.network, "scan_blocks", False))

    def restore(self, ckpt=None, step=None) -> TrainState:
        """The newest readable checkpoint (or `step`) of this run, or of `ckpt`'s directory.
        A checkpoint whose tree this config does not build is one `WorkdirError` line naming
        the config fields that differ from the run's config.json; nothing is moved."""
        ckpt = ckpt or self.ckpt
        try:
            state = ckpt.restore(self.abstract_state(), step)
            return self._to_applied(state) if self._converts else state
        except checkpoint.StructureMismatch as e:
            run_dir = storage.dirname(ckpt.directory)
            raise workdir_lib.mismatch_error(run_dir, self.config, e, ckpt is self.ckpt) from None

    def eval_params(self, state: TrainState):
        """The parameters eval and sampling use: the EMA ones if `eval.use_ema`."""
        return state.ema_params if self.config.eval.use_ema else state.params

    # ---- jitted functions ----

    @functools.cached_property
    def train_step(self):
        """Jitted (state, batches, key) → (state, metrics) (vdm/run/train_step.py)."""
        return make_train_step(self.model, self.optimizer, self.config, self.n_dims, self.mesh)

    @functools.cached_property
    def eval_step(self):
        return likelihood.make_eval_step(
            self.model, self.n_dims, self.mesh, self.config.eval.matmul_precision
        )

    # ---- evaluation and samples ----

    def data_record(self) -> dict:
        """The data an eval number is of: dataset, its version where two exist, the split."""
        d = self.config.data
        record = {"dataset": d.name, "split": "test", "test_examples": len(self.test_split)}
        version = data.version_of(d)
        if version:
            record["version"] = version
        record.update(self.test_split.info)  # an archive's version; verified=False if unchecked
        return record

    def evaluate(self, params, step: int | None = None, progress: bool = False) -> dict:
        """ELBO bpd of the test split: every example once per `eval.repeats`, mean ± SE, with
        the record of how it was made (`elbo_record`). With the checkpoint's `step`, the
        per-example results are kept as they are made (`ledger`): a rerun continues."""
        key = jax.random.fold_in(self.key, 2)
        record = {**self.elbo_record(), "examples": len(self.test_split)}
        batch_size = self.config.eval.batch_size
        ledger = self.ledger("elbo", step, params, record, batch_size=batch_size)
        result = likelihood.elbo_bpd(
            self.eval_step,
            params,
            self.test_split,
            batch_size,
            key,
            self.mesh,
            self.config.eval.repeats,
            ledger=ledger,
            progress=progress,
        )
        return dict(result, elbo_record=self._with_ledger(record, ledger))

    def ledger(self, name: str, step: int | None, params, record: dict, **extra) -> Ledger:
        """Where an eval of checkpoint `step` keeps its per-example results:
        `<workdir>/eval_records/<name>_step<N>_<hash>/`, the hash of what is evaluated (the
        record, the parameters' fingerprint, the config sections that define the model and
        the data, the test images' fingerprint, the seed, the devices, `extra`; the ledger
        adds the code's); nothing kept without a step."""
        if step is None:
            return Ledger(None, name, {})
        defining = {
            k: v
            for k, v in json.loads(self.config.to_json_best_effort()).items()
            if k not in workdir_lib.COMMAND_SECTIONS + ("training", "optimizer")
        }
        for field in workdir_lib.COMMAND_FIELDS:  # where the data live, how the net runs
            section, _, leaf = field.partition(".")
            defining.get(section, {}).pop(leaf, None)
        spec = {
            **{k: v for k, v in record.items() if k != "verified"},  # the images' hash says it
            "checkpoint_step": int(step),
            "params_fingerprint": params_fingerprint(params),
            "config": defining,
            "test_images": self._test_fingerprint(),
            "seed": int(self.config.seed),
            "devices": self.mesh.size,
            **extra,
        }
        root = storage.join(self.workdir, "eval_records")
        return Ledger(root, f"{name}_step{int(step)}", spec)

    def _test_fingerprint(self) -> str:
        """Hash of the first and last 16 test images and the split's size: other data under
        the same name never resume these records."""
        n = len(self.test_split)
        idx = np.unique(np.concatenate([np.arange(min(16, n)), np.arange(max(n - 16, 0), n)]))
        h = hashlib.sha256(str(n).encode())
        h.update(np.ascontiguousarray(self.test_split.get(idx)["image"]).tobytes())
        return h.hexdigest()[:16]

    @staticmethod
    def _with_ledger(record: dict, ledger: Ledger) -> dict:
        if ledger.directory is None:
            return record
        return {**record, "records": ledger.directory, "resumed_batches": ledger.resumed}

    def elbo_record(self) -> dict:
        c = self.config
        T = c.model.n_timesteps
        return {
            "estimator": "elbo",
            "time": "continuous" if T == 0 else f"T = {T}",
            "repeats": int(c.eval.repeats),
            "matmul_precision": c.eval.matmul_precision,
            **self.data_record(),
        }

    def pf_ode_options(self) -> dict:
        """The `eval` section's PF-ODE options, as `likelihood.make_pf_ode_step` takes them."""
        e = self.config.eval
        return dict(
            dequantization=e.dequantization,
            importance_samples=int(e.importance_samples),
            trace=e.pf_ode_trace,
            probe=e.pf_ode_probe,
            probes=int(e.pf_ode_probes),
            solver=e.pf_ode_solver,
            rtol=e.pf_ode_rtol,
            atol=e.pf_ode_atol,
            step_control=e.pf_ode_step_control,
        )

    def pf_ode_step(self):
        """The PF-ODE likelihood step of the `eval` section's options, jitted once per run
        (per set of options), its batch split over the mesh."""
        options = self.pf_ode_options()
        precision = self.config.eval.matmul_precision
        cache_key = json.dumps([options, precision], sort_keys=True)
        if cache_key not in self._pf_ode_steps:
            key = jax.random.fold_in(self.key, 4)
            self._pf_ode_steps[cache_key] = likelihood.make_pf_ode_step(
                self.model, key, self.mesh, matmul_precision=precision, **options
            )
        return self._pf_ode_steps[cache_key]

    def evaluate_pf_ode(self, params, step: int | None = None, progress: bool = False) -> dict:
        """PF-ODE bpd bound of the first `eval.pf_ode_examples` test examples, with its
        record (estimator, dequantization, K, trace, solver, …, and the data); with the
        checkpoint's `step`, kept as it is made (`ledger`): a rerun continues."""
        e = self.config.eval
        record = {**likelihood.pf_ode_record(self.pf_ode_options(), e.matmul_precision)}
        ledger = self.ledger(
            "pf_ode",
            step,
            params,
            {**record, **self.data_record()},
            examples=min(int(e.pf_ode_examples) or len(self.test_split), len(self.test_split)),
            batch_size=int(e.pf_ode_batch_size),
        )
        result = likelihood.pf_ode_bpd(
            self.model,
            params,
            self.test_split,
            e.pf_ode_batch_size,
            jax.random.fold_in(self.key, 4),
            e.pf_ode_examples,
            step_fn=self.pf_ode_step(),
            n_devices=self.mesh.size,
            matmul_precision=e.matmul_precision,
            ledger=ledger,
            progress=progress,
            **self.pf_ode_options(),
        )
        result["pf_ode_record"] = self._with_ledger(result["pf_ode_record"], ledger)
        result["pf_ode_record"].update(
            self.data_record(),
            n=result["pf_ode_n"],
            nfe_mean=result["pf_ode_nfe_mean"],
            nfe_max=result["pf_ode_nfe_max"],
        )
        return result

    def sampler(self, n: int):
        """The configured sampler, jitted once per run (per batch size), its batch split over
        the mesh; returns (fn, batch). Config fields changed after the first call are seen:
        the cache is keyed by the `sample` section's values."""
        s = self.config.sample
        batch = generate.sampler_batch(s, n, self.mesh.size)
        key = (json.dumps(s.to_dict(), sort_keys=True, default=str), batch)
        if key not in self._samplers:
            fn = generate.make_sampler(self.model, s, self.x_shape, batch, self.mesh)
            self._samplers[key] = fn
        return self._samplers[key], batch

    def sample(self, params, n: int | None = None, progress: bool = False) -> np.ndarray:
        """`n` (default `sample.n_samples`) integer samples from the configured sampler."""
        s = self.config.sample
        n = s.n_samples if n is None else n
        fn, batch = self.sampler(n)
        key = jax.random.fold_in(self.key, 3)
        return generate.generate(
            self.model, params, s, key, self.x_shape, n, progress, sampler=fn, batch=batch
        )

    def fid_n(self) -> int:
        """N of `--mode=sample`'s FID: min(sample.fid_n, test split, train split), or 0
        without `sample.fid` or a classifier recipe for the data."""
        from vdm.eval import fid

        s = self.config.sample
        if not (s.fid and self.config.data.name in fid.RECIPES):
            return 0
        return self._fid_cap()

    def _fid_cap(self) -> int:
        """min(sample.fid_n, test split, train split): N never exceeds either reference."""
        return min(self.config.sample.fid_n, len(self.test_split), len(self.train_split))

    def sample_fid(self, samples: np.ndarray) -> dict:
        """FID of the first N integer samples (N ≤ `sample.fid_n`) against as many test
        images, in the features of the data's cached classifier (vdm/eval/fid.py), beside the
        train-vs-test FID at the same N (the floor a perfect model would reach)."""
        from vdm.eval import fid

        clf = fid.load_or_train(self.config.data, log=print)
        n = min(len(samples), self._fid_cap())
        ref = clf.features(self.test_split.get(np.arange(n))["image"])
        floor = fid.fid(clf.features(self.train_split.get(np.arange(n))["image"]), ref)
        return {
            "fid": fid.fid(clf.features(samples[:n]), ref),
            "fid_train_vs_test": floor,
            "fid_n": n,
            "classifier_test_accuracy": clf.info["test_accuracy"],
        }

    def write_fid(self, samples_png: str, step: int) -> dict:
        """With `sample.fid` and a classifier recipe for the data: the FID of the samples
        written beside `samples_png` (its .npz), saved as `…_fid.json`; else {}."""
        if not self.fid_n():
            return {}
        stem = samples_png[:-4]
        result = {"step": step, **self.sample_fid(generate.load(stem + ".npz"))}
        workdir_lib.write_atomic(stem + "_fid.json", json.dumps(result, indent=2))
        return {**result, "json": stem + "_fid.json"}

    def write_samples(
        self, params, step: int, progress: bool = False, tag: str = "", n: int | None = None
    ) -> str:
        """Sample and write `samples/<tag>step_<N>.png` (the first `sample.n_samples`) and
        `.npz` (all `n`, default `sample.n_samples`), never overwriting a file."""
        x = self.sample(params, n, progress)  # every process samples; process 0 writes
        if jax.process_index() != 0:
            return ""
        cfg = self.config
        text = generate.caption(cfg.data.name, cfg.sample, step, self.model.num_classes)
        reference = None
        if len(self.x_shape) == 1:  # low-dimensional data: draw the samples over the data
            n_ref = min(len(self.test_split), 4 * len(x))
            reference = self.test_split.get(np.arange(n_ref))["image"]
        stem = storage.join(self.workdir, "samples", f"{tag}step_{step:08d}")
        with workdir_lib.writing(stem + ".png"):
            return generate.save(stem, x, self.encoding, text, reference, cfg.sample.n_samples)
