"""Patient access: shares (token + code + open count + expiry + revocation), identity
verification (SMS code, national ID, phone, accession, and their combinations, switched at
run time), PACS-printed QR codes, the per-exam image switch and the download log.

Service verbs own their transactions and record their audit events inside them. Secrets
(share tokens, share codes, SMS codes, phone numbers in the SMS table) are stored only as
HMAC/SHA-256 digests and compared in constant time. Messages never reveal whether a patient
exists: an unknown link and a wrong combination of identity data get the same answer.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass

import peewee as pw

from .catalog import CatalogError, validate_id_number
from .changes import announce
from .db import retrying, write_transaction
from .schema import (AuditEvent, BaseModel, DownloadLog, Exam, Patient, PatientShare,
                     PatientShareSession, RuntimeSetting, Session, Share, utcnow)
from .sessions import NewSession, create_session, end_sessions_of_share, mark_verified

log = logging.getLogger(__name__)

TOKEN_BYTES = 24                 # 192 bits in the share URL
CODE_DIGITS = 6
MAX_CODE_FAILURES = 5            # wrong codes before the share locks
LOCK_MINUTES = 15                # the first lock; each further one lasts longer (LOCK_STEPS)
# How long the 1st, 2nd, … lock of a share or patient QR lasts; None: until the front desk
# unlocks it (POST /api/shares/{id}/unlock, audited share.unlock). 15 guesses in all.
LOCK_STEPS = (dt.timedelta(minutes=LOCK_MINUTES), dt.timedelta(hours=1), None)
LOCKED_FOR_GOOD = dt.datetime(9999, 12, 31)     # locked_until of a lock the desk must lift
IP_WINDOW = dt.timedelta(minutes=15)
SMS_VALID = dt.timedelta(minutes=5)
SMS_RESEND = dt.timedelta(seconds=60)
SMS_MAX_TRIES = 5
SHARE_SESSION_IDLE_S = 30 * 60
SHARE_SESSION_MAX_S = 12 * 3600
PATIENT_SESSION_IDLE_S = 30 * 60
PATIENT_SESSION_MAX_S = 4 * 3600

# Every message a share visitor can see. None names a patient or says one exists.
MSG_UNKNOWN = "分享链接无效，请核对链接或二维码 / this share link is not valid"
MSG_WRONG = "访问码错误 / wrong access code"
MSG_EXPIRED = "分享已过期，无法打开 / this share has expired"
MSG_REVOKED = "分享已被撤销，无法打开 / this share was revoked"
MSG_EXHAUSTED = "分享的打开次数已用完 / this share has been opened as often as allowed"
MSG_LOCKED = (f"访问码连续错误 {MAX_CODE_FAILURES} 次，该分享已锁定 {LOCK_MINUTES} 分钟 / too "
              f"many wrong codes: this share is locked for {LOCK_MINUTES} minutes")
MSG_LOCKED_HOUR = (f"访问码再次连续错误 {MAX_CODE_FAILURES} 次，该分享已锁定 1 小时 / too many "
                   "wrong codes again: this share is locked for an hour")
MSG_LOCKED_DESK = ("访问码多次错误，该分享已锁定，请联系医院服务台解锁 / too many wrong codes: this "
                   "share is locked until the hospital's front desk unlocks it")
MSG_IP_LIMIT = "尝试次数过多，请稍后再试 / too many attempts from your network; try again later"
MSG_OTHER_PATIENT = ("此二维码不是您本人的：您填写的身份信息属于另一位患者。请使用您本人的二维码，或"
                     "在“我的云胶片”中直接验证身份查看您本人的检查 / this QR code belongs to "
                     "another patient: use your own QR code, or verify in My cloud films")
MSG_NO_MATCH = ("身份信息不匹配，请核对后重试 / the identity data do not match our records; "
                "check them and try again")


class AccessRefused(CatalogError):
    """A refusal shown to the visitor (status + message)."""

    def __init__(self, status: int, message: str, reason: str = ""):
        super().__init__(message, status=status, log_message=reason or None)
        self.reason = reason or message


# models -------------------------------------------------------------------------------------
class SmsCode(BaseModel):
    """One SMS verification code. The phone and the code are stored as keyed digests."""
    phone_hash = pw.CharField(max_length=64, index=True)
    code_hash = pw.CharField(max_length=64)
    ip = pw.CharField(max_length=64, default="", index=True)
    delivered = pw.BooleanField(default=False)
    created_at = pw.DateTimeField(default=utcnow, index=True)
    expires_at = pw.DateTimeField()
    attempts = pw.IntegerField(default=0)
    used_at = pw.DateTimeField(null=True)
    voided = pw.BooleanField(default=False)


SHARE_MODELS = [SmsCode]


# hashing --------------------------------------------------------------------------------------
def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()


def share_token_hash(token: str) -> str:
    return hashlib.sha256(("share:" + token).encode()).hexdigest()


def share_code_hash(key: bytes, token_hash: str, code: str) -> str:
    return _mac(key, "share-code", token_hash, code)


def phone_hash(key: bytes, phone: str) -> str:
    return _mac(key, "phone", phone)


# input validation -------------------------------------------------------------------------
PHONE_RE = re.compile(r"^1[3-9][0-9]{9}$")
CODE_RE = re.compile(r"^[0-9]{6}$")


def normalize_phone(raw: str) -> str:
    digits = re.sub(r"[\s\-()+]", "", str(raw or ""))
    if digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    if not digits.isdigit():
        raise AccessRefused(400, "手机号只能包含数字 / the phone number may contain digits only")
    if not PHONE_RE.match(digits):
        raise AccessRefused(400, "手机号应为以1开头的11位数字 / the phone number must have 11 "
                                 "digits and start with 1")
    return digits


def check_code_format(raw: str, what: str = "访问码 / access code") -> str:
    code = str(raw or "").strip()
    if not CODE_RE.match(code):
        raise AccessRefused(400, f"{what}应为6位数字 / the code must be 6 digits")
    return code


def parse_duration(text: str) -> dt.timedelta:
    """'7d', '12h', '30m' or a number of days."""
    t = str(text).strip().lower()
    m = re.fullmatch(r"([0-9]{1,5})\s*([dhm]?)", t)
    if not m:
        raise AccessRefused(400, f"有效期格式不正确：{text!r}（例如 7d、12h、30m） / expiry must look "
                                 "like 7d, 12h or 30m")
    n, unit = int(m.group(1)), m.group(2) or "d"
    delta = {"d": dt.timedelta(days=n), "h": dt.timedelta(hours=n),
             "m": dt.timedelta(minutes=n)}[unit]
    if delta <= dt.timedelta(0):
        raise AccessRefused(400, "有效期必须大于0 / expiry must be in the future")
    return delta


# per-IP limits (counted from the audit trail, so every process sees the same numbers) -----
# (a patient QR's failures are counted as "verify" failures: identity data were wrong)
LIMITED_ACTIONS = ("share.open", "verify", "share.reverify")


def ip_failures(ip: str, now: dt.datetime | None = None) -> int:
    if not ip:
        return 0
    since = (now or utcnow()) - IP_WINDOW
    return (AuditEvent.select().where((AuditEvent.ip == ip[:64])
                                      & (AuditEvent.time >= since)
                                      & (AuditEvent.action.in_(LIMITED_ACTIONS))
                                      & (AuditEvent.outcome == "fail")).count())


def check_ip(ip: str, limit: int, auditor, action: str) -> None:
    if limit and ip_failures(ip) >= limit:
        with write_transaction():
            auditor.record(action, actor_kind="anonymous", ip=ip, outcome="refused",
                           detail="per-IP failure limit")
        raise AccessRefused(429, MSG_IP_LIMIT, "ip-limit")


# per-identity limits: failed verifications naming one phone or ID number, from any address
# (the per-address limit is high for hospital NATs; this one does not lock out neighbours) ----
IDENTITY_MAX_FAILURES = 10
MSG_IDENTITY_LIMIT = ("该身份信息验证失败次数过多，请 15 分钟后再试或联系医院服务台 / too many failed "
                      "checks of these identity details; try again in 15 minutes or ask the "
                      "hospital's front desk")


def identity_key(key: bytes, phone: str | None, id_number: str | None) -> str:
    """A verification's claimed identity as it is kept in its audit record (object_id): keyed
    hashes (17 characters per part, their own purpose), never the numbers themselves."""
    return "".join(f"{tag}{_mac(key, 'identity', tag, v)[:16]}"
                   for tag, v in (("p", phone), ("i", id_number)) if v)


def identity_failures(ident: str, now: dt.datetime | None = None) -> int:
    """Failed verifications in IP_WINDOW that named the same phone or the same ID number."""
    parts = [ident[i:i + 17] for i in range(0, len(ident), 17)]
    if not parts:
        return 0
    named = AuditEvent.object_id.contains(parts[0])
    for p in parts[1:]:
        named |= AuditEvent.object_id.contains(p)
    since = (now or utcnow()) - IP_WINDOW
    return (AuditEvent.select().where((AuditEvent.action == "verify")
                                      & (AuditEvent.outcome == "fail")
                                      & (AuditEvent.time >= since) & named).count())


def check_identity(ident: str, auditor, ip: str) -> None:
    """Refuse (429) a verification whose phone or ID number failed IDENTITY_MAX_FAILURES times
    in IP_WINDOW, before anything is compared; whether such a patient exists is not told."""
    if ident and identity_failures(ident) >= IDENTITY_MAX_FAILURES:
        with write_transaction():
            auditor.record("verify", actor_kind="anonymous", ip=ip, object_type="patient",
                           object_id=ident, outcome="refused",
                           detail="per-identity failure limit")
        raise AccessRefused(429, MSG_IDENTITY_LIMIT, "identity-limit")


# shares --------------------------------------------------------------------------------------
@dataclass
class NewShare:
    token: str            # shown once (URL / QR); only its hash is stored
    code: str             # shown once; only its keyed hash is stored
    share: Share


def share_state(sh: Share, now: dt.datetime | None = None) -> str:
    now = now or utcnow()
    if sh.revoked_at is not None:
        return "revoked"
    if now >= sh.expires_at:
        return "expired"
    if sh.opens >= sh.max_opens:
        return "exhausted"
    if sh.locked_until and sh.locked_until > now:
        return "locked"
    return "open"


def share_json(sh: Share, exam: Exam | None = None) -> dict:
    exam = exam or sh.exam
    return {"id": sh.id, "study_uid": exam.study_uid, "accession_number": exam.accession_number,
            "modality": exam.modality, "description": exam.description,
            "exam_date": exam.exam_date.isoformat() if exam.exam_date else None,
            "include_images": bool(sh.include_images), "allow_download": bool(sh.allow_download),
            "max_opens": sh.max_opens, "opens": sh.opens,
            "expires_at": sh.expires_at.isoformat() + "Z",
            "revoked_at": sh.revoked_at.isoformat() + "Z" if sh.revoked_at else None,
            "created_at": sh.created_at.isoformat() + "Z", "created_by_kind": sh.created_by_kind,
            "created_by": sh.created_by if sh.created_by_kind != "patient" else "",
            "state": share_state(sh), "lock_count": sh.lock_count,
            "locked_until": (None if not sh.locked_until or sh.locked_until <= utcnow()
                             else "desk" if sh.locked_until >= LOCKED_FOR_GOOD
                             else sh.locked_until.isoformat() + "Z")}


def create_share(exam: Exam, *, key: bytes, auditor, include_images: bool = True,
                 allow_download: bool = False, max_opens: int = 5,
                 expires_in: dt.timedelta = dt.timedelta(days=7),
                 max_expiry: dt.timedelta = dt.timedelta(days=365),
                 created_by_kind: str = "staff", created_by: str = "", ip: str = "") -> NewShare:
    if not 1 <= int(max_opens) <= 1000:
        raise AccessRefused(400, "打开次数应在1到1000之间 / max opens must be 1 to 1000")
    if expires_in <= dt.timedelta(0) or expires_in > max_expiry:
        raise AccessRefused(400, f"有效期应在1分钟到{max_expiry.days}天之间 / expiry must be "
                                 f"between 1 minute and {max_expiry.days} days")
    if allow_download and not include_images:
        raise AccessRefused(400, "仅含报告的分享不能允许下载影像 / a report-only share cannot "
                                 "allow downloads")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
    th = share_token_hash(token)
    now = utcnow()
    with write_transaction():
        sh = Share.create(exam=exam, token_hash=th, code_hash=share_code_hash(key, th, code),
                          include_images=include_images, allow_download=allow_download,
                          max_opens=int(max_opens), opens=0, expires_at=now + expires_in,
                          created_by_kind=created_by_kind, created_by=str(created_by)[:64],
                          created_at=now)
        auditor.record("share.create", actor_kind=created_by_kind, actor_id=created_by, ip=ip,
                       object_type="share", object_id=str(sh.id),
                       detail=f"exam={exam.accession_number or exam.id} opens={max_opens} "
                              f"images={int(include_images)} download={int(allow_download)} "
                              f"expires={sh.expires_at.isoformat()}")
    return NewShare(token, code, sh)


def share_by_id(share_id: int) -> Share:
    """The share row; raises Share.DoesNotExist."""
    return Share.get_by_id(share_id)


def share_or_none(share_id: int) -> Share | None:
    return Share.get_or_none(Share.id == share_id)


def find_share(token: str) -> Share | None:
    if not token or len(token) > 200:
        return None
    return (Share.select(Share, Exam).join(Exam)
            .where(Share.token_hash == share_token_hash(token)).first())


def share_status(token: str) -> tuple[Share, dict]:
    """The share (its exam joined) and what the code-entry page may show before a code is
    typed: state, expiry, opens used and allowed; nothing about the patient."""
    sh = find_share(token)
    if sh is None:
        raise AccessRefused(404, MSG_UNKNOWN, "unknown")
    state = share_state(sh)
    return sh, {"state": state, "message": _state_message(state, sh),
                "expires_at": sh.expires_at.isoformat() + "Z",
                "include_images": bool(sh.include_images), "needs_code": sh.code_hash != "-",
                "opens": sh.opens, "max_opens": sh.max_opens}


def _state_message(state: str, sh: Share) -> str:
    return {"open": "", "revoked": MSG_REVOKED,
            "expired": MSG_EXPIRED + f"（{_local(sh.expires_at)}）",
            "exhausted": MSG_EXHAUSTED, "locked": _locked_message(sh)}[state]


def _locked_message(sh) -> str:
    """The lock's message by how long it lasts (escalating: LOCK_STEPS)."""
    if sh.locked_until and sh.locked_until >= LOCKED_FOR_GOOD:
        return MSG_LOCKED_DESK
    return MSG_LOCKED_HOUR if (sh.lock_count or 0) >= 2 else MSG_LOCKED


