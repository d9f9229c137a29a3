"""Command line: python -m vdm.main --config=configs/<name>.py[:arg] --workdir=DIR [--mode=…].

  --mode=train   train (resuming from DIR if it holds checkpoints), evaluate, sample
  --mode=eval    ELBO bpd of the test split with the latest (or --checkpoint) parameters
  --mode=sample  a PNG grid and an .npz of integer samples
Override any config field with --config.a.b=value.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (resumes if it exists).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to do.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "eval/sample: a workdir, its checkpoints/ or one step's directory."
)
flags.mark_flags_as_required(["config", "workdir"])


def _load_params(run, checkpoint_path: str | None):
    from vdm import checkpoint

    if checkpoint_path:
        directory, step = checkpoint.resolve(checkpoint_path)
        state = run.restore(checkpoint.Checkpointer(directory), step)
    else:
        if run.ckpt.latest_step() is None:
            raise FileNotFoundError(
                f"no checkpoint in {run.ckpt.directory}: train first or pass --checkpoint"
            )
        state = run.restore()
    params = state.ema_params if run.config.eval.use_ema else state.params
    return params, int(state.step)


def run_mode(config, workdir: str, mode: str, checkpoint_path: str | None = None) -> dict:
    from vdm import train

    if mode == "train":
        return train.train_and_evaluate(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    run = train.Run(config, workdir)
    params, step = _load_params(run, checkpoint_path)
    if mode == "eval":
        result = {"step": step}
        if config.eval.elbo:
            result.update(run.evaluate(params))
            print(f"ELBO   test bpd {result['bpd']:.4f} ± {result['bpd_se']:.4f} (n={result['n']})")
        if config.eval.pf_ode:
            result.update(run.evaluate_pf_ode(params))
            print(
                f"PF-ODE test bpd {result['pf_ode_bpd']:.4f} ± {result['pf_ode_bpd_se']:.4f} "
                f"(n={result['pf_ode_n']}, NFE ≤ {result['pf_ode_nfe_max']})"
            )
        path = os.path.join(workdir, f"eval_step_{step}.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"→ {path}")
        return result
    s = config.sample
    tag = f"{s.sampler}_{s.steps}steps_w{s.guidance:g}_"
    path = run.write_samples(params, step, progress=True, tag=tag)
    print(f"samples → {path} and {path[:-4]}.npz")
    return {"png": path, "step": step}


def main(argv):
    del argv
    import jax

    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO

    from vdm.config import ConfigError

    if os.environ.get("JAX_COORDINATOR_ADDRESS"):  # multi-host: one process per host
        jax.distributed.initialize()
    try:
        run_mode(_CONFIG.value, _WORKDIR.value, _MODE.value, _CHECKPOINT.value)
    except (ConfigError, FileNotFoundError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
