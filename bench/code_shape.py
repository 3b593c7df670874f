"""Code-shape figures for reviews: the longest functions and the handler methods over 30
lines (server/handlers/), from the source tree given (default: this checkout).

    .venv/bin/python bench/code_shape.py [TREE]

Pair it with the tool library's `duplicates` for repeated blocks."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("server", "models", "adapters", "render")
HANDLER_LIMIT = 30


def functions(root: Path):
    """(lines, "path:line name", is_handler_method) for every function and method."""
    for path in sorted(root.glob("**/*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] not in PACKAGES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        handler_file = str(rel).startswith("server/handlers")
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield node.end_lineno - node.lineno + 1, f"{rel}:{node.lineno} {node.name}", False
            elif isinstance(node, ast.ClassDef):
                for f in node.body:
                    if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        yield (f.end_lineno - f.lineno + 1,
                               f"{rel}:{f.lineno} {node.name}.{f.name}", handler_file)


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parent.parent)
    rows = sorted(functions(root), reverse=True)
    print("longest functions:")
    for n, where, _ in rows[:10]:
        print(f"  {n:4d}  {where}")
    long_methods = [(n, w) for n, w, h in rows if h and n > HANDLER_LIMIT]
    print(f"handler methods over {HANDLER_LIMIT} lines: {len(long_methods)}")
    for n, where in long_methods:
        print(f"  {n:4d}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