def _local(t: dt.datetime) -> str:
    """China standard time for messages (UTC+8, no daylight saving)."""
    return (t + dt.timedelta(hours=8)).strftime("%Y-%m-%d %H:%M")


@dataclass
class OpenedShare:
    session: NewSession
    share: Share
    study_uid: str


def _count_open(model, row_id: int, now: dt.datetime) -> int:
    """Count one open of a share or patient QR with one conditional UPDATE (opens <
    max_opens, not revoked, not expired): 1 when counted, 0 when refused. Concurrent
    openings never exceed the limit on SQLite or MySQL. Call inside a write transaction."""
    return model.update(opens=model.opens + 1, failed_attempts=0).where(
        (model.id == row_id) & (model.opens < model.max_opens)
        & model.revoked_at.is_null() & (model.expires_at > now)).execute()


def _reserve_attempt(model, row_id: int, now: dt.datetime) -> bool:
    """Reserve one attempt at a share's code (or a patient QR's identity check) BEFORE the
    secret is compared: one conditional UPDATE, committed at once, counts it as a failure
    only while fewer than MAX_CODE_FAILURES are counted and the row is not locked. However
    many requests race, at most MAX_CODE_FAILURES secrets are compared per lock (SQLite and
    MariaDB alike). A successful open clears the count (_count_open)."""
    with write_transaction():
        return bool(model.update(failed_attempts=model.failed_attempts + 1).where(
            (model.id == row_id) & (model.failed_attempts < MAX_CODE_FAILURES)
            & (model.locked_until.is_null() | (model.locked_until <= now))).execute())


