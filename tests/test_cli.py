"""The installed package drives runs from any directory: `vdm` console script, configs by name
or by path outside the repository, and `vdm plot` over the runs' metrics (vdm/main.py,
vdm/run/config.py, vdm/run/plot.py)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vdm import runtime
from vdm.run import config as config_lib
from vdm.run import plot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vdm_script() -> str:
    """The console script installed beside this interpreter (pip install -e .)."""
    path = os.path.join(os.path.dirname(sys.executable), "vdm")
    return path if os.path.exists(path) else shutil.which("vdm")


def run_outside(cmd: list[str], cwd) -> subprocess.CompletedProcess:
    """Run `cmd` in `cwd` with nothing pointing Python at the repository, and XLA_FLAGS
    without the flag this process's `import vdm` added (as in a user's fresh shell)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    added = [f"--{k}={v}" for k, v in runtime.CPU_FLAGS.items()]
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f not in added)
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def outside_run(tmp_path_factory):
    """`vdm train --config=digits:smoke` started in an empty directory outside the repo."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    assert not os.path.exists(cwd / "configs")
    proc = run_outside([vdm_script(), "train", "--config=digits:smoke", "--workdir=run"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cwd / "train_stdout.txt").write_text(proc.stdout)
    return cwd


def test_console_script_trains_by_config_name_from_another_directory(outside_run):
    workdir = outside_run / "run"
    result = json.loads((workdir / "eval_final.json").read_text())
    assert result["step"] == 6 and 0 < result["bpd"] < 20
    # the job ends by saying what it measured, and where the record is
    last = (outside_run / "train_stdout.txt").read_text().strip().splitlines()[-1]
    assert last == (
        f"ELBO   test bpd {result['bpd']:.4f} ± {result['bpd_se']:.4f} (n={result['n']}; "
        "ELBO, continuous, repeats 1; step 6) → run/eval_final.json"  # the --workdir given
    ), last
    assert max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == 6


def test_config_file_by_absolute_path_from_another_directory(outside_run):
    """python -m vdm.main with a config path outside the cwd: its import of the base config
    resolves through the installed package, not the repository on sys.path."""
    config = os.path.join(ROOT, "configs", "digits.py") + ":smoke"
    proc = run_outside(
        [sys.executable, "-m", "vdm.main", f"--config={config}", "--workdir=run", "--mode=eval"],
        outside_run,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ELBO   test bpd" in proc.stdout
    # import vdm's XLA:CPU flag is said once, not set silently (vdm/runtime.py)
    assert proc.stdout.count("XLA:CPU: convolutions run outside YNNPACK") == 1, proc.stdout
    assert (outside_run / "run" / "eval_step_6.json").exists()


def test_unknown_config_name_is_one_line_listing_the_shipped_ones(tmp_path):
    proc = run_outside([vdm_script(), "eval", "--config=digtis", "--workdir=run"], tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --config=digtis") and "digits" in last and "mnist" in last
    assert not (tmp_path / "run").exists()


def test_vdm_without_a_command_prints_usage(tmp_path):
    proc = run_outside([vdm_script()], tmp_path)
    usage = "usage: vdm {train,eval,sample,compress,decompress}"
    assert proc.returncode != 0 and usage in proc.stderr
    assert "vdm import --from=google-research/vdm SRC --workdir=DIR" in proc.stderr


def test_resolve_names_paths_and_args():
    path = config_lib.resolve("mnist:smoke")
    assert path.endswith(os.path.join("vdm", "configs", "mnist.py") + ":smoke")
    real = os.path.join(ROOT, "configs", "digits.py")
    assert config_lib.resolve(real + ":arg") == real + ":arg"
    with pytest.raises(config_lib.ConfigError, match="some/dir/x.py does not exist"):
        config_lib.resolve("some/dir/x.py:arg")
    assert set(config_lib.named_configs()) >= {"default", "digits", "mnist", "swirl2d"}
    assert config_lib.load_file("digits:smoke").training.num_steps == 6


def test_plot_draws_a_real_run_and_compares_two(outside_run, tmp_path):
    workdir = str(outside_run / "run")
    proc = run_outside([vdm_script(), "plot", workdir, workdir, "--labels=a,b"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = Image.open(os.path.join(workdir, "metrics.png"))
    assert png.size[0] > 800 and png.size[1] > 600
    assert np.asarray(png.convert("L")).std() > 10  # something is drawn, not a blank canvas


def test_plot_series_follow_the_metrics_file(tmp_path):
    rows = [
        {"step": 20, "split": "train", "bpd": 3.0, "gamma_0": -13.0},
        {"step": 10, "split": "train", "bpd": 4.0, "gamma_0": -13.2},
        {"step": 20, "split": "eval", "bpd": 3.5, "bpd_se": 0.1},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = plot.load(str(tmp_path))
    steps, values = plot.series(loaded, "train", "bpd")
    np.testing.assert_array_equal(steps, [10, 20])  # sorted by step, whatever the file order
    np.testing.assert_array_equal(values, [4.0, 3.0])
    steps, values = plot.series(loaded, "eval", "bpd")
    np.testing.assert_array_equal(values, [3.5])
    assert plot.series(loaded, "eval", "gamma_0")[0].size == 0
    assert plot.main([str(tmp_path), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 10_000
    assert plot.main([str(tmp_path / "missing")]) == 1


def test_plot_marks_each_eval_file_with_how_it_was_made(tmp_path):
    rows = [{"step": s, "split": "train", "bpd": 3.0 - s / 100} for s in (10, 20, 30)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pf_record = {
        "estimator": "pf_ode_iw",
        "dequantization": "truncated_normal",
        "importance_samples": 4,
        "trace": "hutchinson",
        "probe": "rademacher",
        "probes": 4,
        "solver": "tsit5",
        "rtol": 1e-5,
        "atol": 1e-5,
        "checkpoint_step": 30,
    }
    elbo_record = {"estimator": "elbo", "time": "continuous", "repeats": 2, "checkpoint_step": 30}
    result = {"step": 30, "bpd": 2.8, "bpd_se": 0.1, "elbo_record": elbo_record}
    result.update(pf_ode_bpd=2.6, pf_ode_bpd_se=0.2, pf_ode_record=pf_record)
    (tmp_path / "eval_step_30.json").write_text(json.dumps(result))
    (tmp_path / "eval_step_20.json").write_text(json.dumps({"step": 20, "bpd": 2.9}))  # old
    (tmp_path / "eval_step_30_1.json").write_text("{ half a file")  # skipped, not fatal
    points = plot.eval_points(str(tmp_path))
    assert [(s, b) for s, b, _, _ in points] == [(20, 2.9), (30, 2.6), (30, 2.8)]
    assert points[0][3] == "ELBO" and points[2][3] == "ELBO: ELBO, continuous, repeats 2"
    assert points[1][3].startswith("PF-ODE: truncated_normal dequantization, K = 4, Hutchinson ×4")
    assert "not a strict bound" in points[1][3]
    assert plot.main([str(tmp_path), "--out", str(tmp_path / "p.png")]) == 0
