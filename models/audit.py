"""Tamper-evident audit trail.

Every record carries an HMAC over its own fields and the previous record's HMAC, so editing,
deleting or inserting a row breaks the chain at that row; `verify()` names the first one.
Appending locks the single AuditHead row, so concurrent writers (threads or processes, on
SQLite or MySQL) form one chain. Rows are never updated or deleted by the application (the
model refuses it, and database triggers refuse it too). Call `record()` inside the
transaction of the action it records: if the audit write fails, the action fails.

A database administrator can drop the triggers, delete the newest records and move the head
row back to an older record: the remaining chain is consistent. Two things catch that:

- the head row is signed (HMAC with a key derived from the server key over its id and HMAC);
  a head moved back without the key no longer matches its signature;
- the head is anchored outside the database: `anchor()` appends one signed line (time, last
  id, last HMAC, signature) to an append-only file (var/audit-anchor.log next to the server
  key) and sends it to the system journal (syslog /dev/log, when present). The maintenance
  loop anchors every minute and every `audit verify` anchors what it verified. `verify()`
  compares the chain with every anchor: a chain shorter than an anchored id, or a record
  whose HMAC differs from the anchored one, names the records after which it was cut.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import logging
import logging.handlers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .db import database, is_mysql, write_transaction
from .schema import AuditEvent, AuditHead, utcnow

log = logging.getLogger(__name__)
anchor_log = logging.getLogger("cloudfilm.audit.anchor")
SYSLOG_SOCKET = "/dev/log"
# a CSV cell starting with one of these is a formula to a spreadsheet: it gets a leading '
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value) -> object:
    """A CSV cell a spreadsheet will not run as a formula (CWE-1236)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _journal() -> logging.Logger:
    """The anchor logger, sending to the system journal when /dev/log exists (once)."""
    if not getattr(anchor_log, "_cf_ready", False):
        anchor_log._cf_ready = True
        anchor_log.setLevel(logging.INFO)
        if os.path.exists(SYSLOG_SOCKET):
            try:
                h = logging.handlers.SysLogHandler(
                    address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV)
                h.ident = "cloudfilm: "
                anchor_log.addHandler(h)
            except OSError as exc:
                log.warning("audit anchors: no system journal (%s)", exc)
    return anchor_log