def _release_attempt(model, row_id: int) -> None:
    """A reserved attempt refused before anything secret was compared does not count."""
    with write_transaction():
        model.update(failed_attempts=model.failed_attempts - 1).where(
            (model.id == row_id) & (model.failed_attempts > 0)).execute()


def _lock_if_exhausted(model, row_id: int, *, auditor, ip: str, object_type: str,
                       what: str, first: dict | None = None) -> bool:
    """Inside a write transaction: at MAX_CODE_FAILURES counted failures, lock the row for the
    next of LOCK_STEPS (15 min, 1 h, then until the front desk unlocks it); audited
    `<object_type>.locked` by the one call that locks, after `first` (the attempt's own audit
    record, if any). The row is written before the audit chain's head, the order of every
    share transaction (_count_open too), so concurrent ones queue on MariaDB instead of
    deadlocking. True if this call locked it."""
    now = utcnow()
    level = model.select(model.lock_count).where(model.id == row_id).scalar() or 0
    step = LOCK_STEPS[min(level, len(LOCK_STEPS) - 1)]
    locked = model.update(failed_attempts=0, lock_count=model.lock_count + 1,
                          locked_until=LOCKED_FOR_GOOD if step is None else now + step).where(
        (model.id == row_id) & (model.lock_count == level)
        & (model.failed_attempts >= MAX_CODE_FAILURES)
        & (model.locked_until.is_null() | (model.locked_until <= now))).execute()
    if first:
        auditor.record(**first)
    if locked:
        how = "until the front desk unlocks it" if step is None else \
            f"{int(step.total_seconds() // 60)} min"
        auditor.record(f"{object_type}.locked", actor_kind="system", ip=ip,
                       object_type=object_type, object_id=str(row_id), outcome="alert",
                       detail=f"{MAX_CODE_FAILURES} {what}; lock {level + 1}: {how}")
    return bool(locked)


def _count_failure(model, row_id: int, *, auditor, ip: str, action: str, object_type: str,
                   detail: str, what: str) -> int | None:
    """A reserved attempt was wrong (it is counted already): audit it and lock the row at the
    MAX_CODE_FAILURES-th. Returns the tries left, None once locked."""
    with write_transaction():
        if _lock_if_exhausted(model, row_id, auditor=auditor, ip=ip, object_type=object_type,
                              what=what, first=dict(
                                  action=action, actor_kind="anonymous", ip=ip,
                                  object_type=object_type, object_id=str(row_id),
                                  outcome="fail", detail=detail)):
            return None
        row = model.select(model.failed_attempts, model.locked_until).where(
            model.id == row_id).first()
    left = MAX_CODE_FAILURES - row.failed_attempts
    if left <= 0 or (row.locked_until and row.locked_until > utcnow()):
        return None
    return left


def _refuse_reserved(model, row_id: int, *, auditor, ip: str, object_type: str, what: str):
    """No attempt could be reserved: nothing is compared; the row is locked (or locks now,
    when MAX_CODE_FAILURES attempts are counted). Returns the fresh row."""
    with write_transaction():
        _lock_if_exhausted(model, row_id, auditor=auditor, ip=ip, object_type=object_type,
                           what=what)
    return model.get_by_id(row_id)


def _refuse_code(sh: Share, *, auditor, ip: str) -> AccessRefused:
    """A wrong code (reserved, so counted already): audited; the share locks at the fifth."""
    left = _count_failure(Share, sh.id, auditor=auditor, ip=ip, action="share.open",
                          object_type="share", detail="wrong code", what="wrong codes")
    if left is None:
        return AccessRefused(429, _locked_message(Share.get_by_id(sh.id)), "locked")
    return AccessRefused(403, f"访问码错误，还可尝试 {left} 次 / wrong access code ({left} "
                              f"tries left)", "wrong")


def _check_share_code(sh: Share, code: str | None, *, key: bytes, auditor, ip: str,
                      action: str, now: dt.datetime) -> None:
    """The one check of a share's code: its format, an attempt reserved on the share, then
    the comparison. Raises AccessRefused (400 format, 403 wrong, 429 locked)."""
    code = check_code_format(code)
    if not _reserve_attempt(Share, sh.id, now):
        fresh = _refuse_reserved(Share, sh.id, auditor=auditor, ip=ip, object_type="share",
                                 what="wrong codes")
        raise _refuse_state(fresh, "locked", auditor=auditor, ip=ip, action=action)
    want = share_code_hash(key, sh.token_hash, code)
    if not hmac.compare_digest(want.encode(), sh.code_hash.encode()):
        raise _refuse_code(sh, auditor=auditor, ip=ip)
    _release_attempt(Share, sh.id)      # the right code: at once, so it never blocks others


def _refuse_state(sh: Share, state: str, *, auditor, ip: str, action="share.open"):
    status = 429 if state == "locked" else 410
    with write_transaction():
        auditor.record(action, actor_kind="anonymous", ip=ip, object_type="share",
                       object_id=str(sh.id), outcome="refused", detail=state)
    return AccessRefused(status, _state_message(state, sh), state)


def open_share(token: str, code: str | None, *, key: bytes, auditor, ip: str = "",
               user_agent: str = "", ip_limit: int = 20) -> OpenedShare:
    """Enter a share's code: one success is one open and one new share session.

    The open is counted by one conditional UPDATE (opens < max_opens, not revoked, not
    expired), so concurrent openings never exceed the limit on SQLite or MySQL.
    """
    check_ip(ip, ip_limit, auditor, "share.open")
    sh = find_share(token)
    if sh is None:
        with write_transaction():
            auditor.record("share.open", actor_kind="anonymous", ip=ip, object_type="share",
                           outcome="fail", detail="unknown token")
        raise AccessRefused(404, MSG_UNKNOWN, "unknown")
    now = utcnow()
    if sh.locked_until and sh.locked_until > now:
        raise _refuse_state(sh, "locked", auditor=auditor, ip=ip)
    if sh.code_hash != "-":                       # "-": a signed PACS token, no code
        _check_share_code(sh, code, key=key, auditor=auditor, ip=ip, action="share.open",
                          now=now)
    state = share_state(sh, now)
    if state in ("revoked", "expired"):
        raise _refuse_state(sh, state, auditor=auditor, ip=ip)

    def count_open():
        # one transaction, run again whole when the database rolls it back (two phones
        # opening one share through two Galera nodes: a certification failure)
        with write_transaction():
            counted = _count_open(Share, sh.id, now)
            if counted != 1:
                return counted, None
            lifetime = int(min(SHARE_SESSION_MAX_S, (sh.expires_at - now).total_seconds()))
            session = create_session("share", share=sh, idle_timeout_s=SHARE_SESSION_IDLE_S,
                                     lifetime_s=max(1, lifetime), ip=ip,
                                     user_agent=user_agent, verified=True)
            auditor.record("share.open", actor_kind="share", actor_id=str(sh.id), ip=ip,
                           object_type="share", object_id=str(sh.id), outcome="ok",
                           detail=f"open {sh.opens + 1}/{sh.max_opens}")
            return counted, session
    counted, new = retrying(count_open)
    if counted != 1:
        fresh = Share.get_by_id(sh.id)
        raise _refuse_state(fresh, share_state(fresh) if share_state(fresh) != "open"
                            else "exhausted", auditor=auditor, ip=ip)
    sh.opens += 1
    return OpenedShare(new, sh, sh.exam.study_uid)


