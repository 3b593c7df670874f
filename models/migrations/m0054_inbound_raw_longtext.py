"""inbound_message.raw holds a whole message, a report PDF in base64 included: LONGTEXT on
MySQL/MariaDB, whose TEXT stops at 64 KiB (a real report was refused there). SQLite: no
change (TEXT has no limit). Idempotent."""
from ..db import is_mysql


def up(db):
    if is_mysql():
        db.execute_sql("ALTER TABLE inbound_message MODIFY raw LONGTEXT NOT NULL")


def down(db):
    pass            # keeping LONGTEXT is harmless; shrinking could cut stored messages
