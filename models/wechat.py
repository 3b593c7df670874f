"""WeChat Official Account: bindings of an openid to patients, the WeChat visit (what OAuth
proved in this browser), the deployment's shared access token and JS-SDK ticket, the
message callback's replay and duplicate guards, and the report-ready notifications.

An openid is a pseudonym that Tencent knows; it is never written to the audit trail or to
logs together with patient data (bindings are named by their row id there). Notifications
carry no medical content: the payload holds row ids only, the text is generic.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
from dataclasses import dataclass

import peewee as pw

from .catalog import mask_name
from .db import write_transaction
from .leases import claim_row
from .schema import BaseModel, Exam, Outbox, Patient, utcnow

log = logging.getLogger(__name__)

MAX_BINDINGS = 10                    # patients one WeChat user may bind (self, children, parents)
VISIT_LIFETIME = dt.timedelta(hours=12)
CHANNEL = "wechat"


class WechatError(Exception):
    """A refusal with the status and message the visitor sees."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# models -------------------------------------------------------------------------------------
class WechatBinding(BaseModel):
    """One WeChat user (openid) may see one patient's exams; made after one verification."""
    openid = pw.CharField(max_length=64, index=True)
    patient = pw.ForeignKeyField(Patient, backref="wechat_bindings", on_delete="CASCADE")
    methods = pw.CharField(max_length=64, default="")
    created_at = pw.DateTimeField(default=utcnow)
    revoked_at = pw.DateTimeField(null=True)
    notify = pw.BooleanField(default=True)
    last_used_at = pw.DateTimeField(null=True)

    class Meta:
        indexes = ((("openid", "patient"), True),)


class WechatVisit(BaseModel):
    """What web authorisation proved in one browser: its openid (cookie cf_wx, hashed here)."""
    token_hash = pw.CharField(max_length=64, unique=True)
    openid = pw.CharField(max_length=64, index=True)
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField()
    ended_at = pw.DateTimeField(null=True)


class WechatCredential(BaseModel):
    """The deployment's one access token (and JS-SDK ticket) per AppID, shared by every
    process. `lease_*` marks the one process refreshing it."""
    appid = pw.CharField(max_length=64)
    kind = pw.CharField(max_length=16)                      # access_token / jsapi_ticket
    value = pw.CharField(max_length=1024, default="")
    expires_at = pw.DateTimeField(null=True)
    refreshed_at = pw.DateTimeField(null=True)
    refreshes = pw.IntegerField(default=0)
    lease_owner = pw.CharField(max_length=64, default="")
    lease_until = pw.DateTimeField(null=True)
    last_error = pw.TextField(default="")
    last_error_at = pw.DateTimeField(null=True)

    class Meta:
        indexes = ((("appid", "kind"), True),)


class WechatNonce(BaseModel):
    """A callback nonce seen within the replay window (with the message it carried)."""
    nonce_key = pw.CharField(max_length=128, unique=True)
    msg_key = pw.CharField(max_length=128, default="")
    seen_at = pw.DateTimeField(default=utcnow, index=True)


class WechatInbound(BaseModel):
    """A message or event handled once (WeChat retries three times: the same MsgId)."""
    msg_key = pw.CharField(max_length=128, unique=True)
    kind = pw.CharField(max_length=32, default="")
    reply = pw.TextField(default="")
    received_at = pw.DateTimeField(default=utcnow, index=True)


class WechatNotification(BaseModel):
    """A report-ready template message and its delivery state."""
    key = pw.CharField(max_length=128, unique=True)          # the outbox idempotency key
    binding = pw.ForeignKeyField(WechatBinding, backref="notifications", on_delete="CASCADE")
    exam = pw.ForeignKeyField(Exam, backref="wechat_notifications", on_delete="CASCADE")
    client_msg_id = pw.CharField(max_length=64)
    msgid = pw.BigIntegerField(null=True, index=True)
    # queued -> accepted (WeChat took it) -> delivered / blocked / failed; dropped (unbound)
    state = pw.CharField(max_length=16, default="queued", index=True)
    attempts = pw.IntegerField(default=0)
    detail = pw.CharField(max_length=255, default="")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)


WECHAT_MODELS = [WechatBinding, WechatVisit, WechatCredential, WechatNonce, WechatInbound,
                 WechatNotification]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# visits ---------------------------------------------------------------------------------------
@dataclass
class NewVisit:
    token: str
    openid: str


