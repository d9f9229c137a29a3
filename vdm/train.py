"""The training loop: init or restore → for step: batch → train_step → log / eval / sample / save.

A run directory is exactly `workdir`; running the same command again resumes. The session
(data, model, mesh, checkpointer, jitted functions) is `vdm/session.py`; one optimisation
step is `vdm/train_step.py`; this module only orders them in time and writes what they return.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import numpy as np

from vdm import checkpoint, data, health, sharding
from vdm import config as config_lib
from vdm import workdir as workdir_lib
from vdm.metrics_writer import MetricWriter
from vdm.model import count_params
from vdm.session import Run

NonFiniteLossError = health.DivergedError  # the name earlier versions raised


def _mean_metrics(pending: list) -> dict[str, float]:
    host = jax.device_get(pending)
    return {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in host]))) for k in host[0]}


def _check_health(pending: list, first_step: int, n: int, ckpt: checkpoint.Checkpointer):
    """Stop before any save if a step since the last check was unhealthy (vdm/health.py)."""
    last = ckpt.latest_step()
    info = (
        f"Last healthy checkpoint: step {last} in {ckpt.directory}."
        if last is not None
        else "No checkpoint was saved yet."
    )
    health.check(jax.device_get(pending), first_step, n, info)


def _crossed(step: int, n: int, every: int) -> bool:
    return step // every > (step - n) // every


def train_and_evaluate(config, workdir: str, reset: bool = False) -> dict:
    """Train (resuming from `workdir` if it holds checkpoints), evaluate and sample.

    Nothing is written before the config is validated, the workdir is locked against a second
    training run, and the config is checked against the run it would resume (vdm/workdir.py).
    Only process 0 writes files; every process computes.
    """
    config_lib.validate(config)
    workdir = workdir_lib.prepare(workdir)
    main = jax.process_index() == 0  # the one process that writes files, and holds the lock
    with workdir_lib.Lock(workdir) if main else contextlib.nullcontext():
        if reset and main:
            workdir_lib.reset(workdir)
        return _train_locked(config, workdir)


def _train_locked(config, workdir: str) -> dict:
    run = Run(config, workdir)
    state, diff = _resume(run)
    writer = MetricWriter(workdir, resume_step=int(state.step), enabled=_is_main())
    if _is_main():
        workdir_lib.record_config(workdir, config, int(state.step), diff)
        print(
            f"vdm: {config.data.name}, {count_params(state.params):,} parameters, "
            f"{jax.device_count()} device(s), starting at step {int(state.step)}",
            flush=True,
        )
    try:
        result, step = _loop(run, state, writer)
    finally:
        run.ckpt.wait()
        run.ckpt.close()
        writer.close()
    result["step"] = step
    if _is_main():
        _write_json(os.path.join(workdir, "eval_final.json"), result)
    return result


def _is_main() -> bool:
    return jax.process_index() == 0


def _resume(run: Run):
    """The latest checkpoint (after checking the config against the run it resumes) or a
    fresh state; and the list of config fields that changed."""
    latest = run.ckpt.latest_step()
    diff = workdir_lib.check_config(run.workdir, run.config, latest)
    if diff and _is_main():
        print(f"vdm: resuming with changed {', '.join(diff)}", flush=True)
    return (run.restore() if latest is not None else run.fresh_state()), diff


def _loop(run: Run, state, writer: MetricWriter) -> tuple[dict, int]:
    """Steps until `training.num_steps`: log (after a health check), save, eval + sample."""
    from tqdm.auto import tqdm

    config, tc, step = run.config, run.config.training, int(state.step)
    batches = data.train_batches(
        run.train_split,
        tc.batch_size,
        step,
        config.seed,
        config.data.random_flip,
        tc.steps_per_call,
        jax.process_index(),
        jax.process_count(),
    )
    pbar = tqdm(total=tc.num_steps, initial=step, disable=not _is_main())
    pending, t_log, result, first = [], time.time(), {}, step
    try:
        while step < tc.num_steps:
            n = tc.steps_per_call
            batch = sharding.shard_batch(next(batches), run.mesh, leading=1)
            state, metrics = run.train_step(state, batch, run.key)
            step += n
            pending.append(metrics)
            last = step >= tc.num_steps
            if _crossed(step, n, tc.log_every) or _crossed(step, n, tc.save_every) or last:
                _check_health(pending, first, n, run.ckpt)
                m = _mean_metrics(pending)
                m["steps_per_sec"] = len(pending) * n / (time.time() - t_log)
                writer.write(step, m)
                loss = {k: f"{m[k]:.3f}" for k in ("bpd", "objective") if k in m}
                pbar.set_postfix(**loss, steps_s=f"{m['steps_per_sec']:.1f}")
                pending, t_log, first = [], time.time(), step
            pbar.update(n)
            if _crossed(step, n, tc.save_every) or last:
                run.ckpt.save(step, state)
            if _crossed(step, n, tc.eval_every) or last:
                params = run.eval_params(state)
                result = run.evaluate(params)
                writer.write(step, {k: v for k, v in result.items() if k != "n"}, prefix="eval")
                run.write_samples(params, step)  # every process samples; process 0 writes
                t_log = time.time()
        if not result and step > 0:  # resumed a finished run: report it
            result = run.evaluate(run.eval_params(state))
    finally:
        pbar.close()
        batches.close()
    return result, step


def _write_json(path: str, obj) -> None:
    """Write `path` atomically: a reader sees the old file or the new one, never a half."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)
