"""Patient access: SMS verification codes (stored hashed) and an index for the per-IP limits
counted from the audit trail."""
from ..db import is_mysql
from ..schema import AuditEvent
from ..shares import SHARE_MODELS

INDEX = "auditevent_ip_time"


def up(db):
    db.create_tables(SHARE_MODELS, safe=True)
    table = AuditEvent._meta.table_name
    existing = {i.name for i in db.get_indexes(table)}
    if INDEX not in existing:
        db.execute_sql(f"CREATE INDEX {INDEX} ON {table} (ip, time)")


def down(db):
    table = AuditEvent._meta.table_name
    if INDEX in {i.name for i in db.get_indexes(table)}:
        if is_mysql():
            db.execute_sql(f"DROP INDEX {INDEX} ON {table}")
        else:
            db.execute_sql(f"DROP INDEX {INDEX}")
    db.drop_tables(list(reversed(SHARE_MODELS)), safe=True)