def start_visit(openid: str, *, lifetime: dt.timedelta = VISIT_LIFETIME) -> NewVisit:
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with write_transaction():
        WechatVisit.create(token_hash=_sha("wx:" + token), openid=openid[:64], created_at=now,
                           expires_at=now + lifetime)
    return NewVisit(token, openid)


def load_visit(token: str | None) -> str | None:
    """The openid behind a cf_wx cookie, or None (unknown, ended or expired)."""
    if not token or len(token) > 128:
        return None
    v = WechatVisit.get_or_none(WechatVisit.token_hash == _sha("wx:" + token))
    if v is None or v.ended_at is not None or utcnow() >= v.expires_at:
        return None
    return v.openid


def end_visit(token: str) -> None:
    with write_transaction():
        WechatVisit.update(ended_at=utcnow()).where(
            WechatVisit.token_hash == _sha("wx:" + token)).execute()


# bindings -------------------------------------------------------------------------------------
def active_bindings(openid: str) -> list[WechatBinding]:
    return list(WechatBinding.select(WechatBinding, Patient).join(Patient)
                .where((WechatBinding.openid == openid) & WechatBinding.revoked_at.is_null())
                .order_by(WechatBinding.last_used_at.desc(nulls="LAST"), WechatBinding.id))


def bindings_json(openid: str, current_patient_db_id: int | None = None) -> list[dict]:
    out = []
    for b in active_bindings(openid):
        p = b.patient
        out.append({"id": b.id, "name": mask_name(p.name), "sex": p.sex,
                    "birth_year": p.birth_date.year if p.birth_date else None,
                    "bound_at": b.created_at.isoformat() + "Z", "notify": bool(b.notify),
                    "current": p.id == current_patient_db_id})
    return out


def bind_patient(openid: str, patient: Patient, *, methods: list[str], auditor,
                 ip: str = "") -> WechatBinding:
    """Bind (or re-bind) a verified patient to this WeChat user."""
    now = utcnow()
    with write_transaction():
        b = WechatBinding.get_or_none((WechatBinding.openid == openid)
                                      & (WechatBinding.patient == patient))
        if b is None or b.revoked_at is not None:
            count = WechatBinding.select().where((WechatBinding.openid == openid)
                                                 & WechatBinding.revoked_at.is_null()).count()
            if count >= MAX_BINDINGS:
                raise WechatError(409, f"一个微信号最多绑定 {MAX_BINDINGS} 位就诊人，请先解绑 / "
                                       f"one WeChat user may bind at most {MAX_BINDINGS} "
                                       "patients; unbind one first")
        if b is None:
            b = WechatBinding.create(openid=openid, patient=patient, methods="+".join(methods),
                                     created_at=now, last_used_at=now)
        else:
            WechatBinding.update(revoked_at=None, methods="+".join(methods), created_at=now,
                                 last_used_at=now, notify=True).where(
                WechatBinding.id == b.id).execute()
        auditor.record("wechat.bind", actor_kind="patient", actor_id=patient.patient_id, ip=ip,
                       object_type="wechat_binding", object_id=str(b.id),
                       detail=f"methods={'+'.join(methods)}")
    return WechatBinding.get_by_id(b.id)


def binding_of(openid: str, binding_id: int) -> WechatBinding:
    b = (WechatBinding.select(WechatBinding, Patient).join(Patient)
         .where((WechatBinding.id == binding_id) & (WechatBinding.openid == openid)
                & WechatBinding.revoked_at.is_null()).first())
    if b is None:
        raise WechatError(404, "没有找到该绑定 / no such binding")
    return b


def use_binding(openid: str, binding_id: int | None = None) -> WechatBinding | None:
    """The binding to sign in with (the named one, else the one used last)."""
    if binding_id is not None:
        b = binding_of(openid, binding_id)
    else:
        found = active_bindings(openid)
        if not found:
            return None
        b = found[0]
    with write_transaction():
        WechatBinding.update(last_used_at=utcnow()).where(WechatBinding.id == b.id).execute()
    return b


def unbind(openid: str, binding_id: int, *, auditor, ip: str = "") -> WechatBinding:
    b = binding_of(openid, binding_id)
    with write_transaction():
        WechatBinding.update(revoked_at=utcnow()).where(WechatBinding.id == b.id).execute()
        WechatNotification.update(state="dropped", detail="unbound", updated_at=utcnow()).where(
            (WechatNotification.binding == b) & (WechatNotification.state == "queued")).execute()
        auditor.record("wechat.unbind", actor_kind="patient", actor_id=b.patient.patient_id,
                       ip=ip, object_type="wechat_binding", object_id=str(b.id))
    return b


