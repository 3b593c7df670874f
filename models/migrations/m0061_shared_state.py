"""Shared state between nodes (issue 17, N identical nodes):

- change_marker: one row whose number every access-relevant change increments
  (models/changes.py) and every node re-reads a few times a second, so images switched off,
  a share revoked, a session ended or a user deactivated on one node are honoured by every
  node within a second;
- view_seen: which views were audited already (models/view_seen.py), so two nodes serving
  one session write one view record, not one each.

Idempotent: the tables and the marker's row are created only when missing."""
from ..changes import CHANGE_MODELS, ensure_row
from ..view_seen import VIEW_SEEN_MODELS


def up(db):
    db.create_tables(CHANGE_MODELS + VIEW_SEEN_MODELS, safe=True)
    ensure_row()


def down(db):
    db.drop_tables(CHANGE_MODELS + VIEW_SEEN_MODELS, safe=True)
