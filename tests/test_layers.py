"""The direction of imports: each layer uses only the layers below it.

``fabric/`` is the library every node shares, ``topology/`` describes and
launches a deployment, ``nodes/`` are the processes, ``tools/`` the command
line and ``perf/`` the benchmarks (docs/architecture.md).  A node that imports
the command line, or a library module that imports the deployment, turns the
layers into a knot: this test walks every import, at any depth of the code,
and fails on one that points the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What each package may import from the project (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "fabric": frozenset(),
    "topology": frozenset({"fabric"}),
    "nodes": frozenset({"fabric", "topology"}),
    "tools": frozenset({"fabric", "topology", "nodes", "perf"}),
    "perf": frozenset({"fabric", "topology", "nodes", "tools"}),
}


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    # Every module an import statement names, with its line: top level, inside functions, relative or not
    # (a relative import stays inside `package`).
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, package if node.level else node.module or ""))
    return out


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_the_layers(package: str) -> None:
    wrong = []
    for path in _files(package):
        for line, module in _imports(path, package):
            top = module.split(".")[0]
            if top in ALLOWED and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    # The check must not pass because it looked only at the top of a file.
    src = tmp_path / "probe.py"
    src.write_text("import os\n\ndef f():\n    from topology.load import load\n    from . import book\n"
                   "    import tools.cli\n    return load, book, tools\n")
    assert _imports(src, "fabric") == [(1, "os"), (4, "topology.load"), (5, "fabric"), (6, "tools.cli")]
