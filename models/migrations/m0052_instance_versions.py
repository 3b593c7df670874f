"""Instance versions (issue 15): the superseded files of an instance resent with corrected
attributes or other pixel data. Idempotent: the table is created only when missing."""
from ..schema import VERSION_MODELS


def up(db):
    db.create_tables(VERSION_MODELS, safe=True)


def down(db):
    db.drop_tables(list(reversed(VERSION_MODELS)), safe=True)
