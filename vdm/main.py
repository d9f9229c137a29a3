"""Command line: python -m vdm.main --config=configs/<name>.py[:arg] --workdir=DIR [--mode=…],
or the console script: vdm train|eval|sample --config=<name or path>[:arg] --workdir=DIR.

--config takes a config file's path or the name of one shipped in vdm/configs/ (`digits`),
so a run can start from any directory. DIR (and --checkpoint, --input, --output) may be a Cloud
Storage URL gs://bucket/path (vdm/storage.py).

  --mode=train   train (resuming from DIR if it holds checkpoints), evaluate, sample
  --mode=eval    ELBO bpd of the test split with the latest (or --checkpoint) parameters
  --mode=sample  a PNG grid and an .npz of integer samples
  --mode=compress --input=images.npz|PNG_FOLDER --output=images.vdmz
                 lossless bits-back coding with the model (the `compress` config section)
  --mode=decompress --input=images.vdmz --output=out.npz|FOLDER   the exact images back
  --mode=import --from=google-research/vdm SRC   a released checkpoint (clu directory or its
                 ckpt-N.flax) as a new run in DIR; --config is optional, checked against it
Override any config field with --config.a.b=value. --reset (train) moves a previous run in
the workdir aside to workdir/reset_<time>/ and starts afresh.

Multi-host: --coordinator=HOST:PORT --num_processes=N --process_id=I on each host (or the
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID variables); on SLURM, a TPU pod
or GKE, jax detects the cluster by itself. Every process computes; only process 0 writes.
"""

from __future__ import annotations

