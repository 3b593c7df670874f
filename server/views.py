"""Audit of views, aggregated: one record per session and object, not one per frame.

Each process remembers what it has audited (no database work for the next frames); the
decision to write a record is taken in the database (models/view_seen.py), so the nodes and
processes that serve one session's frames write one record between them."""
from __future__ import annotations

import logging
import threading
import time

from models.db import connection, outage, unavailable, write_transaction

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0


class ViewAudit:
    def __init__(self, auditor, db_executor):
        self.auditor = auditor
        self.db_executor = db_executor
        self._seen: set = set()
        self._lock = threading.Lock()
        self._pruned_at = time.monotonic()

    def seen(self, handler, action: str, object_type: str, object_id) -> None:
        p = handler.principal
        if p is None:
            return
        key = (p.kind, p.subject, p.session_id, action, str(object_id))
        with self._lock:
            if key in self._seen:
                return
            if len(self._seen) > 200_000:
                self._seen.clear()
            self._seen.add(key)
        kind, subject = p.audit_actor()
        ip = handler.client_ip()

        def write():
            from models.view_seen import first_view, prune, view_key
            try:
                with connection():
                    with write_transaction():
                        if first_view(view_key(*key)):
                            self.auditor.record(action, actor_kind=kind, actor_id=subject,
                                                ip=ip, object_type=object_type,
                                                object_id=str(object_id))
                    if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
                        self._pruned_at = time.monotonic()
                        prune()
            except Exception as exc:  # noqa: BLE001 - a view is already served; log loudly
                if unavailable(exc):
                    outage.failed(exc)      # one line per outage; the next view records it
                else:
                    log.exception("audit write for a view failed")
                with self._lock:
                    self._seen.discard(key)
        self.db_executor.submit(write)
