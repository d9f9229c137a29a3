"""Every notebook (jupytext percent .py) executes end to end at SMOKE size, via pytest + nbmake."""

import glob
import os
import subprocess
import sys

import jupytext
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.py")))


def test_every_notebook_is_collected():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {
        "swirl_2d.py",
        "likelihood_schedules.py",
        "likelihood_fashion_mnist.py",
        "cifar10_bpd.py",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_at_smoke_size(path, tmp_path):
    nb = jupytext.read(path)
    ipynb = tmp_path / (os.path.basename(path)[:-3] + ".ipynb")
    jupytext.write(nb, str(ipynb))
    env = dict(
        os.environ, SMOKE="1", VDM_ROOT=ROOT, JAX_PLATFORMS="cpu", MPLBACKEND="Agg", WORKDIR=""
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbmake",
            "--nbmake-timeout=600",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ipynb),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
