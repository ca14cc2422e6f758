"""The package's import rules (issue 22), beside the layer contracts in `.importlinter`:
no labelfactory import inside a function (they hid import cycles), no private name
imported across modules, and the contracts themselves hold."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "labelfactory"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _imports(tree: ast.AST):
    """(node, module, names, inside a function) for every `from labelfactory… import …`."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("labelfactory"):
                yield child, child.module, [a.name for a in child.names], in_function
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("labelfactory"):
                        yield child, a.name, [], in_function
            yield from walk(child, inner)
    yield from walk(tree, False)


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


# The command line defers each command's imports so that `labelfactory --help` starts without torch.
DEFERRED_IMPORTS = {PACKAGE / "cli.py"}


def test_no_labelfactory_import_inside_a_function():
    found = [_where(p, node) for p in SOURCES if p not in DEFERRED_IMPORTS
             for node, _, _, inside in _imports(ast.parse(p.read_text())) if inside]
    assert not found, "imports inside functions (move them to the top; a cycle means a module is misplaced):\n" \
        + "\n".join(found)


def test_no_private_name_is_imported_across_modules():
    found = [f"{_where(p, node)}: {module}.{name}" for p in SOURCES
             for node, module, names, _ in _imports(ast.parse(p.read_text()))
             for name in names if name.startswith("_") and not name.startswith("__")]
    assert not found, "private names imported from another module:\n" + "\n".join(found)


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed")
def test_import_contracts_hold():
    linter = Path(sys.executable).parent / "lint-imports"
    run = subprocess.run([str(linter), "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True,
                         text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout
