"""Tamper-evident audit trail.

Every record carries an HMAC over its own fields and the previous record's HMAC, so editing,
deleting or inserting a row breaks the chain at that row; `verify()` names the first one.
Appending locks the single AuditHead row, so concurrent writers (threads or processes, on
SQLite or MySQL) form one chain. Rows are never updated or deleted by the application (the
model refuses it, and database triggers refuse it too). Call `record()` inside the
transaction of the action it records: if the audit write fails, the action fails.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import logging
from dataclasses import dataclass
from typing import Iterable

from .db import database, is_mysql, write_transaction
from .schema import AuditEvent, AuditHead, utcnow

log = logging.getLogger(__name__)

FIELDS = ("id", "time", "actor_kind", "actor_id", "ip", "action", "object_type", "object_id",
          "outcome", "detail", "prev_hmac")


class AuditError(Exception):
    pass


def _canonical(values: dict) -> bytes:
    parts = []
    for f in FIELDS:
        v = values[f]
        if f == "time":
            v = v.strftime("%Y-%m-%d %H:%M:%S")
        parts.append(str(v if v is not None else "").replace("\x1f", " "))
    return "\x1f".join(parts).encode("utf-8")


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    problem: str = ""
    record_id: int | None = None


class Auditor:
    def __init__(self, secret_key: bytes):
        self._key = hmac.new(secret_key, b"cloudfilm audit chain v1", hashlib.sha256).digest()

    def _mac(self, values: dict) -> str:
        return hmac.new(self._key, _canonical(values), hashlib.sha256).hexdigest()

    def record(self, action: str, *, actor_kind: str, actor_id: str = "", ip: str = "",
               object_type: str = "", object_id: str = "", outcome: str = "ok",
               detail: str = "") -> AuditEvent:
        """Append one record (inside the caller's transaction, if any)."""
        with write_transaction():
            q = AuditHead.select().where(AuditHead.id == 1)
            if is_mysql():
                q = q.for_update()
            head = q.first()
            if head is None:
                raise AuditError("audit chain head missing: run the migrations")
            values = dict(id=head.last_id + 1, time=utcnow(), actor_kind=actor_kind[:16],
                          actor_id=str(actor_id)[:64], ip=(ip or "")[:64], action=action[:64],
                          object_type=object_type[:32], object_id=str(object_id)[:128],
                          outcome=outcome[:16], detail=detail[:2000], prev_hmac=head.last_hmac)
            values["hmac"] = self._mac(values)
            AuditEvent.insert(**values).execute()
            AuditHead.update(last_id=values["id"], last_hmac=values["hmac"]).where(
                AuditHead.id == 1).execute()
        return AuditEvent(**values)

    def verify(self) -> VerifyResult:
        """Walk the chain; name the first edited, inserted or missing record."""
        prev_hmac = ""
        expected_id = 1
        n = 0
        for row in AuditEvent.select().order_by(AuditEvent.id).iterator():
            values = {f: getattr(row, f) for f in FIELDS}
            if row.id != expected_id:
                return VerifyResult(False, n, f"record {expected_id} is missing (next present "
                                              f"is {row.id})", expected_id)
            if row.prev_hmac != prev_hmac:
                return VerifyResult(False, n, f"record {row.id} does not follow record "
                                              f"{row.id - 1} (chain broken)", row.id)
            if not hmac.compare_digest(self._mac(values), row.hmac or ""):
                return VerifyResult(False, n, f"record {row.id} was edited (HMAC mismatch)",
                                    row.id)
            prev_hmac = row.hmac
            expected_id += 1
            n += 1
        head = AuditHead.get_or_none(AuditHead.id == 1)
        if head is not None and head.last_id != n:
            return VerifyResult(False, n, f"records after {n} are missing (the chain head says "
                                          f"{head.last_id})", n + 1)
        return VerifyResult(True, n)

    def export_csv(self, rows: Iterable[AuditEvent]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(FIELDS[1:-1] + ("hmac",))
        for r in rows:
            w.writerow([getattr(r, f) for f in FIELDS[1:-1]] + [r.hmac])
        return buf.getvalue()


@dataclass(frozen=True)
class AuditFilter:
    """What the audit admin asked for; empty fields do not filter."""
    action: str | None = None          # prefix
    actor: str | None = None
    object_id: str | None = None
    outcome: str | None = None
    time_from: dt.datetime | None = None     # inclusive
    time_to: dt.datetime | None = None       # exclusive

    def query(self):
        q = AuditEvent.select()
        if self.action:
            q = q.where(AuditEvent.action.startswith(self.action))
        if self.actor:
            q = q.where(AuditEvent.actor_id == self.actor)
        if self.object_id:
            q = q.where(AuditEvent.object_id == self.object_id)
        if self.outcome:
            q = q.where(AuditEvent.outcome == self.outcome)
        if self.time_from:
            q = q.where(AuditEvent.time >= self.time_from)
        if self.time_to:
            q = q.where(AuditEvent.time < self.time_to)
        return q


def audit_page(f: AuditFilter, page: int, per_page: int) -> tuple[int, list[AuditEvent]]:
    """(matching records, one page of them, newest first)."""
    q = f.query()
    total = q.count()
    return total, list(q.order_by(AuditEvent.id.desc()).paginate(page, per_page))


def audit_rows(f: AuditFilter, limit: int) -> list[AuditEvent]:
    """The matching records, oldest first, at most `limit` (CSV export)."""
    return list(f.query().order_by(AuditEvent.id).limit(limit))


def audit_rows_since(since: dt.datetime | None = None) -> Iterable[AuditEvent]:
    """Every record (from `since` on, if given), oldest first, streamed (CLI export)."""
    q = AuditEvent.select().order_by(AuditEvent.id)
    if since:
        q = q.where(AuditEvent.time >= since)
    return q.iterator()


def install_append_only_triggers() -> None:
    """Database triggers that refuse UPDATE and DELETE on audit rows."""
    if is_mysql():
        for op in ("UPDATE", "DELETE"):
            name = f"audit_event_no_{op.lower()}"
            database.execute_sql(f"DROP TRIGGER IF EXISTS {name}")
            database.execute_sql(
                f"CREATE TRIGGER {name} BEFORE {op} ON audit_event FOR EACH ROW "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'audit rows are append-only'")
    else:
        for op in ("UPDATE", "DELETE"):
            database.execute_sql(
                f"CREATE TRIGGER IF NOT EXISTS audit_event_no_{op.lower()} BEFORE {op} ON "
                "audit_event BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END")


def drop_append_only_triggers() -> None:
    for op in ("update", "delete"):
        database.execute_sql(f"DROP TRIGGER IF EXISTS audit_event_no_{op}")
