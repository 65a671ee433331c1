"""shardgear/proto stays sans-IO: its modules import nothing but a few pure stdlib modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import shardgear.proto

PROTO_DIR = Path(shardgear.proto.__file__).parent
ALLOWED = {"struct", "enum", "dataclasses", "typing", "__future__", "collections", "re"}
SIBLING_PREFIX = "shardgear.proto."
MODULES = sorted(PROTO_DIR.glob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Every imported module name (absolute, or '.name' for relative imports) with its line."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "." * node.level + (node.module or "")))
            else:
                found.append((node.lineno, node.module or ""))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            found.append((node.lineno, "__import__()"))
    return found


def _allowed(name: str) -> bool:
    if name.startswith(SIBLING_PREFIX):
        return name.count(".") == 2  # shardgear.proto.<module>, no deeper, no other package
    if name.startswith(".") and not name.startswith(".."):
        return True  # from .sibling import x
    return name.split(".")[0] in ALLOWED


def test_the_package_has_modules() -> None:
    names = {path.name for path in MODULES}
    assert {"__init__.py", "packets.py", "parser.py", "admin.py", "errors.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_only_pure_modules(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = [f"{path.name}:{line}: {name}" for line, name in _imports(tree) if not _allowed(name)]
    assert not bad, "proto/ must not do I/O; forbidden imports:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "name",
    ["os", "socket", "time", "logging", "asyncio", "posix_ipc", "shardgear.shm", "..front"],
)
def test_checker_rejects_io_modules(name: str) -> None:
    assert not _allowed(name)


@pytest.mark.parametrize(
    "name", ["struct", "collections.abc", "typing", "shardgear.proto.errors", ".packets"]
)
def test_checker_accepts_pure_modules(name: str) -> None:
    assert _allowed(name)
