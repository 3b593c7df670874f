"""Unverified identifiers and inbound content digests (issue 15):

- patient.id_number_unverified / patient.phone_unverified: an ID number or phone from the HIS
  that failed validation, kept masked only (never hashed, never used for identity checks), so
  the message carrying it is still applied;
- inbound_message.digest: the SHA-256 of a message's content, so a reused import-API
  message_id with a different body is answered 409.

Idempotent: a column is added only when it is missing."""
from playhouse.migrate import SchemaMigrator, migrate

from ..schema import InboundMessage, Patient

COLUMNS = ((Patient, "id_number_unverified"), (Patient, "phone_unverified"),
           (InboundMessage, "digest"))


def up(db):
    migrator = SchemaMigrator.from_database(db)
    for model, name in COLUMNS:
        table = model._meta.table_name
        if name not in {c.name for c in db.get_columns(table)}:
            migrate(migrator.add_column(table, name, model._meta.fields[name]))


def down(db):
    migrator = SchemaMigrator.from_database(db)
    for model, name in reversed(COLUMNS):
        table = model._meta.table_name
        if name in {c.name for c in db.get_columns(table)}:
            migrate(migrator.drop_column(table, name))
