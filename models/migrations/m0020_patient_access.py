"""Patient access: SMS verification codes (stored hashed) and an index for the per-IP limits
counted from the audit trail."""
from ..schema import AuditEvent
from ..shares import SHARE_MODELS
from . import add_index, drop_index

INDEX = "auditevent_ip_time"


def up(db):
    db.create_tables(SHARE_MODELS, safe=True)
    add_index(db, AuditEvent, INDEX, "ip, time")


def down(db):
    drop_index(db, AuditEvent, INDEX)
    db.drop_tables(list(reversed(SHARE_MODELS)), safe=True)
