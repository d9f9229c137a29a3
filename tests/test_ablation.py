"""The schedule-ablation runner (experiments/ablate_schedules.py): grid, report, resumability."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import ablate_schedules  # noqa: E402


def test_grid_skips_variance_min_in_discrete_time():
    names = [
        n
        for n, _ in ablate_schedules.cells(
            ["fixed_linear", "learned_net+vm"], [0, 10], [False, True], [0]
        )
    ]
    assert len(names) == 2 * 2 + 1 * 2
    assert not any("vm" in n and "_T10_" in n for n in names)


def test_runner_writes_report_and_does_not_rerun_finished_cells(tmp_path, capsys):
    args = [
        "--config",
        os.path.join(ROOT, "configs/digits.py:smoke"),
        "--steps",
        "2",
        "--schedules",
        "learned_net+vm",
        "--times",
        "0",
        "--fourier",
        "off",
        "--out",
        str(tmp_path),
    ]
    rows = ablate_schedules.main(args)
    assert len(rows) == 1 and rows[0]["schedule"] == "learned_net+vm"
    for key in (
        "bpd",
        "bpd_se",
        "diffusion_var_train",
        "diffusion_var_eval",
        "gamma_0",
        "gamma_1",
        "wall_s",
    ):
        assert key in rows[0]
    for f in ("results.json", "results.md", "bpd.png", "gamma.png"):
        assert (tmp_path / f).exists()
    done = tmp_path / "cells" / rows[0]["name"] / "ablation_cell.json"
    mtime = done.stat().st_mtime
    capsys.readouterr()
    again = ablate_schedules.main(args)
    assert "[done]" in capsys.readouterr().out and done.stat().st_mtime == mtime
    assert again == rows


def test_bad_grid_values_are_clear_errors(capsys):
    with pytest.raises(SystemExit):
        ablate_schedules.main(["--schedules", "linear"])
    assert "--schedules must be drawn from" in capsys.readouterr().err
