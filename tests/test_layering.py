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
