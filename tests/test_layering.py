"""House rules on imports: the library never imports the CLI layer or click, and never shells out."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "salmonn").rglob("*.py"))
ALL_CODE = LIBRARY + sorted((ROOT / "salmonn_cli").rglob("*.py"))
CLI_ONLY = {"click", "rich", "salmonn_cli"}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_library_does_not_import_cli_layer(path):
    assert not (_imported_roots(path) & CLI_ONLY), f"{path} imports a CLI-only module"


@pytest.mark.parametrize("path", ALL_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_shell_true_and_safe_torch_load(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        keywords = {kw.arg: kw.value for kw in node.keywords}
        shell = keywords.get("shell")
        assert not (isinstance(shell, ast.Constant) and shell.value is True), (
            f"shell=True in {path}"
        )
        assert "trust_remote_code" not in keywords or (
            isinstance(keywords["trust_remote_code"], ast.Constant)
            and keywords["trust_remote_code"].value is False
        ), f"trust_remote_code in {path}"
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "load"
            and getattr(func.value, "id", "") == "torch"
        ):
            wo = keywords.get("weights_only")
            assert isinstance(wo, ast.Constant) and wo.value is True, (
                f"torch.load without weights_only=True in {path}:{node.lineno}"
            )


# --------------------------------------------------------------------------- the layers of the library

# Lower rows first. A module may import modules of its own row or a lower one; the top row's
# packages (serve, cluster, train, eval) do not import one another. Every import counts: module
# level, inside functions, and under TYPE_CHECKING.
LAYERS = [
    ("salmonn.constants", "salmonn.errors"),
    ("salmonn.config",),
    ("salmonn.audio",),
    ("salmonn.model",),
    ("salmonn.hub",),
    ("salmonn.jobs",),
    ("salmonn.serve", "salmonn.cluster", "salmonn.train", "salmonn.eval"),
]
TOP = len(LAYERS) - 1


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in LIBRARY}


def _imports(name: str, path: Path) -> set[str]:
    """The library modules that module ``name`` imports (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from package import submodule` imports the submodule (and names the package only
            # for its __init__, which these packages keep empty)
            targets = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES]
            if len(targets) < len(node.names):
                targets.append(module)
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _row(name: str) -> int | None:
    for row, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return row
    return None


def _top_package(name: str) -> str:
    return ".".join(name.split(".")[:2])


def test_every_library_module_has_a_row():
    assert [name for name in MODULES if name != "salmonn" and _row(name) is None] == []


def test_imports_run_downward():
    wrong = []
    for name, deps in GRAPH.items():
        row = _row(name)
        for dep in deps:
            if name == "salmonn":  # the public facade re-exports from every row
                continue
            if (
                dep == "salmonn"
            ):  # the top row may use the public names; below it, the defining module
                if row != TOP:
                    wrong.append(f"{name} -> the salmonn facade (import the defining module)")
                continue
            dep_row = _row(dep)
            if dep_row > row:
                wrong.append(f"{name} (row {row}) -> {dep} (row {dep_row})")
            elif row == TOP and dep_row == TOP and _top_package(dep) != _top_package(name):
                wrong.append(f"{name} -> {dep}: top packages do not import one another")
    assert wrong == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_sees_lazy_and_type_checking_imports():
    deps = GRAPH["salmonn.jobs.assembly"]  # imports TaskSpec under TYPE_CHECKING
    assert "salmonn.jobs.spec" in deps
