"""Render the notebooks: `python -m tools.report [--only NAME,…] [--smoke] [--out docs/notebooks]`.

Each jupytext notebook under notebooks/ is executed headless (nbclient, a fresh kernel, the
notebooks/ directory as its working directory) and written to `--out` as
- `<name>.ipynb`: the notebook with its outputs, which GitHub renders with every figure;
- `<name>.md` and `<name>_files/*.png`: the same as Markdown with the figures as files, for
  the README and for reading without Jupyter.
A first cell records how it was made: the command, the commit, the date, the machine, the
wall time, and whether it ran at full or SMOKE size. Progress bars (stderr) are dropped.

Notebooks resume from their run directories (runs/, results/), so a re-render after a small
change only redraws. `--smoke` runs every notebook at CI size; `--smoke_only` picks the ones
that cannot run at full size here (e.g. cifar10_bpd offline) and says so in their first cell.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import glob
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
OUT_DIR = os.path.join(ROOT, "docs", "notebooks")
MAX_TEXT_LINES = 60


def notebooks() -> dict[str, str]:
    """name → path of every jupytext notebook (percent-format .py) under notebooks/."""
    paths = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.py")))
    return {os.path.basename(p)[:-3]: p for p in paths}


@contextlib.contextmanager
def _environment(**values):
    """Set (or, for a None value, remove) environment variables for the kernel, then restore."""
    old = {k: os.environ.get(k) for k in values}

    def apply(vals):
        for k, v in vals.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    apply(values)
    try:
        yield
    finally:
        apply(old)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except OSError:
        return "unknown"


def _is_progress(output) -> bool:
    return output.get("output_type") == "stream" and output.get("name") == "stderr"


def execute(path: str, smoke: bool, timeout: int = 4 * 3600):
    """Run notebook `path` in a fresh kernel; returns (executed notebook, seconds)."""
    import jupytext
    import nbclient

    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    t0 = time.time()
    # The kernel's own inline backend captures figures: no MPLBACKEND; no WORKDIR from outside.
    env = dict(SMOKE="1" if smoke else "0", VDM_ROOT=ROOT, MPLBACKEND=None, WORKDIR=None)
    with _environment(**env):
        client = nbclient.NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": os.path.dirname(path)}},
        )
        client.execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not _is_progress(o)]
    return nb, time.time() - t0


def provenance(name: str, smoke: bool, seconds: float, reason: str = "", commit: str = "") -> str:
    size = "SMOKE size (CI's tiny models: the pipeline, not the claims)" if smoke else "full size"
    command = f"python -m tools.report --only={name}" + (" --smoke" if smoke else "")
    lines = [
        f"*Rendered by `{command}` at commit {commit or _commit()}, "
        f"{datetime.date.today().isoformat()}, on {platform.machine()} "
        f"({os.cpu_count()} CPU cores, no accelerator) in {seconds / 60:.1f} min, at {size}.*",
    ]
    if reason:
        lines.append(f"*{reason}*")
    lines.append(f"*Source: `notebooks/{name}.py` (jupytext); outputs below are from that run.*")
    return "\n\n".join(lines)


def to_markdown(nb, name: str, files_dir: str) -> str:
    """The executed notebook as Markdown; image outputs written to `files_dir` as PNGs."""
    os.makedirs(files_dir, exist_ok=True)
    for old in glob.glob(os.path.join(files_dir, "*.png")):
        os.remove(old)
    parts, k = [], 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(cell.source)
            continue
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        parts.append(f"```python\n{cell.source}\n```")
        for out in cell.outputs:
            data = out.get("data", {})
            if "image/png" in data:
                k += 1
                fname = f"{name}_{k}.png"
                with open(os.path.join(files_dir, fname), "wb") as f:
                    f.write(base64.b64decode(data["image/png"]))
                parts.append(f"![{name} figure {k}]({os.path.basename(files_dir)}/{fname})")
            elif out.get("output_type") == "stream" or "text/plain" in data:
                text = out.get("text") or data.get("text/plain", "")
                lines = text.rstrip("\n").splitlines()
                if len(lines) > MAX_TEXT_LINES:
                    lines = [
                        *lines[:MAX_TEXT_LINES],
                        f"… ({len(lines) - MAX_TEXT_LINES} more lines)",
                    ]
                if lines:
                    parts.append("```text\n" + "\n".join(lines) + "\n```")
            elif out.get("output_type") == "error":
                parts.append(f"```text\n{out.get('ename')}: {out.get('evalue')}\n```")
    return "\n\n".join(parts) + "\n"


def render(name: str, path: str, out_dir: str, smoke: bool, reason: str = "") -> dict:
    """Execute one notebook and write `<name>.ipynb`, `<name>.md` and `<name>_files/`."""
    import nbformat

    commit = _commit()  # the code the kernel imports, before anything is committed meanwhile
    nb, seconds = execute(path, smoke)
    header = nbformat.v4.new_markdown_cell(provenance(name, smoke, seconds, reason, commit))
    nb.cells.insert(0, header)
    os.makedirs(out_dir, exist_ok=True)
    nbformat.write(nb, os.path.join(out_dir, f"{name}.ipynb"))
    md = to_markdown(nb, name, os.path.join(out_dir, f"{name}_files"))
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(md)
    figures = md.count("](" + f"{name}_files/")
    return {"name": name, "smoke": smoke, "seconds": round(seconds, 1), "figures": figures}


def _without_imports(source: str) -> str:
    """The code's syntax tree with its import statements and `sys.path` edits left out."""
    import ast

    def kept(node) -> bool:
        if isinstance(node, ast.Import | ast.ImportFrom):
            return False
        call = getattr(node, "value", None)
        return not (
            isinstance(node, ast.Expr)
            and isinstance(call, ast.Call)
            and ast.unparse(call.func).startswith("sys.path.")
        )

    tree = ast.parse(source)
    tree.body = [n for n in tree.body if kept(n)]
    return ast.dump(tree)


