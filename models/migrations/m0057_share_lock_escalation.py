"""Share lock escalation (issue 14 item 8): share.lock_count and patient_share.lock_count,
the locks a share or patient QR has had. The first lock lasts 15 minutes, the second an hour,
the third lasts until the front desk unlocks it (models/shares.py LOCK_STEPS).

Idempotent: a column is added only when it is missing."""
from ..schema import PatientShare, Share
from .columns import add_columns, drop_columns

COLUMNS = ((Share, "lock_count"), (PatientShare, "lock_count"))


def up(db):
    add_columns(db, COLUMNS)


def down(db):
    drop_columns(db, COLUMNS)
