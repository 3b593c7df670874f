"""Staff administration verbs: accounts and roles, API tokens, stored run-time settings,
the security policy, patient search for doctors and audited unmasking of personal data.

Every verb that changes something owns its transaction and records the audit event inside
it, so an action without its audit record cannot happen. Role names are passed in by the
caller (they are defined by the access policy in server/policy.py; models/ imports nothing
from server/).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import peewee as pw

from .accounts import (NO_PASSWORD, PasswordPolicyError, check_password_strength,
                       hash_password, token_refusal)
from .catalog import CatalogError, NotFound, mask_phone, validate_id_number
from .changes import announce
from .db import write_transaction
from .schema import (ApiToken, AuditHead, Exam, Outbox, Patient, Quarantine, Report,
                     RuntimeSetting, Session, StaffUser, utcnow)
from .sessions import create_api_token, end_sessions_of_user

USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]{2,32}")


class StaffError(CatalogError):
    """Bad input to an administration verb; the message (Chinese / English) says why."""
    status = 400


class Conflict(StaffError):
    status = 409


class Refused(StaffError):
    """A change refused because it would lock people out or break role separation."""
    status = 409


class TokenRefused(StaffError):
    """An API token this issuer may not give this owner (separation of duties)."""
    status = 403


@dataclass
class Actor:
    """Who performs an administration action (for the audit record)."""
    kind: str
    username: str
    ip: str = ""
    user_id: int | None = None


# stored settings ----------------------------------------------------------------------------
_cache_lock = threading.Lock()
_cache: dict[str, Any] = {"at": 0.0, "values": None}
CACHE_TTL_S = 2.0
SECRET_HINTS = ("password", "secret", "token", "key")


def stored_settings(max_age_s: float = CACHE_TTL_S) -> dict[str, Any]:
    """All stored run-time settings {key: value}; cached for a moment per process, so a
    change applies to every worker process within seconds, without a restart."""
    now = time.monotonic()
    with _cache_lock:
        if _cache["values"] is not None and now - _cache["at"] < max_age_s:
            return dict(_cache["values"])
    values = {}
    for row in RuntimeSetting.select():
        try:
            values[row.key] = json.loads(row.value)
        except ValueError:
            continue
    with _cache_lock:
        _cache.update(at=time.monotonic(), values=values)
    return dict(values)


def forget_settings_cache() -> None:
    with _cache_lock:
        _cache.update(at=0.0, values=None)


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "(default)"
    if any(h in key.lower() for h in SECRET_HINTS) and value not in ("", None):
        return "***"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 300 else text[:297] + "..."


def store_settings(changes: dict[str, Any], *, actor: Actor, auditor, area: str) -> list[str]:
    """Write stored settings (a value of None removes the override) and audit each change.
    Returns the keys that changed."""
    changed = []
    with write_transaction():
        for key, value in changes.items():
            row = RuntimeSetting.get_or_none(RuntimeSetting.key == key)
            old = json.loads(row.value) if row is not None else None
            if value is None:
                if row is None:
                    continue
                RuntimeSetting.delete().where(RuntimeSetting.id == row.id).execute()
            else:
                if row is not None and old == value:
                    continue
                text = json.dumps(value, ensure_ascii=False)
                if row is None:
                    RuntimeSetting.create(key=key, value=text, updated_at=utcnow(),
                                          updated_by=actor.username)
                else:
                    RuntimeSetting.update(value=text, updated_at=utcnow(),
                                          updated_by=actor.username).where(
                        RuntimeSetting.id == row.id).execute()
            auditor.record(f"{area}.change", actor_kind=actor.kind, actor_id=actor.username,
                           ip=actor.ip, object_type="setting", object_id=key,
                           detail=f"{_shown(key, old)} -> {_shown(key, value)}")
            changed.append(key)
        if changed:
            announce()         # every node re-reads its settings within a second
    forget_settings_cache()
    return changed


def setting_rows(prefix: str) -> dict[str, dict]:
    """Stored rows under a key prefix, with who changed them and when."""
    out = {}
    for row in RuntimeSetting.select().where(RuntimeSetting.key.startswith(prefix)):
        try:
            value = json.loads(row.value)
        except ValueError:
            continue
        out[row.key[len(prefix):]] = {"value": value, "updated_by": row.updated_by,
                                      "updated_at": row.updated_at.isoformat()}
    return out


# networks -----------------------------------------------------------------------------------
def ip_in_networks(ip: str, networks: list[str]) -> bool:
    try:
        addr = ipaddress.ip_address((ip or "").split("%")[0])
    except ValueError:
        return False
    if getattr(addr, "ipv4_mapped", None):
        addr = addr.ipv4_mapped
    for n in networks:
        try:
            if addr in ipaddress.ip_network(n, strict=False):
                return True
        except ValueError:
            continue
    return False


# accounts ------------------------------------------------------------------------------------
def roles_of(user: StaffUser) -> list[str]:
    return [r for r in (user.roles or "").split(",") if r]


def check_roles(roles: Any, known_roles: dict[str, str], admin_roles: set[str]) -> list[str]:
    if not isinstance(roles, list) or not roles:
        raise StaffError("请至少选择一个角色 / choose at least one role")
    roles = [str(r) for r in roles]
    bad = [r for r in roles if r not in known_roles]
    if bad:
        raise StaffError(f"未知角色：{', '.join(bad)[:100]} / unknown role")
    if len(set(roles) & admin_roles) > 1:
        raise StaffError("一个账号不能同时拥有两个管理员角色（三员分立） / no account may hold "
                         "two admin roles (separation of duties)")
    if set(roles) & admin_roles and set(roles) - admin_roles:
        raise StaffError("管理员账号不能同时兼任前台或医生 / an admin account cannot also be "
                         "front desk or doctor")
    return [r for r in known_roles if r in set(roles)]


def temporary_password(min_length: int = 8) -> str:
    """A one-time password with all four character classes."""
    n = max(16, min_length + 4)
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    body = "".join(secrets.choice(alphabet) for _ in range(n - 4))
    return body[:4] + "-" + secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") + \
        secrets.choice("abcdefghijkmnopqrstuvwxyz") + secrets.choice("23456789") + body[4:]


def user_summary(u: StaffUser, now: dt.datetime | None = None) -> dict:
    now = now or utcnow()
    last = (Session.select(pw.fn.MAX(Session.created_at))
            .where(Session.staff_user == u).scalar())
    tokens = (ApiToken.select().where((ApiToken.staff_user == u)
                                      & ApiToken.revoked_at.is_null()
                                      & (ApiToken.expires_at > now)).count())
    return {"username": u.username, "display_name": u.display_name, "roles": roles_of(u),
            "active": bool(u.active), "must_change_password": bool(u.must_change_password),
            "locked": bool(u.locked_until and u.locked_until > now),
            "created_at": u.created_at.isoformat() if u.created_at else None,
            "password_changed_at": u.password_changed_at.isoformat()
            if u.password_changed_at else None,
            "last_sign_in": last.isoformat() if isinstance(last, dt.datetime) else last,
            "service_account": bool(u.service_account),
            "active_tokens": tokens}


def list_users() -> list[dict]:
    now = utcnow()
    return [user_summary(u, now) for u in StaffUser.select().order_by(StaffUser.username)]


def _user(username: str) -> StaffUser:
    u = StaffUser.get_or_none(StaffUser.username == str(username or "")[:64])
    if u is None:
        raise NotFound("没有这个账号 / no such account")
    return u


def staff_user_named(username: str) -> StaffUser | None:
    """The account with this user name, active or not (sign-in, TOTP reset)."""
    return StaffUser.get_or_none(StaffUser.username == username)


def staff_user_by_id(user_id: int) -> StaffUser:
    """The account with this id; raises StaffUser.DoesNotExist."""
    return StaffUser.get_by_id(user_id)


def staff_user_or_none(user_id: int) -> StaffUser | None:
    return StaffUser.get_or_none(StaffUser.id == user_id)


def set_sign_in_failures(user_id: int, failures: int, locked_until: dt.datetime | None) -> None:
    """Store the count of failed sign-ins and the lock (None: not locked); the caller holds
    the write transaction that also audits the failure."""
    StaffUser.update(failed_logins=failures, locked_until=locked_until).where(
        StaffUser.id == user_id).execute()


def clear_sign_in_failures(user_id: int) -> None:
    StaffUser.update(failed_logins=0, locked_until=None).where(
        StaffUser.id == user_id).execute()


def require_password_change(user_id: int) -> None:
    StaffUser.update(must_change_password=True).where(StaffUser.id == user_id).execute()


def set_password_hash(user_id: int, password_hash: str) -> None:
    """A password the user chose: no change required any more, the age counts from now."""
    StaffUser.update(password_hash=password_hash, must_change_password=False,
                     password_changed_at=utcnow()).where(StaffUser.id == user_id).execute()


def get_user(username: str) -> dict:
    return user_summary(_user(username))


def _display_name(v: Any, fallback: str) -> str:
    name = str(v or "").strip()
    if len(name) > 32:
        raise StaffError("姓名最多 32 个字 / the display name is limited to 32 characters")
    if any(ord(c) < 32 for c in name):
        raise StaffError("姓名含有控制字符 / the display name contains control characters")
    return name or fallback


def create_staff(username: Any, roles: Any, *, display_name: Any = "", password: Any = None,
                 actor: Actor, auditor, known_roles: dict[str, str], admin_roles: set[str],
                 min_length: int = 8, min_classes: int = 3,
                 service_account: Any = False) -> tuple[dict, str | None]:
    """Create an account. Without a password a temporary one is generated and returned
    (shown once); either way the new user must change it at first sign-in.

    service_account=True: an integration service account (a machine): no admin role, no
    password (it cannot sign in on the login page; NO_PASSWORD matches nothing), nothing to
    change at first sign-in; it acts only through API tokens the system admin issues it."""
    username = str(username or "").strip()
    if not USERNAME_RE.fullmatch(username):
        raise StaffError("用户名须为 2-32 位字母、数字、_ . - / the user name must be 2-32 "
                         "letters, digits, _ . or -")
    roles = check_roles(roles, known_roles, admin_roles)
    name = _display_name(display_name, username)
    if not isinstance(service_account, bool):
        raise StaffError("service_account 须为 true 或 false / service_account must be true or "
                         "false")
    if service_account and set(roles) & admin_roles:
        raise StaffError("集成服务账号不能拥有管理员角色 / a service account cannot hold an admin "
                         "role")
    if service_account and password not in (None, ""):
        raise StaffError("集成服务账号没有密码，只用 API 令牌 / a service account has no password; "
                         "it uses API tokens only")
    generated = None
    if service_account:
        password = temporary_password(min_length)      # checked below, then never stored
    elif password in (None, ""):
        generated = password = temporary_password(min_length)
    if not isinstance(password, str):
        raise StaffError("密码须为文本 / the password must be text")
    try:
        check_password_strength(password, min_length=min_length, min_classes=min_classes,
                                username=username)
    except PasswordPolicyError as exc:
        raise StaffError(str(exc)) from None
    pw_hash = hash_password(password)
    with write_transaction():
        if StaffUser.select().where(pw.fn.LOWER(StaffUser.username)
                                    == username.lower()).exists():
            raise Conflict(f"用户名“{username}”已存在，请换一个 / the user name is already "
                           "taken")
        u = StaffUser.create(username=username, display_name=name,
                             password_hash=NO_PASSWORD if service_account else pw_hash,
                             roles=",".join(roles), must_change_password=not service_account,
                             service_account=service_account)
        auditor.record("user.create", actor_kind=actor.kind, actor_id=actor.username,
                       ip=actor.ip, object_type="staff_user", object_id=username,
                       detail="roles=" + ",".join(roles)
                       + (" service_account" if service_account else ""))
    return user_summary(u), generated


def _active_with_role(role: str, excluding: int | None = None) -> int:
    q = StaffUser.select().where(StaffUser.active == True)  # noqa: E712
    return sum(1 for u in q if role in roles_of(u) and u.id != excluding)


def update_staff(username: str, changes: dict, *, actor: Actor, auditor,
                 known_roles: dict[str, str], admin_roles: set[str]) -> dict:
    """Change display name, roles, active flag or unlock an account."""
    if not isinstance(changes, dict) or not changes:
        raise StaffError("没有要修改的内容 / nothing to change")
    allowed = {"display_name", "roles", "active", "unlock"}
    unknown = set(changes) - allowed
    if unknown:
        raise StaffError(f"不能修改：{', '.join(sorted(unknown))[:100]} / these fields cannot "
                         "be changed")
    with write_transaction():
        u = _user(username)
        fields: dict[str, Any] = {}
        details = []
        end_sessions = False
        if "display_name" in changes:
            fields["display_name"] = _display_name(changes["display_name"], u.username)
            details.append("display_name")
        if "roles" in changes:
            roles = check_roles(changes["roles"], known_roles, admin_roles)
            if u.service_account and set(roles) & admin_roles:
                raise StaffError("集成服务账号不能拥有管理员角色 / a service account cannot hold "
                                 "an admin role")
            old = roles_of(u)
            if u.id == actor.user_id and "sysadmin" in old and "sysadmin" not in roles:
                raise Refused("不能去掉自己的系统管理员角色 / you cannot remove your own "
                              "system admin role")
            if "sysadmin" in old and "sysadmin" not in roles and u.active and \
                    _active_with_role("sysadmin", excluding=u.id) == 0:
                raise Refused("这是最后一个系统管理员，不能去掉其角色 / this is the last system "
                              "administrator")
            fields["roles"] = ",".join(roles)
            details.append(f"roles {','.join(old)} -> {','.join(roles)}")
            end_sessions = set(roles) != set(old)
        if "active" in changes:
            active = changes["active"]
            if not isinstance(active, bool):
                raise StaffError("active 须为 true 或 false / active must be true or false")
            if not active and u.id == actor.user_id:
                raise Refused("不能停用自己的账号 / you cannot deactivate your own account")
            if not active and "sysadmin" in roles_of(u) and u.active and \
                    _active_with_role("sysadmin", excluding=u.id) == 0:
                raise Refused("这是最后一个系统管理员，不能停用 / this is the last system "
                              "administrator: it cannot be deactivated")
            if active != bool(u.active):
                fields["active"] = active
                details.append("activated" if active else "deactivated")
                end_sessions = end_sessions or not active
        if changes.get("unlock"):
            fields.update(failed_logins=0, locked_until=None)
            details.append("unlocked")
        if not fields:
            return user_summary(u)
        StaffUser.update(**fields).where(StaffUser.id == u.id).execute()
        announce()             # roles and the active flag: every node within a second
        if end_sessions:
            end_sessions_of_user(u)
        if fields.get("active") is False:
            ApiToken.update(revoked_at=utcnow()).where(
                (ApiToken.staff_user == u) & ApiToken.revoked_at.is_null()).execute()
        action = "user.deactivate" if fields.get("active") is False else "user.update"
        auditor.record(action, actor_kind=actor.kind, actor_id=actor.username, ip=actor.ip,
                       object_type="staff_user", object_id=u.username,
                       detail="; ".join(details))
    return user_summary(StaffUser.get_by_id(u.id))


def reset_password(username: str, *, actor: Actor, auditor, min_length: int = 8) -> str:
    """A new temporary password (returned, shown once); the user must change it at the next
    sign-in; their sessions end and a lock-out is lifted."""
    temp = temporary_password(min_length)
    pw_hash = hash_password(temp)
    with write_transaction():
        u = _user(username)
        if u.service_account:
            raise Refused("集成服务账号没有密码 / a service account has no password")
        if u.id == actor.user_id:
            raise Refused("请在“修改密码”中修改自己的密码 / change your own password with "
                          "“change password”")
        StaffUser.update(password_hash=pw_hash, must_change_password=True, failed_logins=0,
                         locked_until=None, password_changed_at=utcnow()).where(
            StaffUser.id == u.id).execute()
        end_sessions_of_user(u)
        auditor.record("user.password_reset", actor_kind=actor.kind, actor_id=actor.username,
                       ip=actor.ip, object_type="staff_user", object_id=u.username)
    return temp


# API tokens ------------------------------------------------------------------------------------
def list_tokens(username: str | None = None) -> list[dict]:
    now = utcnow()
    q = ApiToken.select(ApiToken, StaffUser).join(StaffUser).order_by(ApiToken.id.desc())
    if username:
        q = q.where(StaffUser.username == username)
    return [{"id": t.id, "username": t.staff_user.username, "name": t.name,
             "created_at": t.created_at.isoformat(), "expires_at": t.expires_at.isoformat(),
             "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
             "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
             "state": "revoked" if t.revoked_at else ("expired" if t.expires_at <= now
                                                      else "active")}
            for t in q.limit(500)]


def issue_token(username: str, *, name: Any, days: Any, actor: Actor, auditor) -> tuple[dict, str]:
    name = str(name or "").strip()
    if not 1 <= len(name) <= 64:
        raise StaffError("请填写令牌用途（1-64 个字） / name the token's purpose (1-64 "
                         "characters)")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 365:
        raise StaffError("有效期须为 1 到 365 天 / the token must be valid for 1 to 365 days")
    u = _user(username)
    issuer = StaffUser.get_or_none(StaffUser.id == actor.user_id) if actor.user_id else None
    if issuer is None and actor.kind != "cli":
        raise TokenRefused("无法确认签发人 / the issuer is unknown")
    why = token_refusal(u, issuer)
    if why:
        raise TokenRefused(why)
    with write_transaction():
        token = create_api_token(u, name=name, days=days)
        auditor.record("token.create", actor_kind=actor.kind, actor_id=actor.username,
                       ip=actor.ip, object_type="staff_user", object_id=u.username,
                       detail=f"owner={u.username} issuer={actor.username} "
                              f"service_account={int(bool(u.service_account))} "
                              f"name={name[:40]} days={days}")
    row = ApiToken.select().where(ApiToken.staff_user == u).order_by(ApiToken.id.desc()).first()
    return next(t for t in list_tokens(u.username) if t["id"] == row.id), token


def revoke_token(token_id: int, *, actor: Actor, auditor) -> dict:
    with write_transaction():
        t = ApiToken.select(ApiToken, StaffUser).join(StaffUser).where(
            ApiToken.id == token_id).first()
        if t is None:
            raise NotFound("没有这个令牌 / no such token")
        if t.revoked_at is not None:
            raise Conflict("该令牌已吊销 / the token is already revoked")
        ApiToken.update(revoked_at=utcnow()).where(ApiToken.id == t.id).execute()
        announce()
        auditor.record("token.revoke", actor_kind=actor.kind, actor_id=actor.username,
                       ip=actor.ip, object_type="api_token", object_id=str(t.id),
                       detail=f"owner={t.staff_user.username}")
    return next(x for x in list_tokens(t.staff_user.username) if x["id"] == t.id)


# patients for doctors ------------------------------------------------------------------------
def patient_masked(p: Patient, exams: int | None = None) -> dict:
    return {"patient_id": p.patient_id, "name": p.name, "sex": p.sex,
            "birth_date": p.birth_date.isoformat() if p.birth_date else None,
            "phone": mask_phone(p.phone) if p.phone else "",
            "id_number": p.id_number_masked or "", **({"exams": exams} if exams is not None
                                                       else {})}


def search_patients(q: str, id_hash: Callable[[str], str], limit: int = 50) -> list[dict]:
    """Patients by name (part), hospital patient ID, accession number, phone number or
    national ID number (matched by its keyed hash)."""
    q = (q or "").strip()
    if not q:
        raise StaffError("请输入姓名、患者ID、检查号、手机号或身份证号 / enter a name, patient "
                         "ID, accession number, phone or ID number")
    if len(q) > 64:
        raise StaffError("查询内容过长 / the query is too long")
    cond = (Patient.patient_id == q) | (Patient.phone == q)
    esc = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    cond |= Patient.name ** f"%{esc}%"
    cond |= Patient.id.in_(Exam.select(Exam.patient).where(Exam.accession_number == q))
    if re.fullmatch(r"[0-9]{17}[0-9Xx]", q):
        try:
            cond |= Patient.id_number_hash == id_hash(validate_id_number(q))
        except (ValueError, CatalogError):
            pass
    n_exams = pw.fn.COUNT(Exam.id)
    rows = (Patient.select(Patient, n_exams.alias("n"), pw.fn.MAX(Exam.exam_date).alias("last"))
            .join(Exam, pw.JOIN.LEFT_OUTER).where(cond & Patient.merged_into.is_null())
            .group_by(Patient.id).order_by(Patient.name, Patient.patient_id).limit(limit))
    out = []
    for p in rows:
        d = patient_masked(p, p.n)
        d["last_exam_date"] = p.last.isoformat() if isinstance(p.last, dt.date) else p.last
        out.append(d)
    return out


def _patient(patient_id: str) -> Patient:
    p = Patient.get_or_none(Patient.patient_id == str(patient_id or "")[:64])
    if p is None:
        raise NotFound("没有这个患者 / no such patient")
    if p.merged_into_id:
        p = Patient.get_by_id(p.merged_into_id)
    return p


def patient_history(patient_id: str, scope=None) -> dict:
    """Every exam of one patient, newest first; exams known only from the PACS are marked.
    `scope` (server/policy.py exam_scope): only what the asker may list, as in QIDO."""
    from .qido import in_scope
    p = _patient(patient_id)
    ids = [p.id] + [m.id for m in Patient.select().where(Patient.merged_into == p.id)]
    exams = (in_scope(Exam.select(), scope).where(Exam.patient.in_(ids))
             .order_by(Exam.exam_date.desc(nulls="LAST"), Exam.exam_time.desc(nulls="LAST"),
                       Exam.id.desc()))
    reports = {r.exam_id: r for r in Report.select().where(
        Report.exam.in_([e.id for e in exams]))} if exams else {}
    out = []
    for e in exams:
        r = reports.get(e.id)
        out.append({
            "study_uid": e.study_uid, "accession_number": e.accession_number,
            "modality": e.modality, "category": e.category,
            "exam_date": e.exam_date.isoformat() if e.exam_date else None,
            "exam_time": e.exam_time.strftime("%H:%M") if e.exam_time else None,
            "description": e.description, "status": e.status, "source": e.source,
            "pacs_only": e.source == "pacs" and e.num_instances == 0,
            "images_enabled": bool(e.images_enabled), "num_series": e.num_series,
            "num_instances": e.num_instances,
            "report_status": r.status if r else None,
        })
    return {"patient": patient_masked(p, len(out)), "exams": out}


UNMASK_FIELDS = {"phone": "手机号 / phone"}


def unmask(patient_id: str, field: Any, reason: Any, *, actor: Actor, auditor) -> dict:
    """Show one personal field in full: a deliberate action with a stated reason, audited.
    The national ID number is never stored in full (only its keyed hash and the masked
    form), so it cannot be unmasked; it can only be checked (see check_id_number)."""
    if not isinstance(field, str):
        raise StaffError("field 应为字段名 / 'field' must be a field name such as \"phone\"")
    if field == "id_number":
        raise StaffError("身份证号仅以加密摘要保存，无法显示全号；请用“核对身份证号”比对 / the ID "
                         "number is stored only as a keyed hash; use “check ID number”")
    if field not in UNMASK_FIELDS:
        raise StaffError("只能查看手机号全号 / only the phone number can be shown in full")
    reason = str(reason or "").strip()
    if not 2 <= len(reason) <= 200:
        raise StaffError("请填写查看原因（2-200 字） / state why you need it (2-200 "
                         "characters)")
    with write_transaction():
        p = _patient(patient_id)
        auditor.record("patient.unmask", actor_kind=actor.kind, actor_id=actor.username,
                       ip=actor.ip, object_type="patient", object_id=p.patient_id,
                       detail=f"field={field}; reason={reason[:200]}")
    return {"field": field, "value": p.phone or ""}


def check_id_number(patient_id: str, id_number: Any, id_hash: Callable[[str], str], *,
                    actor: Actor, auditor) -> bool:
    """Does the given national ID number match the one on record? Audited."""
    try:
        v = validate_id_number(str(id_number or "").strip())
    except (ValueError, CatalogError) as exc:
        raise StaffError(str(exc)) from None
    with write_transaction():
        p = _patient(patient_id)
        if not p.id_number_hash:
            raise StaffError("该患者没有登记身份证号 / no ID number on record for this patient")
        match = secrets.compare_digest(id_hash(v), p.id_number_hash)
        auditor.record("patient.check_id", actor_kind=actor.kind, actor_id=actor.username,
                       ip=actor.ip, object_type="patient", object_id=p.patient_id,
                       outcome="ok" if match else "mismatch")
    return match


# system health ---------------------------------------------------------------------------------
def health_figures() -> dict:
    """Outbox rows by status, quarantined objects, audit records (the admin health page)."""
    head = AuditHead.get_or_none(AuditHead.id == 1)
    return {
        "outbox": {r[0]: r[1] for r in Outbox.select(
            Outbox.status, pw.fn.COUNT(Outbox.id)).group_by(Outbox.status).tuples()},
        "quarantine": Quarantine.select().count(),
        "audit_records": head.last_id if head else 0,
    }
