"""De-duplication of view audit records across every process and node.

A view is audited once per session and object (server/views.py): the first frame of a series
writes `series.view`, the next hundred do not. Each process remembers what it has audited;
this table makes the decision shared, so two nodes (or two processes) serving one phone's
frames write one record, not one each. A row is a keyed hash of the view's identity (never a
name or number) and when it was first seen; rows older than KEEP (longer than any session
lives) are pruned.
"""
from __future__ import annotations

import datetime as dt
import hashlib

import peewee as pw

from .schema import BaseModel, utcnow

KEEP = dt.timedelta(days=2)


class ViewSeen(BaseModel):
    key = pw.CharField(max_length=64, primary_key=True)
    seen_at = pw.DateTimeField(index=True)

    class Meta:
        table_name = "view_seen"


VIEW_SEEN_MODELS = [ViewSeen]


def view_key(*parts) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def first_view(key: str, now: dt.datetime | None = None) -> bool:
    """Claim a view (call it in the audit record's transaction): True for the one caller in
    the whole deployment that should audit it."""
    return bool(ViewSeen.insert(key=key, seen_at=now or utcnow()).on_conflict_ignore()
                .as_rowcount().execute())


def prune(now: dt.datetime | None = None) -> int:
    return ViewSeen.delete().where(ViewSeen.seen_at < (now or utcnow()) - KEEP).execute()
