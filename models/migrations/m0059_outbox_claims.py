"""Outbox rows claimed row by row (issue 17, N identical nodes): outbox.claimed_by (the
worker delivering the message now) and outbox.claimed_until (when its claim runs out unless
renewed), so any number of outbox workers deliver each message once, and a message whose
worker died mid-delivery is taken by another once the claim has run out
(models/integration.py outbox_claim).

Idempotent: each column is added only when it is missing. Older code ignores the columns;
down drops them."""
from ..schema import Outbox
from .columns import add_columns, drop_columns

COLUMNS = ((Outbox, "claimed_by"), (Outbox, "claimed_until"))


def up(db):
    add_columns(db, COLUMNS)


def down(db):
    drop_columns(db, COLUMNS)
