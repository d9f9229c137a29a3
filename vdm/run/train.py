"""The training loop: init or restore → for step: batch → train_step → log / eval / sample / save.

A run directory is exactly `workdir`; running the same command again resumes. The session
(data, model, mesh, checkpointer, jitted functions) is `vdm/run/session.py`; one optimisation
step is `vdm/run/train_step.py`; this module only orders them in time and writes what they return.
"""

from __future__ import annotations

import contextlib
import json
import time

import jax
import numpy as np

from vdm import data, sharding, storage
from vdm.model import count_params
from vdm.run import config as config_lib
from vdm.run import health, preemption
from vdm.run import lock as lock_lib
from vdm.run import workdir as workdir_lib
from vdm.run.metrics import MetricWriter, read_metrics
from vdm.run.session import Run

NonFiniteLossError = health.DivergedError  # the name earlier versions raised


def _mean_metrics(pending: list) -> dict[str, float]:
    host = jax.device_get(pending)
    return {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in host]))) for k in host[0]}


def _check_health(pending: list, first_step: int, n: int, run: Run, history: list[float]):
    """Stop before any save if a step since the last check was unhealthy or the interval's
    loss spiked (vdm/run/health.py); else add the interval's mean loss to `history`."""
    ckpt = run.ckpt
    last = ckpt.latest_step()
    info = (
        f"Last healthy checkpoint: step {last} in {ckpt.directory}."
        if last is not None
        else "No checkpoint was saved yet."
    )
    host, spike_factor = jax.device_get(pending), run.config.training.spike_factor
    mean = health.check(host, first_step, n, info, history, spike_factor)
    if np.isfinite(mean):
        history.append(mean)


def _loss_history(workdir: str, step: int) -> list[float]:
    """The mean train loss of each log interval up to `step`, from `metrics.jsonl`."""
    rows = [r for r in read_metrics(workdir) if r.get("step", 0) <= step]
    rows = [r for r in rows if r.get("split") == "train"]
    return [r[health.loss_key(r)] for r in rows if health.loss_key(r) in r]


def _crossed(step: int, n: int, every: int) -> bool:
    return step // every > (step - n) // every


def train_and_evaluate(config, workdir: str, reset: bool = False) -> dict:
    """Train (resuming from `workdir` if it holds checkpoints), evaluate and sample.

    Nothing is written before the config is validated, the workdir is locked against a second
    training run, and the config is checked against the run it would resume (vdm/run/workdir.py).
    Only process 0 writes files; every process computes.
    """
    config_lib.validate(config)
    workdir = workdir_lib.prepare(workdir)
    main = jax.process_index() == 0  # the one process that writes files, and holds the lock
    with contextlib.ExitStack() as stack:
        failure, lock = None, None
        if main:
            try:
                lock = stack.enter_context(lock_lib.Lock(workdir))
                if reset:
                    workdir_lib.reset(workdir)
            except (OSError, workdir_lib.WorkdirError) as e:
                failure = e
        # Every process learns whether process 0 took the workdir (so none waits for it in a
        # collective), and none reads it before the reset is done.
        if not sharding.all_agree(failure is None):
            raise failure or workdir_lib.WorkdirError(
                f"{workdir}: process 0 could not take the workdir (its output says why)"
            )
        return _train_locked(config, workdir, lock)


def _train_locked(config, workdir: str, lock=None) -> dict:
    run = Run(config, workdir)
    state, diff = _resume(run)
    history = _loss_history(workdir, int(state.step))
    writer = MetricWriter(workdir, resume_step=int(state.step), enabled=_is_main())
    if _is_main():
        workdir_lib.record_config(workdir, config, int(state.step), diff)
        print(
            f"vdm: {config.data.name}, {count_params(state.params):,} parameters, "
            f"{jax.device_count()} device(s), starting at step {int(state.step)}",
            flush=True,
        )
    # The Guard covers the last save's wait too: a signal then lets it land (the run ends anyway).
    with preemption.Guard() as guard:
        unreachable = False
        try:
            result, step = _loop(run, state, writer, guard, history, lock)
        except storage.StorageError:
            # Cloud Storage stopped answering (after its retries): a save still in flight
            # would retry for many minutes, and without its commit marker it is never
            # restored; the run ends now (vdm/main.py exits without waiting for orbax).
            unreachable = True
            raise
        finally:
            if not unreachable:
                try:
                    run.ckpt.wait()
                finally:
                    run.ckpt.close()
                    writer.close()
    result["step"] = step
    if isinstance(result.get("elbo_record"), dict):
        result["elbo_record"]["checkpoint_step"] = step
    if _is_main():
        _write_json(storage.join(workdir, "eval_final.json"), result)
    return result


