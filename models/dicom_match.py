"""DICOM attribute matching (PS3.4 C.2.2.2) as SQL conditions, for every query interface:
QIDO-RS (models/qido.py) and the C-FIND SCP (models/qr.py).

Each function returns a peewee condition, or None for a universal match (an empty value,
or `*`). Bad values raise QueryError (status 400; the C-FIND SCP answers 0xA900)."""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

import peewee as pw

from .errors import DomainError

_UID_RE = re.compile(r"^[0-9][0-9.]{0,63}$")
_DATE_RE = re.compile(r"^[0-9]{8}$")


class QueryError(DomainError):
    status = 400


def like_pattern(value: str) -> str:
    """A DICOM wildcard value (* ?) as a LIKE pattern, LIKE's own specials escaped with !."""
    out = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return out.replace("*", "%").replace("?", "_")


def ilike(field: pw.Field, pattern: str) -> Any:
    """Case-insensitive LIKE with an explicit ESCAPE: SQLite has no default escape
    character, MariaDB's is the backslash (which a multi-valued "CT\\SR" holds)."""
    return pw.Expression(field, pw.OP.ILIKE,
                         pw.NodeList((pw.Value(pattern), pw.SQL("ESCAPE '!'"))))


def text_match(field: pw.Field, value: str | None, max_len: int = 64) -> Any:
    """Single value or wildcard match."""
    value = "" if value is None else str(value).strip()
    if value.strip("*") == "":
        return None
    if len(value) > max_len:
        raise QueryError(f"a matching value is longer than {max_len} characters")
    if "*" in value or "?" in value:
        return ilike(field, like_pattern(value))
    return field == value


def uid_match(field: pw.Field, value: str | None) -> Any:
    """A UID or a list of UIDs (separated by backslash, or by comma in QIDO-RS)."""
    value = "" if value is None else str(value).strip()
    if value.strip("*") == "":
        return None
    uids = [u.strip() for u in re.split(r"[,\\]", value) if u.strip()]
    if not uids or len(uids) > 200 or not all(_UID_RE.match(u) for u in uids):
        raise QueryError("a UID matching value is not a valid DICOM UID (list)")
    return field == uids[0] if len(uids) == 1 else field.in_(uids)


def _date(s: str) -> dt.date:
    s = s.strip()
    if len(s) == 10 and s[4] == s[7] == "-":
        s = s.replace("-", "")                      # 2026-11-30, as some clients send
    s = s.replace(".", "")                          # ACR-NEMA 2026.11.30
    if not _DATE_RE.match(s):
        raise QueryError("a date must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    try:
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        raise QueryError("a date is not a valid calendar date") from None


def date_match(field: pw.Field, value: str | None) -> Any:
    """A date, or a range A-B, -B, A- (inclusive)."""
    value = "" if value is None else str(value).strip()
    if value.strip("*") == "":
        return None
    if len(value) > 21:
        raise QueryError("a date must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    if "-" in value and not (len(value) == 10 and value[4] == value[7] == "-"):
        lo, hi = (p.strip() for p in value.split("-", 1))
        if not lo and not hi:
            return None
        if lo and hi and _date(lo) > _date(hi):
            raise QueryError("a date range starts after it ends")
        conds = ([field >= _date(lo)] if lo else []) + ([field <= _date(hi)] if hi else [])
        return conds[0] if len(conds) == 1 else conds[0] & conds[1]
    return field == _date(value)
