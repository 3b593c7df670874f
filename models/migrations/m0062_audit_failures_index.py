"""Per-address failure limits (models/shares.py ip_failures) count the failed attempts of an
address over the last minutes from the audit trail. The index on (ip, time) of migration
0020 made the count walk every audit event of the address in that window, and behind a
hospital NAT (or nginx without trusted_proxies) that is every view and open of every patient:
thousands of rows per share open under load (issue 17's load bench: a third of the open's
database time). With the outcome in the index the count reads the failures only.

Idempotent: the index is created only when it is missing."""
from ..schema import AuditEvent
from . import add_index, drop_index

INDEX = "auditevent_ip_outcome_time"


def up(db):
    add_index(db, AuditEvent, INDEX, "ip, outcome, time")


def down(db):
    drop_index(db, AuditEvent, INDEX)
