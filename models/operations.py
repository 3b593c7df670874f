"""Facts for operations (the /metrics scrape, server/metrics.py): the outbox backlog and the
leases this node holds. Two small queries on indexed columns (sent outbox rows are never
counted), cheap enough for every scrape."""
from __future__ import annotations

import socket

import peewee as pw

from .leases import Lease
from .schema import Outbox, utcnow


def this_node() -> str:
    """The host part of a lease holder (models/leases.py holder_id: host:pid:random)."""
    return socket.gethostname()[:40]


def operations_facts() -> dict:
    """{"outbox": {(channel, status): n} for pending and dead messages,
    "outbox_oldest_age_s": age of the oldest pending message (0 when none),
    "leases": {lease name: held by a process of this node (and not expired)}}."""
    now = utcnow()
    rows = (Outbox.select(Outbox.channel, Outbox.status, pw.fn.COUNT(Outbox.id).alias("n"))
            .where(Outbox.status.in_(("pending", "dead")))
            .group_by(Outbox.channel, Outbox.status).tuples())
    outbox = {(channel, status): n for channel, status, n in rows}
    oldest = (Outbox.select(pw.fn.MIN(Outbox.created_at))
              .where(Outbox.status == "pending").scalar())
    if isinstance(oldest, str):                # SQLite hands aggregates back as text
        import datetime as dt
        oldest = dt.datetime.fromisoformat(oldest)
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    node = this_node() + ":"
    leases = {}
    for name, holder, until in Lease.select(Lease.name, Lease.holder,
                                            Lease.expires_at).tuples():
        leases[name] = bool(holder.startswith(node) and until is not None and until > now)
    return {"outbox": outbox, "outbox_oldest_age_s": age, "leases": leases}
