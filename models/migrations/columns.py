"""Adding and dropping model columns in migrations, idempotently: a column is added only when
it is missing and dropped only when it is there (a migration interrupted by a power cut runs
again from the start)."""
from __future__ import annotations

from playhouse.migrate import SchemaMigrator, migrate


def add_columns(db, columns) -> None:
    """Add each (model, field name) of `columns` that the table lacks."""
    migrator = SchemaMigrator.from_database(db)
    for model, name in columns:
        table = model._meta.table_name
        if name not in {c.name for c in db.get_columns(table)}:
            migrate(migrator.add_column(table, name, model._meta.fields[name]))


def drop_columns(db, columns) -> None:
    """Drop each (model, field name) of `columns` that the table has, last first."""
    migrator = SchemaMigrator.from_database(db)
    for model, name in reversed(tuple(columns)):
        table = model._meta.table_name
        if name in {c.name for c in db.get_columns(table)}:
            migrate(migrator.drop_column(table, name))
