"""Numbered schema migrations.

Each module mNNNN_<name>.py defines ``up(db)`` and ``down(db)``. ``migrate()`` applies
the ones not yet recorded in SchemaVersion, in order, each recorded only after it finished.

Rule for authors: ``up`` must be idempotent (create with ``safe=True``, add a column only
when it is missing), because MySQL commits DDL implicitly and a migration interrupted by a
power cut must be able to run again from the start on the next start-up.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

from ..db import database
from ..schema import SchemaVersion

log = logging.getLogger(__name__)


def available() -> list[tuple[int, str, object]]:
    out = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("m") and info.name[1:5].isdigit():
            mod = importlib.import_module(f"{__name__}.{info.name}")
            out.append((int(info.name[1:5]), info.name, mod))
    return sorted(out, key=lambda t: t[0])


def applied() -> set[int]:
    if not database.table_exists(SchemaVersion._meta.table_name):
        return set()
    return {row.version for row in SchemaVersion.select()}


def migrate(target: int | None = None) -> list[str]:
    """Apply pending migrations up to target (all by default). Returns the names applied."""
    database.create_tables([SchemaVersion], safe=True)
    done = applied()
    ran = []
    for version, name, mod in available():
        if target is not None and version > target:
            break
        if version in done:
            continue
        log.info("applying migration %s", name)
        with database.atomic():
            mod.up(database)
            SchemaVersion.create(version=version, name=name)
        ran.append(name)
    return ran


def rollback(target: int) -> list[str]:
    """Undo migrations above target, newest first."""
    done = applied()
    ran = []
    for version, name, mod in reversed(available()):
        if version <= target or version not in done:
            continue
        with database.atomic():
            mod.down(database)
            SchemaVersion.delete().where(SchemaVersion.version == version).execute()
        ran.append(name)
    return ran


def current_version() -> int:
    done = applied()
    return max(done) if done else 0
