"""The package's shape: a stage module per stage notebook, no import circles, one error tree,
typed signatures, one spelling of a dtype."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import helpers
from helpers import paths
from helpers.errors import ReportError
from helpers.runner.pipeline import discover_stages

SRC = Path(helpers.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in a file (functions and `if TYPE_CHECKING:` blocks
    included: a circle of type hints is still a circle); `from pkg import sub` counts as
    importing pkg.sub."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names if a.name in known)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and node.module.startswith("helpers"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if sub in known else node.module)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in known}


def test_no_import_circles() -> None:
    known = _modules()
    graph = {m: _imports(p, known) - {m} for m, p in known.items()}
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_imports_flow_one_way() -> None:
    """Stages import tools, never another stage or the runner; tools import no stage; scripts
    import no stage internals (a stage's helper that a script needs belongs in the tools)."""
    known = _modules()
    stages = {m for m in known if m.startswith("helpers.stages.") and m != "helpers.stages.kit"}

    def stage_of(m: str) -> str:
        return ".".join(m.split(".")[:3])

    wrong = []
    for m, p in known.items():
        for n in _imports(p, known):
            if m in stages and (n.startswith("helpers.runner")
                                or (n in stages and stage_of(n) != stage_of(m))):
                wrong.append(f"{m} -> {n}")
            elif not m.startswith(("helpers.stages", "helpers.runner", "helpers.report",
                                   "helpers.cli", "helpers.saved",
                                   "helpers.compare")) and n.startswith("helpers.stages"):
                wrong.append(f"{m} -> {n}")
    for script in (paths.ROOT / "scripts").glob("*.py"):
        wrong += [f"scripts/{script.name} -> {n}" for n in _imports(script, known)
                  if n in stages and n.count(".") > 2]
    assert wrong == [], wrong


def test_every_stage_notebook_has_its_stage_module() -> None:
    for spec in discover_stages():
        importlib.import_module(f"helpers.stages.{spec.name}")
    assert (paths.NOTEBOOKS / "summary.ipynb").is_file()
    importlib.import_module("helpers.stages.summary")


def test_every_error_of_ours_derives_from_the_root() -> None:
    strays = []
    for info in pkgutil.walk_packages(helpers.__path__, "helpers."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__.startswith("helpers")
                    and not issubclass(obj, ReportError)):
                strays.append(f"{obj.__module__}.{name}")
    assert strays == []


def test_no_untyped_config_or_dtype_strings_in_the_source() -> None:
    offenders = []
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        for needle in ("cfg: Any", 'replace("torch.", "")', "replace('torch.', '')"):
            if needle in text:
                offenders.append(f"{name}: {needle}")
    assert offenders == []


def test_every_parameter_line_is_one_papermill_reads() -> None:
    """papermill skips a parameters-cell line it cannot parse (e.g. a comment holding '='),
    and a run parameter or knob on such a line would silently never arrive."""
    import nbformat
    import papermill

    for nb_path in sorted(paths.NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assigned = [t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)]
        read = list(papermill.inspect_notebook(str(nb_path)))
        assert read == assigned, f"{nb_path.name}: papermill reads {read}, the cell assigns {assigned}"