@dataclass(frozen=True)
class Anchor:
    time: str
    last_id: int
    last_hmac: str

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
    def __init__(self, secret_key: bytes, anchor_file: Path | str | None = None):
        self._key = hmac.new(secret_key, b"cloudfilm audit chain v1", hashlib.sha256).digest()
        self._head_key = hmac.new(secret_key, b"cloudfilm audit head v1",
                                  hashlib.sha256).digest()
        self.anchor_file = Path(anchor_file) if anchor_file else None
        self._last_anchored: tuple | None = None

    def _mac(self, values: dict) -> str:
        return hmac.new(self._key, _canonical(values), hashlib.sha256).hexdigest()

    def head_signature(self, last_id: int, last_hmac: str) -> str:
        return hmac.new(self._head_key, f"head\x1f{last_id}\x1f{last_hmac}".encode(),
                        hashlib.sha256).hexdigest()

    def _anchor_signature(self, at: str, last_id: int, last_hmac: str) -> str:
        return hmac.new(self._head_key, f"anchor\x1f{at}\x1f{last_id}\x1f{last_hmac}".encode(),
                        hashlib.sha256).hexdigest()

    def sign_head(self) -> None:
        """Sign the head row as it is (migration m0058, for chains made before it)."""
        head = AuditHead.get_or_none(AuditHead.id == 1)
        if head is not None:
            AuditHead.update(signature=self.head_signature(head.last_id, head.last_hmac)).where(
                AuditHead.id == 1).execute()

    # anchors outside the database -------------------------------------------------------
    def anchor(self, *, force: bool = True) -> Anchor | None:
        """Append the head (id, HMAC) to the anchor file and the system journal. Not when its
        signature is wrong (a tampered head is never anchored), nor, unless force, when it
        is the head this process anchored last. Returns the anchor written, if any."""
        head = AuditHead.get_or_none(AuditHead.id == 1)
        if head is None or self.anchor_file is None:
            return None
        if not hmac.compare_digest(head.signature or "",
                                   self.head_signature(head.last_id, head.last_hmac)):
            log.error("audit chain head signature mismatch: not anchored; run "
                      "./run.sh audit verify")
            return None
        if not force and self._last_anchored == (head.last_id, head.last_hmac):
            return None
        at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        sig = self._anchor_signature(at, head.last_id, head.last_hmac)
        line = f"{at} {head.last_id} {head.last_hmac or '-'} {sig}\n"
        self.anchor_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.anchor_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        _journal().info("audit anchor %s", line.strip())
        self._last_anchored = (head.last_id, head.last_hmac)
        return Anchor(at, head.last_id, head.last_hmac)

    def anchors(self) -> tuple[list[Anchor], list[int]]:
        """(the anchors of the file whose signature holds, the line numbers that do not)."""
        good, bad = [], []
        if self.anchor_file is None or not self.anchor_file.exists():
            return good, bad
        # the last piece is empty (after the final newline) or a line cut by a power loss
        lines = self.anchor_file.read_bytes().split(b"\n")[:-1]
        for n, raw in enumerate(lines, 1):
            try:
                at, last_id, last_hmac, sig = raw.decode("ascii").split(" ")
                last_id = int(last_id)
                last_hmac = "" if last_hmac == "-" else last_hmac
            except ValueError:
                bad.append(n)
                continue
            if hmac.compare_digest(sig, self._anchor_signature(at, last_id, last_hmac)):
                good.append(Anchor(at, last_id, last_hmac))
            else:
                bad.append(n)
        return good, bad

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
            AuditHead.update(last_id=values["id"], last_hmac=values["hmac"],
                             signature=self.head_signature(values["id"], values["hmac"])).where(
                AuditHead.id == 1).execute()
        return AuditEvent(**values)

    def verify(self, *, anchor: bool = True) -> VerifyResult:
        """Walk the chain; name the first edited, inserted or missing record, a head that
        does not match its signature, and records deleted after an anchor. When the chain
        is intact (and anchor), its head is anchored."""
        anchors, bad_lines = self.anchors()
        if bad_lines:
            return VerifyResult(False, 0, f"the anchor file {self.anchor_file} was edited: "
                                          f"line {bad_lines[0]} does not match its signature")
        anchored = {}
        for a in anchors:
            anchored.setdefault(a.last_id, a)
        prev_hmac = ""
        expected_id = 1
        n = 0
        good = 0                       # the newest anchored record the chain still matches
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
            a = anchored.get(row.id)
            if a is not None:
                if a.last_hmac != row.hmac:
                    return VerifyResult(False, n, f"records after {good} were deleted and "
                                                  f"replaced (record {row.id} differs from the "
                                                  f"anchor of {a.time})", good + 1)
                good = row.id
            prev_hmac = row.hmac
            expected_id += 1
            n += 1
        head = AuditHead.get_or_none(AuditHead.id == 1)
        if head is not None and head.last_id != n:
            return VerifyResult(False, n, f"records after {n} are missing (the chain head "
                                          f"says {head.last_id})", n + 1)
        newest = max(anchors, key=lambda x: x.last_id, default=None)
        if newest is not None and newest.last_id > n:
            return VerifyResult(False, n, f"records after {n} were deleted (the anchor of "
                                          f"{newest.time} names record {newest.last_id})", n + 1)
        if head is not None:
            if head.last_hmac != prev_hmac or not hmac.compare_digest(
                    head.signature or "", self.head_signature(head.last_id, head.last_hmac)):
                return VerifyResult(False, n, f"the chain head was moved or edited (signature "
                                              f"mismatch): records after {n} were deleted or "
                                              f"the head is forged", n + 1)
        if anchor:
            self.anchor()
        return VerifyResult(True, n)

    def export_csv(self, rows: Iterable[AuditEvent]) -> str:
        """CSV of the records; a text cell a spreadsheet would run as a formula (= + - @ tab
        CR first) gets a leading ' (csv_safe)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(FIELDS[1:-1] + ("hmac",))
        for r in rows:
            w.writerow([csv_safe(getattr(r, f)) for f in FIELDS[1:-1]] + [r.hmac])
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


def last_time_of(action: str) -> dt.datetime | None:
    """When the newest record of this action was written (None: never)."""
    row = (AuditEvent.select(AuditEvent.time).where(AuditEvent.action == action)
           .order_by(AuditEvent.id.desc()).first())
    return row.time if row is not None else None


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
