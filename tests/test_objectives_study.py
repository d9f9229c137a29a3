"""The objectives study runner (experiments/studies/objectives_study.py): its grid, its refusals and
its summary. The notebook test runs it end to end at smoke size."""

import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from experiments.studies import objectives_study  # noqa: E402
from vdm.run.config import load_file  # noqa: E402


def test_grid_names_every_cell_and_runs_seed_zero_first():
    cells = list(objectives_study.cells(["elbo", "sigmoid:-2"], ["uniform_t", "adaptive"], [0, 1]))
    names = [n for n, _ in cells]
    assert names[:4] == [
        "elbo_uniform_t_seed0",
        "elbo_adaptive_seed0",
        "sigmoid_b-2_uniform_t_seed0",
        "sigmoid_b-2_adaptive_seed0",
    ]
    assert len(set(names)) == 8
    setting = dict(cells)["sigmoid_b-2_adaptive_seed1"]
    assert setting["weighting"] == "sigmoid" and setting["shift"] == -2.0
    config = objectives_study.cell_config(load_file("configs/digits.py:smoke"), setting, 7)
    assert config.objective.weighting == "sigmoid" and config.objective.weighting_shift == -2.0
    assert config.objective.noise_dist == "adaptive" and config.seed == 1
    assert config.training.num_steps == 7 and not config.sample.fid


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--weightings=elbo,sigmod"], "sigmod.*one of"),
        (["--weightings=sigmoid:x"], "shift"),
        (["--noise=uniform"], "--noise must be drawn from"),
        (["--sampler=euler"], "--sampler must be drawn from"),
        (["--sampler=ddim,euler"], "--sampler must be drawn from.*'ddim,euler'"),
        (["--set=model.n_embed=8"], "model.n_embed.*not a config field"),
    ],
)
def test_bad_arguments_name_what_is_allowed(argv, match, capsys, tmp_path):
    with pytest.raises(SystemExit):
        objectives_study.main([*argv, f"--out={tmp_path}"])
    assert re.search(match, capsys.readouterr().err)
    assert not os.listdir(tmp_path)  # nothing run, nothing written


def _row(label, noise, seed, bpd, fid20, var_u, var_a=None):
    loss_var = {"uniform_t": {"mean": 1.0, "var": var_u}}
    if var_a is not None:
        loss_var["adaptive"] = {"mean": 1.0, "var": var_a}
    return dict(
        label=label,
        noise=noise,
        seed=seed,
        name=f"{label}_{noise}_seed{seed}",
        bpd=bpd,
        bpd_se=0.01,
        fid={"20": fid20},
        loss_var=loss_var,
        fid_n_used=10,
        sampler="ddim",
        fid_train_vs_test=1.0,
        classifier_test_accuracy=0.9,
    )


def test_summary_is_mean_and_se_over_seeds_and_the_paired_variance_ratio(tmp_path):
    rows = [
        _row("elbo", "uniform_t", 0, 2.0, 10.0, 4.0),
        _row("elbo", "uniform_t", 1, 2.2, 14.0, 4.0),
        _row("elbo", "adaptive", 0, 2.1, 12.0, 4.0, 1.0),
        _row("elbo", "adaptive", 1, 2.1, 12.0, 8.0, 4.0),
    ]
    summary = objectives_study.write_report(rows, str(tmp_path))
    uniform, adaptive = summary
    assert uniform["bpd"] == pytest.approx(2.1) and uniform["bpd_se"] == pytest.approx(0.1)
    assert uniform["fid20"] == pytest.approx(12.0) and uniform["fid20_se"] == pytest.approx(2.0)
    assert "var_ratio" not in uniform
    assert adaptive["var_ratio"] == pytest.approx(0.375)  # mean of 1/4 and 4/8
    table = (tmp_path / "results.md").read_text()
    assert "| elbo | adaptive | 2 | 2.1000 ± 0.0000 | 12.00 ± 0.00 | 0.38 ± 0.12 |" in table
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == summary
    assert (tmp_path / "bpd_fid.png").stat().st_size > 2000
    assert objectives_study.claims(summary) == [
        "lowest bpd: elbo, uniform_t: 2.1000",
        "lowest FID @ 20 NFE: elbo, uniform_t: 12.00",
        "Var L_w, adaptive p(λ) / uniform t on the same trained model: elbo 0.38 "
        "(geometric mean 0.38)",
    ]


