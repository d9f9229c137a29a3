"""The package layout by role: old module paths still import (one release), the layers hold."""

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

from tools import report
from vdm import _moved

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_an_old_path_is_the_moved_module_with_a_warning(old):
    code = (
        "import importlib, warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({_moved.MOVED[old]!r})\n"
        "assert old is new, (old, new)\n"
        f"assert old.__spec__.name == {_moved.MOVED[old]!r}\n"
        "msgs = [str(x.message) for x in w if x.category is DeprecationWarning]\n"
        f"assert msgs == [{f'{old} moved to {_moved.MOVED[old]}'!r}], msgs\n"
    )
    # A fresh interpreter, so neither name is cached from another test.
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_warning_shows_under_default_filters_at_the_users_import():
    """Python shows a DeprecationWarning by default only when it points into __main__."""
    out = subprocess.run(
        [sys.executable, "-c", "import vdm.elbo"], capture_output=True, text=True, cwd=ROOT
    )
    assert "<string>:1: DeprecationWarning: vdm.elbo moved to vdm.core.elbo" in out.stderr


def test_python_dash_m_of_an_old_path_runs_the_new_module():
    out = subprocess.run(
        [sys.executable, "-m", "vdm.plot", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0 and "usage: vdm plot" in out.stdout, out.stderr


def test_every_new_home_exists_and_no_old_file_is_left():
    for old, new in _moved.MOVED.items():
        assert importlib.util.find_spec(new) is not None, new
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), old


@pytest.mark.parametrize("old", sorted(_moved.LEFT))
def test_a_module_moved_out_of_the_package_fails_naming_its_new_place(old):
    with pytest.raises(
        ModuleNotFoundError, match="moved out of the package: .*(tools|experiments)/"
    ):
        importlib.import_module(old)


# The layers, bottom up; a module may import only from its own layer or below.
LAYERS = [
    {"vdm.runtime", "vdm.sharding", "vdm.signals", "vdm.gcs", "vdm.storage", "vdm.core"},
    {"vdm.data", "vdm.networks"},
    {"vdm.model", "vdm.samplers"},
    {"vdm.eval", "vdm.compress"},
    {"vdm.run", "vdm.configs"},
    {"vdm.importers"},
    {"vdm.main"},
]


def _layer(module: str) -> int | None:
    for k, layer in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in layer):
            return k
    return None


def test_no_import_runs_back_up_the_layers():
    wrong = []
    for path in (ROOT / "vdm").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        here = _layer(module)
        if here is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                there = _layer(name)
                if there is not None and there > here:
                    wrong.append(f"{module} imports {name}")
    assert not wrong, wrong


def test_relink_refuses_a_change_beyond_the_imports():
    old = "import numpy as np\nfrom vdm import elbo\nx = elbo.to_bpd(1.0, 2)\n"
    moved = "import numpy as np\nfrom vdm.core import elbo\nx = elbo.to_bpd(1.0, 2)\n"
    changed = "import numpy as np\nfrom vdm.core import elbo\nx = elbo.to_bpd(2.0, 2)\n"
    assert report._without_imports(old) == report._without_imports(moved)
    assert report._without_imports(old) != report._without_imports(changed)


def test_relink_end_to_end_keeps_outputs_and_refuses_a_code_change(tmp_path):
    import jupytext
    import nbformat

    src = tmp_path / "demo.py"
    src.write_text("# %% [markdown]\n# Demo\n\n# %%\nfrom vdm import elbo\nprint(1 + 1)\n")
    nb = jupytext.read(src)
    header = nbformat.v4.new_markdown_cell("*Rendered by hand.*")
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="2\n")]
    nb.cells[1].execution_count = 1
    nb.cells = [header] + nb.cells
    nbformat.write(nb, tmp_path / "demo.ipynb")

    src.write_text(
        "# %% [markdown]\n# Demo, moved\n\n# %%\nfrom vdm.core import elbo\nprint(1 + 1)\n"
    )
    report.relink("demo", str(src), str(tmp_path))
    out = nbformat.read(tmp_path / "demo.ipynb", as_version=4)
    assert out.cells[2].source == "from vdm.core import elbo\nprint(1 + 1)"
    assert out.cells[2].outputs[0]["text"] == "2\n"
    assert "Demo, moved" in out.cells[1].source and "Relinked by" in out.cells[0].source

    src.write_text("# %% [markdown]\n# Demo\n\n# %%\nfrom vdm.core import elbo\nprint(1 + 2)\n")
    with pytest.raises(ValueError, match="code cell 2 changed beyond its imports"):
        report.relink("demo", str(src), str(tmp_path))