def set_notify(openid: str, binding_id: int, on: bool) -> None:
    b = binding_of(openid, binding_id)
    with write_transaction():
        WechatBinding.update(notify=bool(on)).where(WechatBinding.id == b.id).execute()


# report-ready notifications -------------------------------------------------------------------
def client_msg_id(key: str) -> str:
    return "cf" + hashlib.sha256(key.encode()).hexdigest()[:30]


def queue_report_ready(exam: Exam, *, status: str, digest: str = "") -> int:
    """Queue one 'your report is ready' message per WeChat user bound to the exam's patient.
    Call INSIDE the transaction that makes the report final. A final report is announced
    once per binding; a corrected one again (once per content). Returns the rows queued."""
    if status not in ("final", "corrected"):
        return 0
    if status == "corrected" and not digest:
        from .schema import Report
        r = Report.get_or_none(Report.exam == exam.id)
        digest = hashlib.sha256(json.dumps(
            [r.findings, r.impression, r.pdf_sha256] if r else [], ensure_ascii=False
        ).encode()).hexdigest() if r else ""
    patient_id = exam.patient_id
    bindings = list(WechatBinding.select(WechatBinding.id).where(
        (WechatBinding.patient == patient_id) & WechatBinding.revoked_at.is_null()
        & (WechatBinding.notify == True)))  # noqa: E712 - peewee expression
    queued = 0
    for b in bindings:
        key = f"wechat:report:{exam.id}:{b.id}"
        if status == "corrected":
            key += ":c" + (digest or "")[:16]
        if Outbox.select(Outbox.id).where(Outbox.idempotency_key == key).exists():
            continue
        cmid = client_msg_id(key)
        Outbox.create(channel=CHANNEL, destination=f"binding:{b.id}", idempotency_key=key,
                      payload=json.dumps({"kind": "report_ready", "binding_id": b.id,
                                          "exam_id": exam.id, "client_msg_id": cmid}))
        WechatNotification.create(key=key, binding=b.id, exam=exam.id, client_msg_id=cmid)
        queued += 1
    return queued


@dataclass
class PendingNotice:
    key: str
    openid: str | None          # None: unbound since it was queued (nothing is sent)
    client_msg_id: str
    state: str


def notice_for_send(key: str) -> PendingNotice | None:
    n = (WechatNotification.select(WechatNotification, WechatBinding)
         .join(WechatBinding).where(WechatNotification.key == key).first())
    if n is None:
        return None
    b = n.binding
    active = b.revoked_at is None and b.notify
    return PendingNotice(key, b.openid if active else None, n.client_msg_id, n.state)


def notice_attempt(key: str, *, ok: bool, msgid: int | None = None, detail: str = "") -> None:
    """Record one send attempt: accepted by WeChat (with its msgid) or failed."""
    now = utcnow()
    with write_transaction():
        q = {"attempts": WechatNotification.attempts + 1, "updated_at": now,
             "detail": detail[:255]}
        if ok:
            q.update(state="accepted", msgid=msgid)
        WechatNotification.update(**q).where((WechatNotification.key == key)
                                             & (WechatNotification.state == "queued")).execute()


def notice_dropped(key: str, why: str) -> None:
    with write_transaction():
        WechatNotification.update(state="dropped", detail=why[:255], updated_at=utcnow()).where(
            WechatNotification.key == key).execute()


def notice_finished(msgid: int, status: str) -> bool:
    """TEMPLATESENDJOBFINISH: Status 'success', 'failed:user block' or
    'failed: system failed'. Returns whether a notification was updated."""
    s = (status or "").strip().lower()
    state = "delivered" if s == "success" else "blocked" if "block" in s else "failed"
    with write_transaction():
        n = WechatNotification.update(state=state, detail=status[:255], updated_at=utcnow()).where(
            WechatNotification.msgid == msgid).execute()
    return bool(n)


def notification_counts() -> dict:
    return {row[0]: row[1] for row in WechatNotification.select(
        WechatNotification.state, pw.fn.COUNT(WechatNotification.id))
        .group_by(WechatNotification.state).tuples()}


# the shared access token / JS-SDK ticket ------------------------------------------------------
@dataclass
class Credential:
    value: str
    expires_at: dt.datetime | None
    refreshed_at: dt.datetime | None
    lease_owner: str
    lease_until: dt.datetime | None
    refreshes: int
    last_error: str
    last_error_at: dt.datetime | None


