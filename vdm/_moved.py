"""Old module paths (before the layout by role of 2026-12-04) kept importable for one release.

`import vdm.elbo`, `from vdm import train` and `from vdm.likelihood import …` still work: each
old name resolves to the module's new home (the same module object, so patching either name
patches both) with one `DeprecationWarning` naming the new path. CHANGELOG.md lists the moves.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "vdm.diffusion": "vdm.core.diffusion",
    "vdm.schedules": "vdm.core.schedules",
    "vdm.elbo": "vdm.core.elbo",
    "vdm.objectives": "vdm.core.objectives",
    "vdm.gmm": "vdm.core.gmm",
    "vdm.toy_data": "vdm.data.toy",
    "vdm.images": "vdm.data.images",
    "vdm.likelihood": "vdm.eval.likelihood",
    "vdm.fid": "vdm.eval.fid",
    "vdm.config": "vdm.run.config",
    "vdm.session": "vdm.run.session",
    "vdm.train": "vdm.run.train",
    "vdm.train_step": "vdm.run.train_step",
    "vdm.checkpoint": "vdm.run.checkpoint",
    "vdm.workdir": "vdm.run.workdir",
    "vdm.health": "vdm.run.health",
    "vdm.metrics_writer": "vdm.run.metrics",
    "vdm.plot": "vdm.run.plot",
    "vdm.preemption": "vdm.run.preemption",
    "vdm.orbax_quiet": "vdm.run.orbax_quiet",
    "vdm.samplers.generate": "vdm.run.generate",
}
# Moved out of the installed package: an import of these fails with the new place.
LEFT = {
    "vdm.report": "tools/report.py (python -m tools.report, from the repository root)",
    "vdm.compress.study": "experiments/studies/compress_study.py",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec  # the import system set the alias's spec: put it back

    def get_code(self, fullname):
        """`python -m OLD` (runpy) runs the new module's code."""
        return importlib.util.find_spec(self.new).loader.get_code(self.new)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in LEFT:
            raise ModuleNotFoundError(f"{fullname} moved out of the package: {LEFT[fullname]}")
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}", DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Puts the alias finder on `sys.meta_path` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
