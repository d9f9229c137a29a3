"""Every notebook (jupytext percent .py) executes end to end at SMOKE size and draws its
figures (tools/report.py, the same path that renders docs/notebooks/); the rendered copies in
docs/notebooks/ are of the notebooks as they are now."""

import os

import jupytext
import nbformat
import pytest

from tools import report

NOTEBOOKS = report.notebooks()


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_at_smoke_size_and_draws_its_figures(name, tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    info = report.render(name, NOTEBOOKS[name], str(tmp_path), smoke=True)
    assert info["figures"] >= 1, f"{name} drew no figure"
    nb = nbformat.read(str(tmp_path / f"{name}.ipynb"), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    md = (tmp_path / f"{name}.md").read_text()
    assert "at SMOKE size" in md and "Rendered by `python -m tools.report" in md
    pngs = sorted(os.listdir(tmp_path / f"{name}_files"))
    assert len(pngs) == info["figures"]
    assert all((tmp_path / f"{name}_files" / p).stat().st_size > 2_000 for p in pngs)


def _code(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if c.cell_type == "code" and c.source.strip()]


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_rendered_notebook_is_of_the_current_source(name):
    """docs/notebooks/<name>.ipynb exists, has figures, and runs the code in notebooks/ now:
    a notebook edited without re-rendering (python -m tools.report --only=NAME) fails here."""
    path = os.path.join(report.OUT_DIR, f"{name}.ipynb")
    assert os.path.exists(path), f"not rendered: python -m tools.report --only={name}"
    rendered = nbformat.read(path, as_version=4)
    assert _code(rendered) == _code(jupytext.read(NOTEBOOKS[name])), (
        f"{path} is stale: python -m tools.report --only={name}"
    )
    images = [
        o
        for c in rendered.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert images, f"{path} holds no figure"