def reverify_share_session(session_id: int, share_id: int, code: str, *, key: bytes,
                           auditor, ip: str = "", ip_limit: int = 20) -> None:
    """A share visitor confirms the code again before a download (not counted as an open)."""
    check_ip(ip, ip_limit, auditor, "share.reverify")
    sh = Share.get_or_none(Share.id == share_id)
    s = Session.get_or_none(Session.id == session_id)
    if sh is None or s is None:
        raise AccessRefused(401, MSG_UNKNOWN, "unknown")
    now = utcnow()
    if sh.locked_until and sh.locked_until > now:
        raise _refuse_state(sh, "locked", auditor=auditor, ip=ip, action="share.reverify")
    _check_share_code(sh, code, key=key, auditor=auditor, ip=ip, action="share.reverify",
                      now=now)
    state = share_state(sh, now)
    if state in ("revoked", "expired"):
        raise _refuse_state(sh, state, auditor=auditor, ip=ip, action="share.reverify")
    with write_transaction():
        mark_verified(s)
        auditor.record("share.reverify", actor_kind="share", actor_id=str(sh.id), ip=ip,
                       object_type="share", object_id=str(sh.id), outcome="ok")


def revoke_share(share_id: int, *, auditor, actor_kind: str, actor_id: str, ip: str = "",
                 patient_db_id: int | None = None) -> Share:
    """Revoke a share and end every session opened with it. A patient may revoke only shares
    of their own exams (others look like a missing share)."""
    q = Share.select(Share, Exam).join(Exam).where(Share.id == share_id)
    if patient_db_id is not None:
        q = q.where(Exam.patient == patient_db_id)
    sh = q.first()
    if sh is None:
        raise AccessRefused(404, "没有找到该分享 / no such share")
    with write_transaction():
        if sh.revoked_at is None:
            sh.revoked_at = utcnow()
            Share.update(revoked_at=sh.revoked_at).where(Share.id == sh.id).execute()
        ended = end_sessions_of_share(sh)
        auditor.record("share.revoke", actor_kind=actor_kind, actor_id=actor_id, ip=ip,
                       object_type="share", object_id=str(sh.id),
                       detail=f"sessions ended={ended}")
    return sh


def unlock_share(share_id: int, *, auditor, actor_id: str, ip: str = "") -> Share:
    """The front desk lifts a share's lock (after checking who is asking): the wrong-code
    count starts again. The lock count stays, so the next lock again lasts until the desk
    unlocks it. Audited `share.unlock`."""
    sh = Share.get_or_none(Share.id == share_id)
    if sh is None:
        raise AccessRefused(404, "没有找到该分享 / no such share")
    with write_transaction():
        was = sh.locked_until
        Share.update(locked_until=None, failed_attempts=0).where(Share.id == sh.id).execute()
        auditor.record("share.unlock", actor_kind="staff", actor_id=actor_id, ip=ip,
                       object_type="share", object_id=str(sh.id),
                       outcome="ok" if was and was > utcnow() else "none",
                       detail=f"locks so far={sh.lock_count}")
    return Share.get_by_id(sh.id)


def list_shares(*, exam: Exam | None = None, patient_db_id: int | None = None,
                limit: int = 200) -> list[dict]:
    q = Share.select(Share, Exam).join(Exam)
    if exam is not None:
        q = q.where(Share.exam == exam)
    if patient_db_id is not None:
        q = q.where(Exam.patient == patient_db_id)
    return [share_json(s, s.exam) for s in q.order_by(Share.created_at.desc(),
                                                      Share.id.desc()).limit(limit)]


# patient-level QR codes (R1.4) -------------------------------------------------------------
# One QR code leads to ALL of a patient's exams (current and later ones) after identity
# verification; the verified identity must be the QR's patient. Opens, expiry, lockout and
# revocation follow the exam shares' rules (and their code: _count_open, _count_failure).
MSG_PQR_UNKNOWN = "二维码无效，请核对二维码或链接 / this QR code is not valid"
MSG_PQR_EXPIRED = "二维码已过期 / this QR code has expired"
MSG_PQR_REVOKED = "二维码已被撤销 / this QR code was revoked"
MSG_PQR_EXHAUSTED = "二维码的打开次数已用完 / this QR code has been used as often as allowed"
MSG_PQR_LOCKED = (f"身份信息连续错误 {MAX_CODE_FAILURES} 次，该二维码已锁定 {LOCK_MINUTES} 分钟 / "
                  f"too many failed verifications: this QR code is locked for {LOCK_MINUTES} "
                  "minutes")
MSG_PQR_LOCKED_HOUR = ("身份信息再次多次错误，该二维码已锁定 1 小时 / too many failed verifications "
                       "again: this QR code is locked for an hour")
MSG_PQR_LOCKED_DESK = ("身份信息多次错误，该二维码已锁定，请到医院服务台重新办理 / too many failed "
                       "verifications: this QR code is locked; ask the hospital's front desk for "
                       "a new one")


@dataclass
class NewPatientQr:
    token: str            # in the URL / QR; only its hash is stored
    qr: PatientShare


