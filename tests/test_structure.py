"""The package's shape: a layered import graph without cycles, small modules, docs tables that match bench results."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

from conftest import REPO

MAX_LAYERS = 9
MAX_LINES = 360


def _imports(path: Path) -> set[str]:
    """The ``src`` modules ``path`` imports, wherever in the file (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src."):
            found.add(node.module.split(".")[1])
    return found


MODULES = {path.stem: path for path in (REPO / "src").glob("*.py") if path.stem not in ("__init__", "__main__")}
GRAPH = {name: _imports(path) & set(MODULES) - {name} for name, path in MODULES.items()}


@cache
def _layer(name: str, seen: tuple[str, ...] = ()) -> int:
    assert name not in seen, f"import cycle: {' -> '.join(seen + (name,))}"
    return 1 + max((_layer(dep, seen + (name,)) for dep in GRAPH[name]), default=0)


def test_the_import_graph_has_no_cycle_and_few_layers() -> None:
    layers = {name: _layer(name) for name in GRAPH}
    assert max(layers.values()) <= MAX_LAYERS, sorted(layers.items(), key=lambda item: -item[1])[:5]


def test_no_module_is_long() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert max(lengths.values()) <= MAX_LINES, {name: n for name, n in lengths.items() if n > MAX_LINES}


def test_the_package_docstring_names_every_module() -> None:
    docstring = ast.get_docstring(ast.parse((REPO / "src" / "__init__.py").read_text()))
    assert not [name for name in MODULES if f"``{name}``" not in docstring]


def test_progress_bars_come_from_one_module() -> None:
    """``tqdm.auto`` opens a loader once more as its bar is made (``src/progress.py``)."""
    def imports_tqdm(path: Path) -> bool:
        return any(isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tqdm"
                   or isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "tqdm" for alias in node.names)
                   for node in ast.walk(ast.parse(path.read_text())))

    assert [name for name, path in MODULES.items() if imports_tqdm(path)] == ["progress"]


def test_the_docs_tables_match_the_bench_results() -> None:
    result = subprocess.run([sys.executable, "bench/tables.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