def _is_main() -> bool:
    return jax.process_index() == 0


def _resume(run: Run):
    """The newest readable checkpoint or, in a workdir without any, a fresh state; and the
    config fields that changed. Whether the config fits is decided by structure: the
    checkpoint's tree must equal the one this config builds (`Run.restore` refuses in one
    line, naming the fields, before anything is written)."""
    if not run.ckpt.steps():
        corrupt = storage.join(run.ckpt.directory, "corrupt")
        if storage.listdir(corrupt):
            raise workdir_lib.WorkdirError(
                f"{run.workdir} has no checkpoint left but {corrupt} holds damaged ones: "
                "starting afresh would replace the run's config and metrics; use --reset to "
                "move the run aside and start afresh, or a new --workdir"
            )
        return run.fresh_state(), {}
    state = run.restore()
    diff = workdir_lib.changed_fields(run.workdir, run.config)
    if diff and _is_main():
        print(f"vdm: resuming with changed {', '.join(diff)}", flush=True)
    return state, diff


def _loop(run: Run, state, writer: MetricWriter, guard, history: list[float], lock=None):
    """Steps until `training.num_steps`: log (after a health check), save, eval + sample.
    Every eval step is saved too, so the best eval bpd can be pinned against rotation. After a
    signal (vdm/run/preemption.py) the step in flight is checked, logged and saved, then
    `Preempted` is raised."""
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
    pending, t_log, result, first, start = [], time.time(), {}, step, step

    def log():
        nonlocal pending, t_log, first
        held = lock is None or not lock.lost  # another run took this gs:// workdir over?
        if not sharding.all_agree(held):
            why = lock.lost if lock is not None and lock.lost else "process 0 lost its lock"
            raise workdir_lib.WorkdirError(f"{why}; this run stops at step {step}")
        _check_health(pending, first, tc.steps_per_call, run, history)
        m = _mean_metrics(pending)
        m["steps_per_sec"] = len(pending) * tc.steps_per_call / (time.time() - t_log)
        writer.write(step, m)
        loss = {k: f"{m[k]:.3f}" for k in ("bpd", "objective") if k in m}
        pbar.set_postfix(**loss, steps_s=f"{m['steps_per_sec']:.1f}")
        pending, t_log, first = [], time.time(), step

    try:
        while step < tc.num_steps:
            signum = guard.requested()
            if signum:
                if pending:
                    log()  # health-checked like every save
                if step != start and run.ckpt.latest_step() != step:
                    run.save(step, state)
                run.ckpt.wait()  # "saved" only once it is on disk (a failed save says so)
                raise preemption.Preempted(step, signum, step != start)
            n = tc.steps_per_call
            batch = sharding.shard_batch(next(batches), run.mesh, leading=1)
            state, metrics = run.train_step(state, batch, run.key)
            step += n
            pending.append(metrics)
            last = step >= tc.num_steps
            evaluate = _crossed(step, n, tc.eval_every) or last
            if _crossed(step, n, tc.log_every) or _crossed(step, n, tc.save_every) or evaluate:
                log()
            pbar.update(n)
            if _crossed(step, n, tc.save_every) or evaluate:
                run.save(step, state)
            if evaluate:
                params = run.eval_params(state)
                result = run.evaluate(params)
                run.ckpt.record_eval(step, result["bpd"])
                scalars = {k: v for k, v in result.items() if k != "n" and not isinstance(v, dict)}
                writer.write(step, scalars, prefix="eval")
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
    workdir_lib.write_atomic(path, json.dumps(obj, indent=2))
