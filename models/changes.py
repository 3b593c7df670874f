"""The change marker: how every node learns, within a fraction of a second, that something
deciding access has changed somewhere in the deployment.

Each process keeps short-lived caches of access facts (who a session cookie is, an exam's
image switch and patient, stored settings, the peer table) so that a frame costs no database
query. A change that must take effect at once (images switched off, a share or patient QR
revoked, a session ended, a staff account deactivated or its roles changed, an API token
revoked, an exam moved to another patient, a run-time setting or a peer changed) calls
`announce()` in the same transaction as the change: it adds one to the single row of table
`change_marker`. Every process reads that row every `change_poll_ms` (one primary-key
SELECT per process, whatever the number of requests: server/changes.py) and drops its
access caches when the number moved, so the next request of any node decides on fresh facts.

The row is updated in the change's own transaction, so the new number is never visible
before the change itself (a node cannot re-read the old facts after seeing the new number).
"""
from __future__ import annotations

import peewee as pw

from .schema import BaseModel

ROW_ID = 1


class ChangeMarker(BaseModel):
    """One row (id 1): `generation` goes up by one with every access-relevant change."""
    generation = pw.BigIntegerField(default=0)

    class Meta:
        table_name = "change_marker"


CHANGE_MODELS = [ChangeMarker]


def announce() -> None:
    """Count one access-relevant change (call it inside the change's transaction)."""
    if not ChangeMarker.update(generation=ChangeMarker.generation + 1).where(
            ChangeMarker.id == ROW_ID).execute():
        ensure_row()
        ChangeMarker.update(generation=ChangeMarker.generation + 1).where(
            ChangeMarker.id == ROW_ID).execute()


def ensure_row() -> None:
    if ChangeMarker.get_or_none(ChangeMarker.id == ROW_ID) is None:
        try:
            ChangeMarker.insert(id=ROW_ID, generation=0).on_conflict_ignore().execute()
        except pw.IntegrityError:
            pass                     # another node made it meanwhile


def generation() -> int:
    """The current number (0 before the first change)."""
    row = (ChangeMarker.select(ChangeMarker.generation)
           .where(ChangeMarker.id == ROW_ID).tuples().first())
    return int(row[0]) if row else 0