def relink(name: str, path: str, out_dir: str) -> dict:
    """Take the source's cells into the rendered notebook without running it, keeping its
    outputs: allowed only where every code cell differs from the one that ran in its import
    lines at most (a module moved), so that no output can depend on the change. Prose cells
    are taken as they are. The header says it was relinked, when and at which commit."""
    import jupytext
    import nbformat

    ipynb = os.path.join(out_dir, f"{name}.ipynb")
    rendered = nbformat.read(ipynb, as_version=4)
    header, body = rendered.cells[0], rendered.cells[1:]
    source = jupytext.read(path)
    if [c.cell_type for c in body] != [c.cell_type for c in source.cells]:
        raise ValueError(f"{name}: cells added, removed or reordered since the render: re-run it")
    for k, (old, new) in enumerate(zip(body, source.cells, strict=True)):
        if old.cell_type == "code" and old.source != new.source:
            if _without_imports(old.source) != _without_imports(new.source):
                raise ValueError(f"{name}: code cell {k + 1} changed beyond its imports: re-run it")
        old.source = new.source
    line = (
        f"*Relinked by `python -m tools.report --relink --only={name}` at commit "
        f"{_commit()}, {datetime.date.today().isoformat()}: only the notebook's import lines and "
        "prose changed since the run (the library may have); the outputs are the run's.*"
    )
    kept = [p for p in header.source.split("\n\n") if not p.startswith("*Relinked by ")]
    header.source = "\n\n".join([*kept, line])  # the latest relink replaces an earlier one
    nbformat.write(rendered, ipynb)
    md = to_markdown(rendered, name, os.path.join(out_dir, f"{name}_files"))
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(md)
    return {"name": name, "figures": md.count("](" + f"{name}_files/")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated notebook names (default: all)")
    p.add_argument("--smoke", action="store_true", help="run every notebook at SMOKE size")
    p.add_argument(
        "--smoke_only",
        default="cifar10_bpd",
        help="notebooks run at SMOKE size even without --smoke (their data or compute is not "
        "available here); their first cell says so",
    )
    p.add_argument("--out", default=OUT_DIR)
    p.add_argument(
        "--relink",
        action="store_true",
        help="take the notebooks' current cells into their rendered copies without running "
        "them; refused where a code cell changed beyond its imports",
    )
    args = p.parse_args(argv)
    try:
        import jupytext  # noqa: F401
        import nbclient  # noqa: F401
    except ImportError as e:
        print(f"error: {e.name} is missing: pip install -e '.[notebooks]'", file=sys.stderr)
        return 2
    available = notebooks()
    if not available:
        print(
            f"error: no notebooks under {NOTEBOOK_DIR} (tools/report.py runs from a checkout of "
            "the repository)",
            file=sys.stderr,
        )
        return 2
    names = [n for n in args.only.split(",") if n] or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        print(
            f"error: --only: no notebook {unknown[0]!r} (have: {', '.join(available)})",
            file=sys.stderr,
        )
        return 2
    if args.relink:
        for name in names:
            try:
                info = relink(name, available[name], args.out)
            except (ValueError, FileNotFoundError) as e:
                print(f"error: --relink: {e}", file=sys.stderr)
                return 2
            print(f"  → {args.out}/{name}.ipynb, .md relinked, {info['figures']} figures")
        return 0
    smoke_only = {n for n in args.smoke_only.split(",") if n}
    for name in names:
        smoke = args.smoke or name in smoke_only
        reason = (
            "Run at SMOKE size by `--smoke_only`: this notebook's full run needs data or "
            "compute this machine does not have (see the notebook's first section)."
            if smoke and not args.smoke
            else ""
        )
        print(f"tools.report: {name} ({'smoke' if smoke else 'full'}) …", flush=True)
        info = render(name, available[name], args.out, smoke, reason)
        print(
            f"  → {args.out}/{name}.ipynb, .md, {info['figures']} figures, "
            f"{info['seconds'] / 60:.1f} min",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
