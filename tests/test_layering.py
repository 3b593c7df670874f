"""The import rules of architecture.md, read from the source."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"server", "render", "models", "adapters", "bench", "tests", "conf"}
ALLOWED = {
    "render": {"render"},
    "models": {"models"},
    "adapters": {"adapters", "models", "render"},
    "server": {"server", "models", "render", "adapters"},
}
THIRD_PARTY_FORBIDDEN = {
    "render": {"tornado", "peewee", "pymysql"},
    "models": {"tornado", "pydicom", "numpy", "numba"},
}


def imports_of(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package):
    problems = []
    for f in (ROOT / package).rglob("*.py"):
        for mod, line in imports_of(f):
            if mod in OURS and mod not in ALLOWED[package]:
                problems.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
            if mod in THIRD_PARTY_FORBIDDEN.get(package, ()):
                problems.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not problems, "\n".join(problems)


def test_no_print_in_library_code():
    problems = []
    for package in ("render", "models", "adapters"):
        for f in (ROOT / package).rglob("*.py"):
            tree = ast.parse(f.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id == "print"):
                    problems.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not problems, problems
