"""Per-address failure limits (models/shares.py ip_failures) count the failed attempts of an
address over the last minutes from the audit trail. The index on (ip, time) of migration
0020 made the count walk every audit event of the address in that window, and behind a
hospital NAT (or nginx without trusted_proxies) that is every view and open of every patient:
thousands of rows per share open under load (issue 17's load bench: a third of the open's
database time). With the outcome in the index the count reads the failures only.

Idempotent: the index is created only when it is missing."""
from ..db import is_mysql
from ..schema import AuditEvent

INDEX = "auditevent_ip_outcome_time"


def up(db):
    table = AuditEvent._meta.table_name
    if INDEX not in {i.name for i in db.get_indexes(table)}:
        db.execute_sql(f"CREATE INDEX {INDEX} ON {table} (ip, outcome, time)")


def down(db):
    table = AuditEvent._meta.table_name
    if INDEX in {i.name for i in db.get_indexes(table)}:
        if is_mysql():
            db.execute_sql(f"DROP INDEX {INDEX} ON {table}")
        else:
            db.execute_sql(f"DROP INDEX {INDEX}")
