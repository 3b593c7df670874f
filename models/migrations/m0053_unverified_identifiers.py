"""Unverified identifiers and inbound content digests (issue 15):

- patient.id_number_unverified / patient.phone_unverified: an ID number or phone from the HIS
  that failed validation, kept masked only (never hashed, never used for identity checks), so
  the message carrying it is still applied;
- inbound_message.digest: the SHA-256 of a message's content, so a reused import-API
  message_id with a different body is answered 409.

Idempotent: a column is added only when it is missing."""
from ..schema import InboundMessage, Patient
from .columns import add_columns, drop_columns

COLUMNS = ((Patient, "id_number_unverified"), (Patient, "phone_unverified"),
           (InboundMessage, "digest"))


def up(db):
    add_columns(db, COLUMNS)


def down(db):
    drop_columns(db, COLUMNS)