def patient_qr_token(key: bytes, nonce: str) -> str:
    """The link token of a patient QR: derived from the server key and the stored nonce, so
    the database alone never reveals a usable link, yet its owner can see it again."""
    import base64
    mac = hmac.new(key, ("patient-qr-link\x1f" + nonce).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")[:TOKEN_BYTES * 4 // 3]


def patient_qr_token_hash(token: str) -> str:
    return hashlib.sha256(("patient-qr:" + token).encode()).hexdigest()


def _state_message_pqr(state: str, q: PatientShare) -> str:
    return {"open": "", "revoked": MSG_PQR_REVOKED,
            "expired": f"二维码已于 {_local(q.expires_at)} 过期 / this QR code expired on "
                       f"{_local(q.expires_at)} (China time)",
            "exhausted": MSG_PQR_EXHAUSTED,
            "locked": MSG_PQR_LOCKED_DESK if q.locked_until and q.locked_until >= LOCKED_FOR_GOOD
            else MSG_PQR_LOCKED_HOUR if (q.lock_count or 0) >= 2 else MSG_PQR_LOCKED}[state]


def patient_qr_json(q: PatientShare, key: bytes | None = None) -> dict:
    """What staff and the patient see of a patient QR; with the key, its link token (only
    while it can still be opened)."""
    state = share_state(q)
    out = {"id": q.id, "kind": "patient_qr", "patient_db_id": q.patient_id,
           "max_opens": q.max_opens, "opens": q.opens,
           "expires_at": q.expires_at.isoformat() + "Z",
           "revoked_at": q.revoked_at.isoformat() + "Z" if q.revoked_at else None,
           "created_at": q.created_at.isoformat() + "Z", "created_by_kind": q.created_by_kind,
           "created_by": q.created_by if q.created_by_kind != "patient" else "",
           "state": state, "token": None}
    if key is not None and state in ("open", "locked"):
        out["token"] = patient_qr_token(key, q.link_nonce)
    return out


def _live_patient(patient_db_id: int) -> Patient:
    """The patient record a QR leads to (following merges)."""
    p = Patient.get_or_none(Patient.id == patient_db_id)
    seen = set()
    while p is not None and p.merged_into_id is not None and p.id not in seen:
        seen.add(p.id)
        p = Patient.get_or_none(Patient.id == p.merged_into_id)
    if p is None:
        raise AccessRefused(404, "没有找到该患者 / no such patient")
    return p


def create_patient_qr(patient_db_id: int, *, key: bytes, auditor, max_opens: int = 5,
                      expires_in: dt.timedelta = dt.timedelta(days=30),
                      max_expiry: dt.timedelta = dt.timedelta(days=365),
                      created_by_kind: str = "staff", created_by: str = "",
                      ip: str = "") -> NewPatientQr:
    if isinstance(max_opens, bool) or not isinstance(max_opens, int) \
            or not 1 <= max_opens <= 1000:
        raise AccessRefused(400, "打开次数应为1到1000之间的整数 / max opens must be a whole "
                                 "number from 1 to 1000")
    if expires_in <= dt.timedelta(0) or expires_in > max_expiry:
        raise AccessRefused(400, f"有效期应在1分钟到{max_expiry.days}天之间 / expiry must be "
                                 f"between 1 minute and {max_expiry.days} days")
    patient = _live_patient(patient_db_id)
    nonce = secrets.token_hex(16)
    token = patient_qr_token(key, nonce)
    now = utcnow()
    with write_transaction():
        q = PatientShare.create(patient=patient, token_hash=patient_qr_token_hash(token),
                                link_nonce=nonce, max_opens=max_opens, opens=0,
                                expires_at=now + expires_in, created_by_kind=created_by_kind,
                                created_by=str(created_by)[:64], created_at=now)
        auditor.record("patient_qr.create", actor_kind=created_by_kind, actor_id=created_by,
                       ip=ip, object_type="patient_qr", object_id=str(q.id),
                       detail=f"patient={patient.patient_id} opens={max_opens} "
                              f"expires={q.expires_at.isoformat()}")
    return NewPatientQr(token, q)


def find_patient_qr(token: str) -> PatientShare | None:
    if not token or len(token) > 200:
        return None
    return PatientShare.get_or_none(PatientShare.token_hash == patient_qr_token_hash(token))


def patient_qr_status(token: str) -> dict:
    """What the QR page may show before verification (nothing about the patient)."""
    q = find_patient_qr(token)
    if q is None:
        raise AccessRefused(404, MSG_PQR_UNKNOWN, "unknown")
    state = share_state(q)
    return {"state": state, "message": _state_message_pqr(state, q),
            "expires_at": q.expires_at.isoformat() + "Z", "opens": q.opens,
            "max_opens": q.max_opens}


def check_patient_qr_open(token: str) -> PatientShare:
    """The QR if it can be opened now, else the refusal (404 unknown, 410, 429 locked)."""
    q = find_patient_qr(token)
    if q is None:
        raise AccessRefused(404, MSG_PQR_UNKNOWN, "unknown")
    state = share_state(q)
    if state != "open":
        raise AccessRefused(429 if state == "locked" else 410, _state_message_pqr(state, q),
                            state)
    return q


def _refuse_pqr(q: PatientShare, state: str, *, auditor, ip: str) -> AccessRefused:
    with write_transaction():
        auditor.record("patient_qr.open", actor_kind="anonymous", ip=ip,
                       object_type="patient_qr", object_id=str(q.id), outcome="refused",
                       detail=state)
    return AccessRefused(429 if state == "locked" else 410, _state_message_pqr(state, q), state)


@dataclass
class OpenedPatientQr:
    session: NewSession
    qr: PatientShare
    patient: Patient
    methods: list[str]


def open_patient_qr(token: str, factors: dict, *, catalog, key: bytes, auditor, ip: str = "",
                    user_agent: str = "", ip_limit: int = 20) -> OpenedPatientQr:
    """Verify identity against a patient QR: the identity must be the QR's patient. One
    success is one open (one conditional UPDATE) and one new patient session, linked to the
    QR so that revoking the QR ends it. Wrong or another patient's identity data count as a
    failure of the QR (locked at the fifth in a row)."""
    check_ip(ip, ip_limit, auditor, "verify")
    q = find_patient_qr(token)
    if q is None:
        with write_transaction():
            auditor.record("patient_qr.open", actor_kind="anonymous", ip=ip,
                           object_type="patient_qr", outcome="fail", detail="unknown token")
        raise AccessRefused(404, MSG_PQR_UNKNOWN, "unknown")
    now = utcnow()
    state = share_state(q, now)
    if state != "open":          # refused before any SMS code is spent
        raise _refuse_pqr(q, state, auditor=auditor, ip=ip)
    patient = _live_patient(q.patient_id)
    if not _reserve_attempt(PatientShare, q.id, now):    # before any identity data is checked
        fresh = _refuse_reserved(PatientShare, q.id, auditor=auditor, ip=ip,
                                 object_type="patient_qr", what="failed verifications")
        raise _refuse_pqr(fresh, "locked", auditor=auditor, ip=ip)
    try:
        v = verify_identity(factors, catalog=catalog, key=key, auditor=auditor, ip=ip,
                            ip_limit=ip_limit, bound_patient_id=patient.id)
    except AccessRefused as exc:
        if exc.status in (403, 409):      # identity data wrong or another patient's
            left = _count_failure(PatientShare, q.id, auditor=auditor, ip=ip,
                                  action="patient_qr.open", object_type="patient_qr",
                                  detail=exc.reason, what="failed verifications")
            if left is None:
                raise AccessRefused(429, _state_message_pqr(
                    "locked", PatientShare.get_by_id(q.id)), "locked") from None
            zh, sep, en = str(exc).partition(" / ")
            raise AccessRefused(exc.status, f"{zh}（还可尝试 {left} 次） / {en} ({left} tries "
                                            f"left)" if sep else str(exc), exc.reason) from None
        _release_attempt(PatientShare, q.id)     # refused before a comparison (format, limit)
        raise
    with write_transaction():
        counted = _count_open(PatientShare, q.id, now)
        if counted == 1:
            lifetime = int(min(PATIENT_SESSION_MAX_S, (q.expires_at - now).total_seconds()))
            new = new_patient_session(v.patient, ip=ip, user_agent=user_agent,
                                      lifetime_s=max(1, lifetime))
            PatientShareSession.create(patient_share=q, session=new.session)
            auditor.record("patient_qr.open", actor_kind="patient",
                           actor_id=v.patient.patient_id, ip=ip, object_type="patient_qr",
                           object_id=str(q.id), outcome="ok",
                           detail=f"open {q.opens + 1}/{q.max_opens} "
                                  f"methods={'+'.join(v.methods)}")
    if counted != 1:
        _release_attempt(PatientShare, q.id)     # the identity was right: not a failure
        fresh = PatientShare.get_by_id(q.id)
        st = share_state(fresh)
        raise _refuse_pqr(fresh, st if st != "open" else "exhausted", auditor=auditor, ip=ip)
    q.opens += 1
    return OpenedPatientQr(new, q, v.patient, v.methods)


def patient_qr_of_session(session_id: int) -> int | None:
    """The patient QR a patient session was opened with (None: opened otherwise)."""
    return (PatientShareSession.select(PatientShareSession.patient_share)
            .where(PatientShareSession.session == session_id).scalar())


def revoke_patient_qr(qr_id: int, *, auditor, actor_kind: str, actor_id: str, ip: str = "",
                      patient_db_id: int | None = None) -> PatientShare:
    """Revoke a patient QR and end every session opened with it. A patient may revoke only
    their own (others look like a missing QR)."""
    q = PatientShare.get_or_none(PatientShare.id == qr_id)
    if q is None or (patient_db_id is not None and q.patient_id != patient_db_id):
        raise AccessRefused(404, "没有找到该二维码 / no such QR code")
    with write_transaction():
        if q.revoked_at is None:
            q.revoked_at = utcnow()
            PatientShare.update(revoked_at=q.revoked_at).where(
                PatientShare.id == q.id).execute()
        ended = Session.update(ended_at=utcnow()).where(
            Session.id.in_(PatientShareSession.select(PatientShareSession.session)
                           .where(PatientShareSession.patient_share == q.id))
            & Session.ended_at.is_null()).execute()
        announce()
        auditor.record("patient_qr.revoke", actor_kind=actor_kind, actor_id=actor_id, ip=ip,
                       object_type="patient_qr", object_id=str(q.id),
                       detail=f"sessions ended={ended}")
    return q


def list_patient_qrs(patient_db_id: int, *, key: bytes | None = None,
                     limit: int = 100) -> list[dict]:
    rows = (PatientShare.select().where(PatientShare.patient == patient_db_id)
            .order_by(PatientShare.created_at.desc(), PatientShare.id.desc()).limit(limit))
    return [patient_qr_json(q, key) for q in rows]


# PACS-printed QR codes ---------------------------------------------------------------------
def sign_pacs_token(key: bytes, accession: str, expires: dt.datetime) -> str:
    """ACCESSION.EXPIRY.SIG: what a PACS prints when it shares our key (see README)."""
    exp = int(expires.replace(tzinfo=dt.timezone.utc).timestamp())
    sig = _mac(key, "pacs-qr", accession, str(exp))[:32]
    return f"{accession}.{exp}.{sig}"


def check_pacs_token(key: bytes, token: str) -> tuple[str, dt.datetime]:
    parts = str(token or "").rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        raise AccessRefused(404, MSG_UNKNOWN, "bad pacs token")
    accession, exp, sig = parts
    want = _mac(key, "pacs-qr", accession, exp)[:32]
    if not hmac.compare_digest(want.encode(), sig.encode()):
        raise AccessRefused(404, MSG_UNKNOWN, "bad pacs signature")
    expires = dt.datetime.fromtimestamp(int(exp), dt.timezone.utc).replace(tzinfo=None)
    if expires <= utcnow():
        raise AccessRefused(410, MSG_EXPIRED, "expired")
    return accession, expires


def pacs_signed_share(token: str, *, key: bytes, auditor, max_opens: int = 20,
                      ip: str = "") -> str:
    """The share behind a signed PACS token (created at its first scan). Returns the share
    token to open it with (no code: the signature is the proof)."""
    accession, expires = check_pacs_token(key, token)
    exam = Exam.get_or_none(Exam.accession_number == accession)
    if exam is None:
        raise AccessRefused(404, MSG_UNKNOWN, "unknown exam")
    share_token = "pacs." + token
    th = share_token_hash(share_token)
    with write_transaction():
        if not Share.select().where(Share.token_hash == th).exists():
            sh = Share.create(exam=exam, token_hash=th, code_hash="-", include_images=True,
                              allow_download=False, max_opens=max_opens, expires_at=expires,
                              created_by_kind="pacs", created_by="pacs-qr")
            auditor.record("share.create", actor_kind="pacs", actor_id="pacs-qr", ip=ip,
                           object_type="share", object_id=str(sh.id),
                           detail=f"signed PACS QR exam={accession}")
    return share_token


def exam_for_pacs_code(kind: str, value: str) -> Exam | None:
    if kind == "accession":
        return Exam.get_or_none(Exam.accession_number == value)
    if kind == "study_uid":
        return Exam.get_or_none(Exam.study_uid == value)
    raise ValueError(kind)


# identity verification ----------------------------------------------------------------------
METHODS = ("sms", "id_number", "phone", "accession")
METHOD_NAMES = {"sms": "短信验证码", "id_number": "身份证号", "phone": "手机号",
                "accession": "检查号"}
DEFAULT_VERIFICATION = {
    "methods": {m: True for m in METHODS},
    "combinations": [["sms"], ["id_number", "phone"], ["accession", "phone"],
                     ["accession", "id_number"]],
}
VERIFICATION_KEY = "verification"


def verification_config() -> dict:
    """The current methods and combinations (read on every request: changes apply at once)."""
    row = RuntimeSetting.get_or_none(RuntimeSetting.key == VERIFICATION_KEY)
    if row is None:
        return json.loads(json.dumps(DEFAULT_VERIFICATION))
    try:
        cfg = json.loads(row.value)
        return validate_verification_config(cfg)
    except (ValueError, AccessRefused):
        log.error("verification settings in the database are invalid; using the defaults")
        return json.loads(json.dumps(DEFAULT_VERIFICATION))


def active_combinations(cfg: dict) -> list[list[str]]:
    return [c for c in cfg["combinations"] if all(cfg["methods"].get(m) for m in c)]


def validate_verification_config(cfg: dict) -> dict:
    if not isinstance(cfg, dict):
        raise AccessRefused(400, "配置应为对象 / the settings must be an object")
    methods = cfg.get("methods")
    combos = cfg.get("combinations")
    if not isinstance(methods, dict) or not isinstance(combos, list):
        raise AccessRefused(400, "需要 methods（对象）与 combinations（列表） / need methods "
                                 "(object) and combinations (list)")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise AccessRefused(400, f"未知的验证方式 / unknown method: {', '.join(unknown)}; "
                                 f"known: {', '.join(METHODS)}")
    clean_methods = {m: bool(methods.get(m, False)) for m in METHODS}
    clean_combos: list[list[str]] = []
    for c in combos:
        if not isinstance(c, list) or not c or any(m not in METHODS for m in c):
            raise AccessRefused(400, f"组合无效 / invalid combination {c!r}: use a non-empty "
                                     f"list of {', '.join(METHODS)}")
        c = sorted(set(c), key=METHODS.index)
        if c == ["accession"]:
            raise AccessRefused(400, "检查号可被猜测，不能单独用于验证 / the accession number is "
                                     "guessable and cannot be the only check")
        if len(c) < 2 and c != ["sms"]:
            # 等保三级 floor: two factors, or the SMS code (possession of the phone)
            raise AccessRefused(400, f"不符合等保三级要求：患者身份验证须至少两项信息或短信验证码，"
                                     f"“{METHOD_NAMES[c[0]]}”不能单独使用 / level 3 floor: a "
                                     "patient is verified by two factors or an SMS code, "
                                     f"never by {c[0]} alone")
        if c not in clean_combos:
            clean_combos.append(c)
    out = {"methods": clean_methods, "combinations": clean_combos}
    if not any(clean_methods.values()):
        raise AccessRefused(400, "不能关闭全部验证方式 / at least one verification method must "
                                 "stay on")
    if not active_combinations(out):
        raise AccessRefused(400, "至少需要一个全部方式都已启用的组合，否则患者无法验证 / at least "
                                 "one combination whose methods are all on is needed, or no "
                                 "patient could verify")
    return out


def set_verification_config(cfg: dict, *, auditor, actor_id: str, ip: str = "") -> dict:
    clean = validate_verification_config(cfg)
    with write_transaction():
        row = RuntimeSetting.get_or_none(RuntimeSetting.key == VERIFICATION_KEY)
        value = json.dumps(clean, ensure_ascii=False)
        if row is None:
            RuntimeSetting.create(key=VERIFICATION_KEY, value=value, updated_by=actor_id[:64],
                                  updated_at=utcnow())
        else:
            RuntimeSetting.update(value=value, updated_by=actor_id[:64],
                                  updated_at=utcnow()).where(
                RuntimeSetting.id == row.id).execute()
        on = ",".join(m for m, v in clean["methods"].items() if v)
        combos = ";".join("+".join(c) for c in clean["combinations"])
        auditor.record("verification.settings", actor_kind="staff", actor_id=actor_id, ip=ip,
                       object_type="setting", object_id=VERIFICATION_KEY,
                       detail=f"on={on} combinations={combos}")
    return clean


def public_verification_config() -> dict:
    cfg = verification_config()
    return {"methods": [m for m in METHODS if cfg["methods"][m]],
            "combinations": active_combinations(cfg),
            "names": METHOD_NAMES}


# SMS codes ------------------------------------------------------------------------------------
def _phone_variants(phone: str) -> list[str]:
    return [phone, "+86" + phone, "86" + phone, "+86 " + phone,
            f"{phone[:3]}-{phone[3:7]}-{phone[7:]}", f"{phone[:3]} {phone[3:7]} {phone[7:]}"]


def patients_with_phone(phone: str) -> list[int]:
    return [p.id for p in Patient.select(Patient.id).where(
        Patient.phone.in_(_phone_variants(phone)) & Patient.merged_into.is_null())]


@dataclass
class SmsRequest:
    phone: str | None       # send to it only when the code is to be delivered
    code: str | None
    retry_after_s: int


def request_sms_code(raw_phone: str, *, key: bytes, auditor, ip: str = "",
                     per_phone_day: int = 10, per_ip_hour: int = 20) -> SmsRequest:
    """Make a code for the phone (rate limits apply whether or not the phone is on record,
    and the answer is the same: nothing tells whether a patient has this number). Returns
    the phone and code to deliver, or phone=None when no patient has it."""
    phone = normalize_phone(raw_phone)
    ph = phone_hash(key, phone)
    now = utcnow()
    last = (SmsCode.select().where(SmsCode.phone_hash == ph)
            .order_by(SmsCode.created_at.desc(), SmsCode.id.desc()).first())
    if last is not None and now - last.created_at < SMS_RESEND:
        wait = int((SMS_RESEND - (now - last.created_at)).total_seconds()) + 1
        raise AccessRefused(429, f"验证码已发送，请 {wait} 秒后再重新获取 / a code was just sent; "
                                 f"ask again in {wait} s", "resend")
    day = SmsCode.select().where((SmsCode.phone_hash == ph)
                                 & (SmsCode.created_at >= now - dt.timedelta(days=1))).count()
    if day >= per_phone_day:
        raise AccessRefused(429, "该手机号今日获取验证码次数已达上限 / this phone number has "
                                 "reached today's limit of codes", "phone-cap")
    hour = SmsCode.select().where((SmsCode.ip == ip[:64])
                                  & (SmsCode.created_at >= now - dt.timedelta(hours=1))).count()
    if ip and hour >= per_ip_hour:
        raise AccessRefused(429, MSG_IP_LIMIT, "ip-cap")
    on_record = bool(patients_with_phone(phone))
    code = f"{secrets.randbelow(10 ** 6):06d}"
    with write_transaction():
        SmsCode.create(phone_hash=ph, code_hash=_mac(key, "sms", ph, code), ip=ip[:64],
                       delivered=on_record, created_at=now, expires_at=now + SMS_VALID)
        auditor.record("sms.send", actor_kind="anonymous", ip=ip, object_type="phone",
                       object_id=ph[:16], outcome="ok" if on_record else "skipped",
                       detail="on record" if on_record else "no patient with this phone")
    return SmsRequest(phone if on_record else None, code if on_record else None,
                      int(SMS_RESEND.total_seconds()))


def check_sms_code(phone: str, code: str, *, key: bytes) -> tuple[bool, str]:
    """Consume the newest code of this phone if `code` matches. (ok, reason).

    An attempt is reserved on the code (one conditional UPDATE, committed) BEFORE it is
    compared, so however many requests race, at most SMS_MAX_TRIES guesses are compared;
    the code is void after them."""
    ph = phone_hash(key, phone)
    now = utcnow()
    row = (SmsCode.select().where(SmsCode.phone_hash == ph)
           .order_by(SmsCode.created_at.desc(), SmsCode.id.desc()).first())
    if row is None or row.used_at is not None or row.voided or now >= row.expires_at:
        return False, "expired"
    with write_transaction():
        reserved = SmsCode.update(attempts=SmsCode.attempts + 1).where(
            (SmsCode.id == row.id) & (SmsCode.attempts < SMS_MAX_TRIES)
            & (SmsCode.voided == False) & SmsCode.used_at.is_null()).execute()  # noqa: E712
    if not reserved:
        with write_transaction():
            SmsCode.update(voided=True).where((SmsCode.id == row.id)
                                              & (SmsCode.attempts >= SMS_MAX_TRIES)
                                              & SmsCode.used_at.is_null()).execute()
        fresh = SmsCode.get_by_id(row.id)
        return False, "voided" if fresh.voided else "expired"
    if not hmac.compare_digest(_mac(key, "sms", ph, code).encode(), row.code_hash.encode()):
        with write_transaction():
            tries = SmsCode.select(SmsCode.attempts).where(SmsCode.id == row.id).scalar()
            if tries >= SMS_MAX_TRIES:
                SmsCode.update(voided=True).where(SmsCode.id == row.id).execute()
        return False, "voided" if tries >= SMS_MAX_TRIES else "wrong"
    with write_transaction():
        done = SmsCode.update(used_at=now).where(
            (SmsCode.id == row.id) & SmsCode.used_at.is_null()
            & (SmsCode.voided == False)).execute()  # noqa: E712
    return done == 1, "ok" if done == 1 else "expired"


# verification -----------------------------------------------------------------------------
@dataclass
class Verified:
    patient: Patient
    methods: list[str]


def verify_identity(factors: dict, *, catalog, key: bytes, auditor, ip: str = "",
                    ip_limit: int = 20, bound_exam_id: int | None = None,
                    bound_patient_id: int | None = None) -> Verified:
    """Check the identity data against the patient records under the enabled combinations.

    factors: phone, sms_code, id_number, accession (strings; empty = not given). Every given
    factor must match the same one patient. Malformed values are refused with the reason;
    a mismatch gets one message that does not say which part was wrong. bound_patient_id
    (a patient QR): the identity must be that patient's; another patient's identity is
    refused with MSG_OTHER_PATIENT (reason "other patient").
    """
    check_ip(ip, ip_limit, auditor, "verify")
    cfg = verification_config()
    given = {k: str(v).strip() for k, v in (factors or {}).items()
             if k in ("phone", "sms_code", "id_number", "accession") and str(v or "").strip()}
    used: set[str] = set()
    if "sms_code" in given:
        used.add("sms")
        if "phone" not in given:
            raise AccessRefused(400, "短信验证需要填写手机号 / SMS verification needs the phone "
                                     "number")
    for f in ("id_number", "accession"):
        if f in given:
            used.add(f)
    if "phone" in given and "sms" not in used:
        used.add("phone")
    off = [m for m in used if not cfg["methods"].get(m)]
    if off:
        raise AccessRefused(400, "验证方式已停用 / this verification method is switched off: "
                                 + "、".join(METHOD_NAMES[m] for m in off))
    combos = active_combinations(cfg)
    if not any(set(c) <= used for c in combos):
        hint = "；".join("+".join(METHOD_NAMES[m] for m in c) for c in combos)
        raise AccessRefused(400, f"请按以下方式之一验证：{hint} / verify with one of the "
                                 f"allowed combinations")
    # formats (the reason is given; nothing is looked up yet)
    phone = normalize_phone(given["phone"]) if "phone" in given else None
    idn = None
    if "id_number" in given:
        idn = validate_id_number(given["id_number"])
    if "sms_code" in given:
        check_code_format(given["sms_code"], "短信验证码 / SMS code")
    accession = given.get("accession")
    if accession is not None and (len(accession) > 64 or not accession.isprintable()):
        raise AccessRefused(400, "检查号格式不正确 / the accession number is not valid")
    ident = identity_key(key, phone, idn)
    check_identity(ident, auditor, ip)           # per identity, before anything is compared

    def fail(detail: str, message: str = MSG_NO_MATCH, status: int = 403):
        with write_transaction():
            auditor.record("verify", actor_kind="anonymous", ip=ip, object_type="patient",
                           object_id=ident, outcome="fail",
                           detail=f"methods={'+'.join(sorted(used))} {detail}")
        return AccessRefused(status, message, detail)

    candidates: set[int] | None = None

    def narrow(ids) -> None:
        nonlocal candidates
        ids = set(ids)
        candidates = ids if candidates is None else candidates & ids

    if "sms" in used:
        ok, why = check_sms_code(phone, given["sms_code"], key=key)
        if not ok:
            msg = {"wrong": "短信验证码错误 / wrong SMS code",
                   "voided": f"短信验证码错误 {SMS_MAX_TRIES} 次，已作废，请重新获取 / wrong "
                             f"{SMS_MAX_TRIES} times: the code is void, ask for a new one",
                   "expired": "短信验证码已失效，请重新获取 / the SMS code has expired or was "
                              "used; ask for a new one"}[why]
            raise fail(f"sms {why}", msg)
    if phone:
        narrow(patients_with_phone(phone))
    if idn:
        h = catalog.id_number_hash(idn)
        narrow(p.id for p in Patient.select(Patient.id).where(
            (Patient.id_number_hash == h) & Patient.merged_into.is_null()))
    if accession:
        narrow(e.patient_id for e in Exam.select(Exam.patient).where(
            Exam.accession_number == accession))
    if bound_exam_id is not None:
        owner = Exam.select(Exam.patient).where(Exam.id == bound_exam_id).scalar()
        narrow([owner] if owner else [])
    if bound_patient_id is not None:
        if candidates and bound_patient_id not in candidates:
            raise fail("other patient", MSG_OTHER_PATIENT)
        narrow([bound_patient_id])
    if not candidates:
        raise fail("no match")
    if len(candidates) > 1:
        if "sms" in used:     # the phone is proven: saying it has several records is safe
            raise fail("ambiguous", "该手机号登记了多位患者，请再填写身份证号 / several patients "
                                    "use this phone number: add the ID number", 409)
        raise fail("ambiguous")
    patient = Patient.get_by_id(candidates.pop())
    with write_transaction():
        auditor.record("verify", actor_kind="patient", actor_id=patient.patient_id, ip=ip,
                       object_type="patient", object_id=patient.patient_id, outcome="ok",
                       detail=f"methods={'+'.join(sorted(used))}")
    return Verified(patient, sorted(used))


def new_patient_session(patient: Patient, *, ip: str = "", user_agent: str = "",
                        verified: bool = True,
                        lifetime_s: int = PATIENT_SESSION_MAX_S) -> NewSession:
    """The one way a patient session is made (inside the caller's transaction): identity
    verification, WeChat sign-in, a patient QR open."""
    return create_session("patient", patient=patient, idle_timeout_s=PATIENT_SESSION_IDLE_S,
                          lifetime_s=lifetime_s, ip=ip, user_agent=user_agent,
                          verified=verified)


def patient_overview(patient_db_id: int, *, mask_phone, scope=None) -> dict:
    """The portal's (and WeChat's) page: the patient and their exams; `scope` (server/policy.py
    exam_scope) keeps the list to what QIDO lists for the same sessions."""
    from .qido import in_scope
    p = Patient.get_by_id(patient_db_id)
    exams = (in_scope(Exam.select(), scope).where(Exam.patient == p)
             .order_by(Exam.exam_date.desc(nulls="LAST"), Exam.exam_time.desc(nulls="LAST"),
                       Exam.id.desc()))
    from .schema import Report
    reports = {r.exam_id: r for r in Report.select().join(Exam).where(Exam.patient == p)}
    out = []
    for e in exams:
        r = reports.get(e.id)
        out.append({"exam_id": e.id, "study_uid": e.study_uid,
                    "accession_number": e.accession_number,
                    "modality": e.modality, "category": e.category,
                    "exam_date": e.exam_date.isoformat() if e.exam_date else None,
                    "exam_time": e.exam_time.strftime("%H:%M") if e.exam_time else None,
                    "description": e.description, "institution": e.institution,
                    "status": e.status, "images_enabled": bool(e.images_enabled),
                    "num_series": e.num_series, "num_instances": e.num_instances,
                    "report": ({"status": r.status, "has_pdf": bool(r.pdf_path),
                                "impression": r.impression} if r else None)})
    name = p.name or ""
    return {"patient": {"name": (name[0] + "*" * max(1, len(name) - 1)) if name else "",
                        "sex": p.sex,
                        "birth_year": p.birth_date.year if p.birth_date else None,
                        "phone": mask_phone(p.phone), "id_number": p.id_number_masked or ""},
            "exams": out}


# per-exam image switch ----------------------------------------------------------------------
def set_images_enabled(exam: Exam, enabled: bool, *, auditor, actor_id: str,
                       ip: str = "") -> None:
    with write_transaction():
        Exam.update(images_enabled=bool(enabled), updated_at=utcnow()).where(
            Exam.id == exam.id).execute()
        announce()             # every node within a second (models/changes.py)
        auditor.record("exam.images", actor_kind="staff", actor_id=actor_id, ip=ip,
                       object_type="exam", object_id=exam.accession_number or str(exam.id),
                       detail="on" if enabled else "off")
    exam.images_enabled = bool(enabled)


# download log ---------------------------------------------------------------------------------
def start_download(exam: Exam, *, actor_kind: str, actor_id: str, scope: str, object_uid: str,
                   ip: str, user_agent: str, bytes_total: int, range_text: str = "",
                   auditor=None) -> int:
    with write_transaction():
        row = DownloadLog.create(exam=exam, actor_kind=actor_kind, actor_id=str(actor_id)[:64],
                                 scope=scope, object_uid=object_uid[:64], ip=ip[:64],
                                 user_agent=user_agent[:255], bytes_total=bytes_total)
        if auditor is not None:
            auditor.record("download", actor_kind=actor_kind, actor_id=actor_id, ip=ip,
                           object_type=scope, object_id=object_uid,
                           detail=f"exam={exam.accession_number or exam.id} "
                                  f"bytes={bytes_total} {range_text}".strip())
    return row.id


def finish_download(log_id: int, *, bytes_sent: int, completed: bool) -> None:
    with write_transaction():
        DownloadLog.update(bytes_sent=bytes_sent, completed=completed).where(
            DownloadLog.id == log_id).execute()