def test_kept_rows_are_read_back_without_training_and_finished_cells_are_kept(tmp_path, capsys):
    """--keep: a grid longer than one sitting keeps its measured rows in a lasting folder."""
    keep, out = tmp_path / "keep", tmp_path / "out"
    grid = [
        "--config=configs/digits.py:smoke",
        "--steps=2",
        "--seeds=0",
        "--weightings=elbo",
        "--noise=uniform_t,adaptive",
        "--nfe=2",
        "--fid-n=40",
        f"--out={out}",
        f"--keep={keep}",
    ]
    want = {"steps": 2, "nfe": [2], "fid_n": 40, "sampler": "ddim"}
    kept = _row("elbo", "uniform_t", 0, 2.0, 10.0, 4.0) | want
    done = _row("elbo", "adaptive", 0, 2.1, 12.0, 4.0, 1.0) | want
    (keep / "elbo_uniform_t_seed0").mkdir(parents=True)
    (keep / "elbo_uniform_t_seed0" / "objectives_cell.json").write_text(json.dumps(kept))
    cell = out / "cells" / "elbo_adaptive_seed0"
    cell.mkdir(parents=True)
    (cell / "objectives_cell.json").write_text(json.dumps(done))
    (cell / "metrics.jsonl").write_text('{"step": 2, "split": "eval", "bpd": 2.1}\n')
    rows = objectives_study.main(grid)
    assert rows == [kept, done]  # both read back: nothing trained
    assert sorted(os.listdir(cell)) == ["metrics.jsonl", "objectives_cell.json"]
    moved = keep / "elbo_adaptive_seed0"
    assert json.loads((moved / "objectives_cell.json").read_text()) == done
    assert (moved / "metrics.jsonl").read_text() == (cell / "metrics.jsonl").read_text()
    assert json.loads((out / "results.json").read_text())["cells"] == [kept, done]

    # --report-only tabulates what is finished and names the rest; with nothing, it refuses
    longer = [a for a in grid if not a.startswith("--seeds")] + ["--seeds=0,1", "--report-only"]
    assert objectives_study.main(longer) == [kept, done]
    assert "2 of 4 cells finished; to run: elbo_uniform_t_seed1, elbo_adaptive_seed1" in (
        capsys.readouterr().out
    )
    with pytest.raises(SystemExit):
        objectives_study.main([*longer, f"--out={tmp_path / 'none'}", "--keep="])
    assert "no finished cell" in capsys.readouterr().err


def test_a_sampler_pick_is_reused_only_by_the_grid_it_was_measured_on(tmp_path):
    """--sampler=a,b: the first cell measures both; a rerun of the same grid reads the pick."""
    args = objectives_study.argparse.Namespace(
        keep="", out=str(tmp_path), samplers=["ancestral", "ddim"], steps=5, nfe=[2], fid_n=8
    )
    assert objectives_study.read_pick(args, "elbo_uniform_t_seed0") is None
    pick = objectives_study._pick_key(args, "elbo_uniform_t_seed0") | {"best": "ddim"}
    (tmp_path / "sampler_pick.json").write_text(json.dumps(pick))
    assert objectives_study.read_pick(args, "elbo_uniform_t_seed0") == "ddim"
    assert objectives_study.read_pick(args, "edm_uniform_t_seed0") is None  # another first cell
    args.fid_n = 16
    assert objectives_study.read_pick(args, "elbo_uniform_t_seed0") is None  # another N
