"""Integration: the event log of peers (refused associations, unreadable frames) and the
retrieve jobs that fetch exams from the PACS on demand."""
from ..integration import INTEGRATION_MODELS


def up(db):
    db.create_tables(INTEGRATION_MODELS, safe=True)


def down(db):
    db.drop_tables(list(reversed(INTEGRATION_MODELS)), safe=True)
