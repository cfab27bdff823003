"""The code's layout as a specification: which module may import which, and how big a module
and a function may grow (a function's docstring not counted). Every import counts, also
those inside functions and under ``TYPE_CHECKING``: a lazy import that closes a circle is
still a circle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("layers", "pipeline")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imported(path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``path`` imports (``from a import b`` counts as ``a.b``
    when that is a module, else as ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return {name for name in found if name in known} - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {name: imported(path, set(known)) for name, path in known.items()}
    # ``from pipeline.data import load`` names the module; the package's own __init__ is
    # imported too, but it is empty of imports, so the edge to it is dropped for clarity.
    return {name: {m for m in deps if m not in PACKAGES and not _is_package(m, known)}
            for name, deps in graph.items()}


def _is_package(name: str, known: dict[str, Path]) -> bool:
    return known[name].name == "__init__.py"


def cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Each import circle, once, as the list of modules on it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> Iterator[list[str]]:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                yield [*path[path.index(dep):], dep]
            elif dep not in state:
                yield from visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            yield from visit(node)


def test_no_import_cycle() -> None:
    found = [" -> ".join(c) for c in cycles(import_graph())]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_cycle_detection_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert list(cycles(graph)) == [["a", "b", "c", "a"]]


def test_layers_never_import_pipeline() -> None:
    graph = import_graph()
    wrong = {m: sorted(d for d in deps if d.startswith("pipeline"))
             for m, deps in graph.items() if m.startswith("layers")}
    assert not {m: d for m, d in wrong.items() if d}


def test_package_inits_import_nothing_of_the_project() -> None:
    """Importing ``pipeline.data`` must not pull in other concerns."""
    known = modules()
    heavy = {name: sorted(imported(p, set(known))) for name, p in known.items()
             if p.name == "__init__.py"}
    assert not {n: d for n, d in heavy.items() if d}


# Libraries that load when first needed, often in the middle of training: a Ctrl-C inside
# their compiled extensions' initialisation made the interpreter abort at exit.
SLOW_LIBRARIES = ("matplotlib", "sklearn", "scipy", "pandas")


def test_slow_libraries_load_lazily_only_through_imported() -> None:
    """Inside a function, matplotlib, scikit-learn, SciPy and pandas are loaded with
    ``pipeline.interrupts.imported`` (Ctrl-C held until the import is done), never by an
    import statement; at the top of a module they are not imported at all."""
    wrong = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                    and ast.unparse(node.test) == "TYPE_CHECKING"
                    for n in ast.walk(node)}  # type hints only: never run
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            if id(node) not in checking and any(
                    n.split(".")[0] in SLOW_LIBRARIES for n in names):
                wrong.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_size(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines"


def code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines from ``def`` to its end, its docstring left out."""
    lines = function.end_lineno - function.lineno + 1
    first = function.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


@pytest.mark.parametrize("name", sorted(modules()))
def test_function_size(name: str) -> None:
    tree = ast.parse(modules()[name].read_text())
    long = {n.name: code_lines(n) for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and code_lines(n) > MAX_FUNCTION_LINES}
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines: {long}"
