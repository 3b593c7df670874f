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


# Rule 2 of issue 13: server/ (its handlers above all) and adapters/ reach the database only
# through functions of models/, named for what they do; server/ never parses DICOM itself
# (render/ does). No allow-list: every such use has moved.
ORM_MODULES = {"models.schema", "peewee", "playhouse"}


def _module_imports(tree: ast.AST):
    """(module, line) for every absolute import; `from a import b` gives both a and a.b."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
            for a in node.names:
                yield f"{node.module}.{a.name}", node.lineno


def _db_aliases(tree: ast.AST) -> set[str]:
    """Local names bound to the models.db module (`from models import db as dbmod`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "models":
            names |= {a.asname or a.name for a in node.names if a.name == "db"}
        elif isinstance(node, ast.Import):
            names |= {a.asname for a in node.names if a.name == "models.db" and a.asname}
    return names


def orm_violations(path: Path) -> list[tuple[str, int, str]]:
    """(what, line, description) for each direct use of the ORM in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for mod in mods:
            orm = next((m for m in ORM_MODULES if mod == m or mod.startswith(m + ".")), None)
            if orm:
                out.append((orm, node.lineno, f"imports {mod}"))
            elif mod == "models.db.database":
                out.append(("models.db.database", node.lineno,
                            "imports models.db.database (run queries through models/ functions)"))
    aliases = _db_aliases(tree)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr == "database"
                and isinstance(node.value, ast.Name) and node.value.id in aliases):
            out.append(("models.db.database", node.lineno,
                        f"uses {node.value.id}.database (run queries through models/ functions)"))
    return out


def _files(*folders: str):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_server_and_adapters_do_not_touch_the_orm():
    problems = [f"{f.relative_to(ROOT)}:{line} {what}"
                for f in _files("server", "adapters") for _m, line, what in orm_violations(f)]
    assert not problems, ("server/ and adapters/ call functions of models/ instead of "
                          "querying themselves:\n" + "\n".join(problems))


def test_server_never_imports_pydicom():
    problems = [f"{f.relative_to(ROOT)}:{line} imports {mod} (read DICOM through render/)"
                for f in _files("server")
                for mod, line in _module_imports(ast.parse(f.read_text(encoding="utf-8")))
                if mod.split(".")[0] == "pydicom"]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("from models.schema import Exam\n", "models.schema"),
    ("import models.schema\n", "models.schema"),
    ("import models.schema as s\n", "models.schema"),
    ("from models import schema\n", "models.schema"),
    ("import peewee as pw\n", "peewee"),
    ("from peewee import fn\n", "peewee"),
    ("from playhouse.shortcuts import model_to_dict\n", "playhouse"),
    ("def f():\n    from models.db import database\n", "models.db.database"),
    ("from models import db as dbmod\nx = dbmod.database\n", "models.db.database"),
    ("import models.db as dbmod\nx = dbmod.database\n", "models.db.database"),
])
def test_the_rule_catches_each_form(tmp_path, source, expected):
    f = tmp_path / "h.py"
    f.write_text(source, encoding="utf-8")
    found = orm_violations(f)
    assert [what for what, _l, _d in found] == [expected], found
    assert all(line >= 1 for _w, line, _d in found)


def test_allowed_forms_pass(tmp_path):
    f = tmp_path / "h.py"
    f.write_text("from models import db as dbmod\nfrom models.db import write_transaction\n"
                 "from models.catalog import find_exam\nwith dbmod.connection():\n    pass\n",
                 encoding="utf-8")
    assert orm_violations(f) == []


def test_handler_methods_stay_short():
    """A handler parses, calls a use case and answers: its methods stay within 30 lines
    (the work belongs in server/signin.py, server/settings.py, models/ or adapters/)."""
    long = []
    for f in sorted((ROOT / "server" / "handlers").glob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            for fn in cls.body:
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                        fn.end_lineno - fn.lineno + 1 > 30:
                    long.append(f"{f.relative_to(ROOT)}:{fn.lineno} {cls.name}.{fn.name} "
                                f"({fn.end_lineno - fn.lineno + 1} lines)")
    assert not long, "handler methods over 30 lines:\n" + "\n".join(long)
