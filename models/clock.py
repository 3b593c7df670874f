"""The one clock of the data model: naive UTC to the second, as stored in every table.

Kept apart from models/schema.py so that code above models/ (handlers, adapters) can read the
time without importing the ORM tables."""
from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