import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vdm.compress.container import CompressError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory, a path or gs://bucket/path (resumes if it exists)."
)
MODES = ("train", "eval", "sample", "compress", "decompress", "import")
_MODE = flags.DEFINE_enum("mode", "train", list(MODES), "What to do.")
_INPUT = flags.DEFINE_string("input", None, "compress: .npz or PNG folder; decompress: .vdmz")
_OUTPUT = flags.DEFINE_string("output", None, "compress: .vdmz; decompress: .npz or a folder")
_FROM = flags.DEFINE_string("from", None, "import: where SRC comes from (google-research/vdm)")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "eval/sample: a workdir, its checkpoints/ or one step's directory."
)
_RESET = flags.DEFINE_bool("reset", False, "train: move the workdir's previous run aside first.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "Multi-host: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.mark_flags_as_required(["workdir"])  # and --config, except for import

# Environment variables by which jax.distributed detects a cluster without arguments.
CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def _run_dir(workdir: str, checkpoint_path: str | None) -> str:
    """The run whose parameters a command reads: --checkpoint's run, else --workdir."""
    from vdm.run import checkpoint

    if not checkpoint_path:
        return workdir
    from vdm import storage

    return storage.dirname(checkpoint.resolve(checkpoint_path)[0])


def _own_config(config, run_dir: str):
    """The run's own config (vdm/run/workdir.py `run_config`), and one line on what of `config`
    was ignored for it."""
    from vdm.run import workdir as workdir_lib

    merged, ignored = workdir_lib.run_config(run_dir, config)
    if ignored and _is_main():
        shown = ", ".join(f"{k}={v[0]!r} (the run's: {v[1]!r})" for k, v in ignored.items())
        print(
            f"vdm: using {run_dir}/config.json; ignored from --config: {shown} "
            f"(only the {', '.join(workdir_lib.COMMAND_SECTIONS)} sections apply)",
            file=sys.stderr,
            flush=True,
        )
    return merged


# What each mode is doing, as the line of a signal that stops it names it (vdm/signals.py).
ACTIVITIES = {
    "train": "training",
    "eval": "evaluation",
    "sample": "sampling",
    "compress": "compression",
    "decompress": "decompression",
    "import": "import",
}


def _is_main() -> bool:
    import jax

    return jax.process_index() == 0


def _load_params(run, checkpoint_path: str | None):
    from vdm.run import checkpoint

    if checkpoint_path:
        directory, step = checkpoint.resolve(checkpoint_path)
        state = run.restore(checkpoint.Checkpointer(directory, move_damaged=False), step)
    else:
        if run.ckpt.latest_step() is None:
            partial = ", ".join(map(str, run.ckpt.steps()))
            why = f" (step {partial}: a save that never finished)" if partial else ""
            raise FileNotFoundError(
                f"no complete checkpoint in {run.ckpt.directory}{why}: train first or pass "
                "--checkpoint"
            )
        state = run.restore()
    return run.eval_params(state), int(state.step)


def run_mode(
    config,
    workdir: str,
    mode: str,
    checkpoint_path: str | None = None,
    reset: bool = False,
    input_path: str | None = None,
    output_path: str | None = None,
) -> dict:
    import jax

    from vdm import runtime
    from vdm.run import train

    if jax.process_index() == 0 and (line := runtime.describe(jax.default_backend())):
        print(line, flush=True)
    if mode == "train":
        result = train.train_and_evaluate(config, workdir, reset=reset)
        if _is_main() and "bpd" in result:
            _report_elbo(result, result["step"], f"{workdir.rstrip('/')}/eval_final.json")
        return result
    return _run_command(config, workdir, mode, checkpoint_path, input_path, output_path)


def _report_elbo(result: dict, step: int, path: str | None = None) -> None:
    """The closing line of a measured ELBO: test bpd ± SE, what was measured, where it is."""
    from vdm.eval import likelihood

    record = result.get("elbo_record")
    what = f"{likelihood.describe(record)}; " if isinstance(record, dict) else ""
    where = f" → {path}" if path else ""
    print(
        f"ELBO   test bpd {result['bpd']:.4f} ± {result['bpd_se']:.4f} (n={result['n']}; "
        f"{what}step {step}){where}",
        flush=True,
    )


def _run_command(config, workdir, mode, checkpoint_path, input_path, output_path) -> dict:
    """eval, sample, compress or decompress with a run's parameters."""
    import jax

    from vdm.run import workdir as workdir_lib
    from vdm.run.session import Run

    if mode in ("compress", "decompress") and not (input_path and output_path):
        raise FileNotFoundError(f"--mode={mode} needs --input and --output")
    workdir = workdir_lib.prepare(workdir)
    config = _own_config(config, _run_dir(workdir, checkpoint_path))
    run = Run(config, workdir)
    run.ckpt.move_damaged = False  # a live run may be training here: skip damage, move nothing
    params, step = _load_params(run, checkpoint_path)
    if mode == "eval":
        from vdm.eval import likelihood

        result = {"step": step}
        if config.eval.elbo:
            result.update(run.evaluate(params, step, progress=True))
            result["elbo_record"]["checkpoint_step"] = step
            _report_elbo(result, step)
            _report_resumed(result["elbo_record"])
        if config.eval.pf_ode:
            result.update(run.evaluate_pf_ode(params, step, progress=True))
            result["pf_ode_record"]["checkpoint_step"] = step
            print(
                f"PF-ODE test bpd {result['pf_ode_bpd']:.4f} ± {result['pf_ode_bpd_se']:.4f} "
                f"(n={result['pf_ode_n']}; {likelihood.describe(result['pf_ode_record'])}; "
                f"NFE mean {result['pf_ode_nfe_mean']:.0f}, max {result['pf_ode_nfe_max']}; "
                f"step {step})"
            )
            _report_resumed(result["pf_ode_record"])
        if jax.process_index() == 0:  # every process computes; one writes
            path = workdir_lib.unused_path(f"{workdir}/eval_step_{step}.json")
            workdir_lib.write_atomic(path, json.dumps(result, indent=2))
            print(f"→ {path}")
        return result
    if mode in ("compress", "decompress"):
        return _compress_mode(run, params, step, mode, input_path, output_path)
    s = config.sample
    tag = f"{s.sampler}_{s.steps}steps_w{s.guidance:g}_"
    n = max(s.n_samples, run.fid_n())  # the FID's N may need more than the grid shows
    path = run.write_samples(params, step, progress=True, tag=tag, n=n)
    result = {"png": path, "step": step}
    if path:
        print(f"samples → {path} and {path[:-4]}.npz")
        fid = run.write_fid(path, step)
        if fid:
            result.update(fid)
            print(
                f"FID {fid['fid']:.2f} (N = {fid['fid_n']}; train vs test at the same N: "
                f"{fid['fid_train_vs_test']:.2f}) in the features of the data's classifier "
                f"({100 * fid['classifier_test_accuracy']:.1f}% test accuracy) → {fid['json']}"
            )
    return result


def _report_resumed(record: dict) -> None:
    """Where an eval kept its per-example results, and how much of it an earlier, stopped
    run had already done."""
    if _is_main() and record.get("records"):
        before = record.get("resumed_batches", 0)
        again = f"; {before} batches were done by an earlier run" if before else ""
        print(f"       per-example results: {record['records']}{again}", flush=True)


def _compress_mode(run, params, step, mode, input_path, output_path) -> dict:
    from vdm.compress import api

    if mode == "decompress":
        path = api.decompress_file(run, params, step, input_path, output_path)
        print(f"images → {path}")
        return {"output": path, "step": step}
    stats = api.compress_file(run, params, step, input_path, output_path)
    print(
        f"{stats['count']} images → {output_path}: {stats['file_bytes']:,} bytes, "
        f"{stats['file_bpd']:.4f} bits/dim in the file; net {stats['net_bpd']:.4f} bits/dim "
        f"(T = {stats['steps']}), {stats['clean_bits']} clean bits consumed"
    )
    return stats


def init_distributed() -> None:
    """jax.distributed.initialize from the flags, the JAX_* variables, or cluster detection."""
    import jax

    env = os.environ
    coordinator = _COORDINATOR.value or env.get("JAX_COORDINATOR_ADDRESS")
    if coordinator:
        n = _NUM_PROCESSES.value or env.get("JAX_NUM_PROCESSES")
        pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else env.get("JAX_PROCESS_ID")
        if n is None or pid is None:
            raise ValueError(
                f"multi-host launch with coordinator {coordinator} needs --num_processes and "
                "--process_id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)"
            )
        jax.distributed.initialize(coordinator, int(n), int(pid))
    elif any(v in env for v in CLUSTER_ENV) and int(env.get("SLURM_NTASKS", "2")) > 1:
        jax.distributed.initialize()  # SLURM / TPU pod / GKE: jax reads the cluster itself


def _resolve_config_arg(argv: list[str]) -> list[str]:
    """`--config=digits[:arg]` (a shipped config's name) → the path of its file."""
    from vdm.run.config import ConfigError, resolve

    out = list(argv)
    for i, a in enumerate(out):
        try:
            if a.startswith("--config="):
                out[i] = "--config=" + resolve(a.split("=", 1)[1])
            elif a == "--config" and i + 1 < len(out):
                out[i + 1] = resolve(out[i + 1])
        except ConfigError as e:
            sys.exit(f"error: {e}")
    return out


def parse_flags(argv):
    """absl's flag parsing, with every mistake (a config typo, a bad flag) as one line."""
    argv = _resolve_config_arg(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        text = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split()).strip("'\"")
        hint = re.search(r'Did you mean "([\w.]+)" instead of "([\w.]+)"', text)
        if hint:
            overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
            bad = next((o for o in overrides if o.split(".")[-1] == hint[2]), hint[2])
            sys.exit(f"error: {bad}: no such config field; did you mean {hint[1]}?")
        sys.exit(f"error: {text}")
    except SyntaxError as e:  # the config file does not parse
        sys.exit(f"error: {e.filename}:{e.lineno}: {e.msg} (a syntax error in the config file)")
    except Exception as e:  # noqa: BLE001 - anything else the config file raised
        sys.exit(f"error: {_config_file_error(e, argv)}")


def _config_file_error(e: Exception, argv: list[str]) -> str:
    """`path:line: Type: message` of an error raised while running the config file."""
    import traceback

    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    path = os.path.abspath(spec.partition(":")[0]) if spec else ""
    frames = [
        f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == path
    ]
    where = (
        f"{frames[-1].filename}:{frames[-1].lineno}: "
        if frames
        else (f"--config={spec}: " if spec else "")
    )
    return f"{where}{type(e).__name__}: {' '.join(str(e).split())}"


def import_mode(source: str | None, args: list[str], workdir: str, config) -> dict:
    """`--mode=import --from=SOURCE SRC`: a checkpoint of another codebase as a new run."""
    from vdm.importers.flax_msgpack import CheckpointImportError
    from vdm.importers.workdir import import_checkpoint

    importers = {"google-research/vdm": import_checkpoint}
    if source not in importers:
        raise CheckpointImportError(f"--from must be one of {sorted(importers)}, got {source!r}")
    srcs = list(args) or ([_INPUT.value] if _INPUT.value else [])
    if len(srcs) != 1:
        raise CheckpointImportError(
            f"--mode=import takes one checkpoint (clu's directory or its ckpt-N.flax), got "
            f"{len(srcs)}: {' '.join(srcs) or 'none'}"
        )
    record = importers[source](srcs[0], workdir, config)
    print(
        f"imported {record['model']} at step {record['official_step']} → {workdir} "
        f"(optimizer: {record['optimizer']}; record: {workdir.rstrip('/')}/import.json)"
    )
    if record.get("official_bpd"):
        print(
            f"this is the released {record['released']} model: the official eval reports "
            f"{record['official_bpd']} test bpd; vdm eval --config={record['released']} "
            f"--workdir={workdir} measures it here"
        )
    return record


def main(argv):
    logging.set_verbosity(logging.ERROR)  # orbax logs every file it writes at INFO
    from vdm import signals

    signals.install()  # Ctrl-C and SIGTERM: one line and 130 / 143 in every mode
    from vdm.data.download import DataError
    from vdm.importers.flax_msgpack import CheckpointImportError
    from vdm.run.checkpoint import CheckpointWriteError, RestoreError
    from vdm.run.config import ConfigError
    from vdm.run.preemption import Preempted
    from vdm.run.workdir import WorkdirError, WriteError
    from vdm.storage import StorageError

    if _MODE.value != "import" and len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])} (flags are --name=value)")
    try:
        with signals.activity(ACTIVITIES[_MODE.value]):
            _check_storage(
                {"--workdir": _WORKDIR.value, "--checkpoint": _CHECKPOINT.value,
                 "--input": _INPUT.value, "--output": _OUTPUT.value}
            )  # fmt: skip
            if _MODE.value == "import":
                import_mode(_FROM.value, argv[1:], _WORKDIR.value, _config())
                return
            if _config() is None:
                raise ConfigError("flag --config must have a value (a config's name or path)")
            _pin_if_portable(_MODE.value, _config(), _INPUT.value)
            init_distributed()
            signals.install()  # back from jax.distributed's own SIGTERM handler
            run_mode(
                _config(),
                _WORKDIR.value,
                _MODE.value,
                _CHECKPOINT.value,
                _RESET.value,
                _INPUT.value,
                _OUTPUT.value,
            )
    except StorageError as e:
        # Cloud Storage unreachable mid-command: orbax's threads may still be retrying a
        # save that can never commit; the process ends without waiting for them.
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    except (
        CheckpointImportError,
        CompressError,
        ConfigError,
        DataError,
        FileExistsError,
        FileNotFoundError,
        FloatingPointError,
        RestoreError,
        WorkdirError,
    ) as e:
        sys.exit(f"error: {e}")
    except Preempted as e:
        print(f"vdm: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except OSError as e:  # disk full, permission, quota: the path and why, in one line
        if not (isinstance(e, CheckpointWriteError | WriteError) or e.filename):
            raise  # no file named: a bug or a network error, whose traceback helps
        sys.exit(f"error: {_os_error(e)}")


def _check_storage(paths: dict[str, str | None]) -> None:
    """Each flag's path given as a URL: its scheme and access checked in one request, before
    anything is written (vdm/storage.py); never a local folder named after the URL."""
    from vdm import storage

    for what, path in paths.items():
        if path and storage.is_url(path):
            storage.check(path, what)
            storage.check_access(path, what)


def _pin_if_portable(mode: str, config, input_path: str | None) -> None:
    """Re-execute under compress.portable's pins (vdm/compress/portable.py) before JAX starts:
    to compress with `compress.portable`, or to decompress a file written with it."""
    from vdm.compress import container, portable

    wanted = mode == "compress" and bool(config.compress.get("portable", False))
    if mode == "decompress" and input_path:
        try:
            header, _ = container.read(input_path)
        except (CompressError, OSError):
            return  # the decompress command says what is wrong with the file, in one line
        wanted = bool((header.get("platform") or {}).get("portable", False))
    if wanted:
        try:
            portable.reexec(sys.argv[1:])
        except portable.PortableError as e:
            raise CompressError(str(e)) from None


def _config():
    """The --config flag's value; a file absl could not load is one line (`ConfigError`)."""
    from vdm.run.config import ConfigError

    try:
        return _CONFIG.value
    except OSError as e:
        raise ConfigError(f"--config: {' '.join(str(e).split())}") from None


def _os_error(e: OSError) -> str:
    """`cannot write PATH: reason` (vdm.run.workdir.WriteError), `PATH: reason`, or the text."""
    from vdm.run.workdir import WriteError

    if e.filename and e.strerror and not isinstance(e, WriteError):
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


COMMANDS = MODES


def cli() -> None:
    """The `vdm` console script: `vdm train|eval|sample [flags]` is `python -m vdm.main
    --mode=… [flags]`; `vdm plot WORKDIR…` draws runs' metrics (vdm/run/plot.py)."""
    argv = sys.argv
    if len(argv) > 1 and argv[1] == "plot":
        from vdm.run import plot

        sys.exit(plot.main(argv[2:]))
    if len(argv) < 2 or argv[1] not in COMMANDS:
        sys.exit(
            "usage: vdm {train,eval,sample,compress,decompress} --config=<name or path>[:arg] "
            "--workdir=DIR [--config.a.b=value …]\n"
            "       vdm import --from=google-research/vdm SRC --workdir=DIR [--config=…]\n"
            "       vdm plot WORKDIR [WORKDIR …] [--out=PNG]"
        )
    sys.argv = [argv[0], f"--mode={argv[1]}", *argv[2:]]
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