def _cred_row(appid: str, kind: str) -> WechatCredential:
    row = WechatCredential.get_or_none((WechatCredential.appid == appid)
                                       & (WechatCredential.kind == kind))
    if row is not None:
        return row
    try:
        with write_transaction():
            return WechatCredential.create(appid=appid, kind=kind)
    except pw.IntegrityError:
        return WechatCredential.get((WechatCredential.appid == appid)
                                    & (WechatCredential.kind == kind))


def read_credential(appid: str, kind: str) -> Credential:
    r = _cred_row(appid, kind)
    return Credential(r.value, r.expires_at, r.refreshed_at, r.lease_owner, r.lease_until,
                      r.refreshes, r.last_error, r.last_error_at)


def claim_refresh(appid: str, kind: str, owner: str, lease_s: float,
                  *, fresh_until: dt.datetime | None = None, stale_value: str | None = None
                  ) -> bool:
    """Take the refresh lease (one process at a time, on SQLite and MySQL alike: a single
    conditional UPDATE). The lease is refused when another live lease exists, or when the
    token became fresh meanwhile (expires after `fresh_until`, or differs from the
    `stale_value` the caller found invalid)."""
    row = _cred_row(appid, kind)
    cond = WechatCredential.id == row.id
    if fresh_until is not None:
        cond &= (WechatCredential.expires_at.is_null()
                 | (WechatCredential.expires_at <= fresh_until))
    if stale_value is not None:
        cond &= (WechatCredential.value == stale_value)
    return claim_row(WechatCredential, cond, WechatCredential.lease_owner,
                     WechatCredential.lease_until, owner, lease_s)


def store_credential(appid: str, kind: str, owner: str, value: str, expires_in: int) -> None:
    now = utcnow()
    with write_transaction():
        WechatCredential.update(value=value, expires_at=now + dt.timedelta(seconds=expires_in),
                                refreshed_at=now, refreshes=WechatCredential.refreshes + 1,
                                lease_owner="", lease_until=None, last_error="").where(
            (WechatCredential.appid == appid) & (WechatCredential.kind == kind)
            & (WechatCredential.lease_owner == owner)).execute()


def release_refresh(appid: str, kind: str, owner: str, error: str = "") -> None:
    with write_transaction():
        q = {"lease_owner": "", "lease_until": None}
        if error:
            q.update(last_error=error[:2000], last_error_at=utcnow())
        WechatCredential.update(**q).where(
            (WechatCredential.appid == appid) & (WechatCredential.kind == kind)
            & (WechatCredential.lease_owner == owner)).execute()


def note_credential_error(appid: str, kind: str, error: str) -> None:
    with write_transaction():
        _cred_row(appid, kind)
        WechatCredential.update(last_error=error[:2000],
                                last_error_at=utcnow() if error else None).where(
            (WechatCredential.appid == appid) & (WechatCredential.kind == kind)).execute()


# message callback guards ----------------------------------------------------------------------
def note_nonce(timestamp: str, nonce: str, msg_key: str, window: dt.timedelta) -> str:
    """Remember a callback's (timestamp, nonce). Returns 'new', 'same' (the same message
    sent again with the same nonce: a retry) or 'replay' (another message reusing it)."""
    key = f"{timestamp}:{nonce}"[:128]
    now = utcnow()
    try:
        with write_transaction():
            WechatNonce.delete().where(WechatNonce.seen_at < now - 2 * window).execute()
            WechatNonce.create(nonce_key=key, msg_key=msg_key[:128], seen_at=now)
        return "new"
    except pw.IntegrityError:
        old = WechatNonce.get_or_none(WechatNonce.nonce_key == key)
        return "same" if old is not None and old.msg_key == msg_key[:128] else "replay"


def inbound_seen(msg_key: str) -> WechatInbound | None:
    return WechatInbound.get_or_none(WechatInbound.msg_key == msg_key[:128])


def inbound_record(msg_key: str, kind: str, reply: str) -> bool:
    """Record a handled message; False if another request recorded it first."""
    try:
        with write_transaction():
            WechatInbound.delete().where(
                WechatInbound.received_at < utcnow() - dt.timedelta(days=7)).execute()
            WechatInbound.create(msg_key=msg_key[:128], kind=kind[:32], reply=reply)
        return True
    except pw.IntegrityError:
        return False


def last_inbound() -> dict | None:
    m = WechatInbound.select().order_by(WechatInbound.id.desc()).first()
    return {"kind": m.kind, "at": m.received_at.isoformat() + "Z"} if m else None


def binding_count() -> int:
    return WechatBinding.select().where(WechatBinding.revoked_at.is_null()).count()
