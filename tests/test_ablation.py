"""The schedule-ablation runner (experiments/studies/ablate_schedules.py): grid, report,
resumability."""

import json
import os

import pytest

from experiments.common import ROOT
from experiments.studies import ablate_schedules


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


def test_fourier_ablation_reports_kept_cells_without_training(tmp_path, capsys):
    """experiments/studies/fourier_ablation.py --keep/--report-only: a grid of ≈ 2 h cells run a
    few at a time keeps each finished cell's row; the report draws from whatever is finished."""
    import json

    from experiments.studies import fourier_ablation

    keep, out = tmp_path / "keep", tmp_path / "out"
    grid = ["--cells=off,gated", "--seeds=0", "--steps=20", "--every=10", "--repeats=1"]
    grid += ["--eval_examples=8", f"--out={out}", f"--keep={keep}"]
    curve = [
        dict(step=s, bpd=b, bpd_se=0.1, recon=0.1, prior=0.0, diffusion=b - 0.1, gamma_0=-13.0,
             gamma_1=5.0)
        for s, b in ((10, 3.0), (20, 2.5))
    ]  # fmt: skip
    row = dict(cell="gated", seed=0, name="gated_seed0", steps=20, every=10, eval_examples=8,
               repeats=1, wall_s=1.0, curve=curve, gammas=[-13.0, 6.0],
               by_gamma=[0.1, 0.01])  # fmt: skip
    (keep / "gated_seed0").mkdir(parents=True)
    (keep / "gated_seed0" / "fourier_cell.json").write_text(json.dumps(row))
    rows = fourier_ablation.main([*grid, "--report-only"])
    assert rows == [row]
    assert "1 of 2 cells finished; to run: off_seed0" in capsys.readouterr().out
    assert "| gated | 1 | 20 | 2.5000 |" in (out / "results.md").read_text()
    assert not (out / "cells").exists()  # nothing trained
    # a row measured under other settings is not this grid's
    with pytest.raises(SystemExit):
        fourier_ablation.main([*grid, "--report-only", "--steps=40", "--every=20"])
    assert "no finished cell" in capsys.readouterr().err


def test_a_fourier_row_of_the_earlier_format_still_counts_as_finished(tmp_path, capsys):
    """Rows written before the shared grid runner carried their settings as a `key` list."""
    import json

    from experiments.studies import fourier_ablation

    keep, out = tmp_path / "keep", tmp_path / "out"
    old = dict(cell="off", seed=0, key=[20, 10, 8, 1], wall_s=1.0, gammas=[-13.0, 6.0],
               by_gamma=[0.1, 0.01], curve=[dict(step=20, bpd=2.5, bpd_se=0.1, recon=0.1,
               prior=0.0, diffusion=2.4, gamma_0=-13.0, gamma_1=5.0)])  # fmt: skip
    (keep / "off_seed0").mkdir(parents=True)
    (keep / "off_seed0" / "fourier_cell.json").write_text(json.dumps(old))
    grid = ["--cells=off", "--seeds=0", "--steps=20", "--every=10", "--repeats=1"]
    grid += ["--eval_examples=8", f"--out={out}", f"--keep={keep}", "--report-only"]
    assert fourier_ablation.main(grid) == [old]
    with pytest.raises(SystemExit):  # measured under other settings: not this grid's
        fourier_ablation.main([*grid, "--repeats=2"])


def test_config_overrides_are_typed_and_refuse_what_they_cannot_set():
    from experiments import grid
    from vdm.run.config import load_file

    c = grid.override(
        load_file("configs/digits.py:smoke"),
        ["training.num_steps=7", "model.fourier_features=false", "schedule.name=cosine"],
    )
    assert c.training.num_steps == 7 and c.model.fourier_features is False
    assert c.schedule.name == "cosine"
    for item, match in [
        ("model.fourier_features=yes", "True or False"),
        ("training.num_steps=many", "takes a int"),
        ("seed=1", "not a config field"),
        ("model.n_embed=8", "not a config field"),
    ]:
        with pytest.raises(ValueError, match=match):
            grid.override(load_file("configs/digits.py:smoke"), [item])


def test_likelihood_cells_are_kept_per_checkpoint_step(tmp_path):
    """A run trained further has no cell at its new step (measured afresh); the earlier
    step's cell is still found for that step, and one written before steps were in the name
    counts for the step its rows carry."""
    from experiments.studies import likelihood_estimators as study

    cells, work = tmp_path / "cells", tmp_path / "run"
    cells.mkdir()
    (work / "checkpoints" / "300").mkdir(parents=True)
    (cells / "m_exact_n4_d2.json").write_text(json.dumps([{"checkpoint_step": 100, "bpd": 1.0}]))
    (cells / "m_exact_n4_d2_s200.json").write_text(json.dumps([{"checkpoint_step": 200}]))
    assert study.latest_step(str(work)) == 300
    assert study.kept_cell(str(cells), "m_exact_n4_d2", 300) is None
    assert study.kept_cell(str(cells), "m_exact_n4_d2", 100)[1][0]["bpd"] == 1.0
    assert study.kept_cell(str(cells), "m_exact_n4_d2", None)[0].endswith("_s200.json")
    assert study.latest_step(str(tmp_path / "elsewhere")) is None
    assert study.kept_cell(str(cells), "m_exact_n4_d16", None) is None


def test_runner_takes_the_multivariate_axis_with_curves_and_maps(tmp_path):
    """The schedules with a γ per dimension (per pixel, and chosen by each image) run through
    the same grid: their rows carry the mean curve, the γ̂(½) maps (the conditional one with
    its test images) and, with --evals, test bpd against steps and training seconds."""
    args = ["--config", os.path.join(ROOT, "configs/digits.py:smoke"), "--steps", "4"]
    args += ["--schedules", "learned_multivariate,learned_multivariate+cond", "--times", "0"]
    args += ["--fourier", "off", "--evals", "2", "--out", str(tmp_path)]
    args += ["--set", "schedule.latent_size=6", "--set", "schedule.encoder_embd=8"]
    rows = ablate_schedules.main(args)
    assert [r["schedule"] for r in rows] == ["learned_multivariate", "learned_multivariate+cond"]
    for r in rows:
        assert [p["step"] for p in r["curve"]] == [2, 4]
        assert r["curve"][1]["train_s"] > r["curve"][0]["train_s"] > 0
        assert len(r["gamma_curve"]) == 101
        maps = r["gamma_half_maps"]
        assert len(maps) == (ablate_schedules.MAP_IMAGES if "cond" in r["schedule"] else 1)
        assert len(maps[0]) == 8 and len(maps[0][0]) == 8
    assert rows[1]["latent"] >= 0 and "map_images" in rows[1]
    for f in ("curves.png", "gamma_maps.png", "results.md"):
        assert (tmp_path / f).exists()
