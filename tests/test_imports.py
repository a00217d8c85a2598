"""The import graph is a DAG of layers (import-linter's contracts in pyproject.toml), and the
package's modules import only at the top, except the CLI (start-up time) and optional extras."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tdppo"
# where a function-level import of tdppo buys something: the CLI's start-up time, and the
# package root's version (``import tdppo`` from a module the root itself loads lazily)
LAZY_OK = {"cli.py", "__init__.py", "manifest.py", "state.py"}


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    p = subprocess.run([str(lint)], capture_output=True, text=True, cwd=SRC.parents[1])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "broken" in p.stdout and ", 0 broken" in p.stdout


def test_no_tdppo_imports_inside_functions_outside_the_cli():
    found = []
    for path in SRC.rglob("*.py"):
        if path.name in LAZY_OK:
            continue
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tdppo"):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.module}")
                elif isinstance(node, ast.Import) and any(
                    a.name.startswith("tdppo") for a in node.names
                ):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, "imports of tdppo inside functions (a cycle held together?): " + str(found)
