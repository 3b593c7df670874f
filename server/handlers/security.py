"""Second factor (TOTP + recovery codes), password expiry and history, integrity findings.
(The audit trail's CSV export and verification for the audit admin live in admin.py.)

Sign-in of an account that has a second factor, or whose role requires one
(conf/runtime setting totp_required_roles, default every admin role), takes two steps:

1. POST /api/auth/login {username, password} answers {"ok": true, "second_factor": "totp" |
   "enrol", "ticket": …} and sets no cookie. The ticket is signed, names the account and
   lasts 5 minutes.
2a. "totp": POST /api/auth/totp {ticket, code} (or {ticket, recovery_code}) starts the
   session, exactly as a one-step sign-in does (new session ID, audit record).
2b. "enrol" (an admin without a second factor yet): POST /api/auth/totp/enrol {ticket}
   gives the secret, the otpauth:// URI and its QR code (SVG); POST /api/auth/totp/confirm
   {ticket, code} checks the first code, answers the ten recovery codes (shown once) and
   starts the session.

Wrong codes count as failed sign-ins (lock-out after the configured number) and are audited.
Signed-in staff manage their own factor under /api/security/totp…; a security admin can
reset another account's factor.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import logging
import secrets
import time

from models.clock import utcnow
from models.db import write_transaction
from models.security import (begin_enrolment, confirm_enrolment, disable_totp,
                             new_recovery_codes, open_findings, password_expired,
                             recovery_codes_left, resolve_finding, totp_enabled,
                             use_recovery_code, verify_totp)
from models.sessions import create_session, end_session, load_session
from models.staff import (clear_sign_in_failures, require_password_change, set_sign_in_failures,
                          staff_user_by_id, staff_user_named, staff_user_or_none)

from .base import ApiError, BaseHandler

log = logging.getLogger(__name__)

TICKET_TTL_S = 300
POLICY_DEFAULTS = {"password_min_length": 8, "password_min_classes": 3, "password_history": 5,
                   "password_max_age_days": 90, "lockout_failures": 5, "lockout_minutes": 30,
                   "session_idle_minutes": 30, "session_absolute_hours": 12,
                   "totp_required_roles": ["sysadmin", "secadmin", "auditadmin"]}


def effective_policy(ctx) -> dict:
    """The security policy in force: stored runtime settings (staff admin pages) over conf."""
    conf = ctx.config.as_dict()
    try:
        from models.staff import security_policy
    except ImportError:     # staff administration not installed
        out = {k: conf.get(k, v) for k, v in POLICY_DEFAULTS.items()}
        if isinstance(out["totp_required_roles"], str):
            out["totp_required_roles"] = [r.strip() for r in out["totp_required_roles"]
                                          .split(",") if r.strip()]
        return out
    return security_policy(conf)


def _roles(user) -> set[str]:
    return {r for r in (user.roles or "").split(",") if r}


# tickets -------------------------------------------------------------------------------------
def _ticket_key(ctx) -> bytes:
    return hmac.new(ctx.secret_key, b"cloudfilm 2fa ticket v1", hashlib.sha256).digest()


def make_ticket(ctx, user, purpose: str) -> str:
    body = f"{user.id}.{purpose}.{int(time.time()) + TICKET_TTL_S}.{secrets.token_hex(8)}." \
           f"{user.password_hash[-12:]}"
    sig = hmac.new(_ticket_key(ctx), body.encode(), hashlib.sha256).hexdigest()[:32]
    payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
    return f"{payload}.{sig}"


def read_ticket(ctx, ticket: str, purposes: tuple[str, ...]):
    """The account a valid ticket names (blocking: db pool). Raises ApiError(401)."""
    bad = ApiError(401, "登录步骤已过期，请重新输入密码 / the sign-in step expired; enter your "
                        "password again")
    try:
        payload, sig = str(ticket).rsplit(".", 1)
        body = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
        uid, purpose, exp, _nonce, pw_tail = body.split(".", 4)
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    want = hmac.new(_ticket_key(ctx), body.encode(), hashlib.sha256).hexdigest()[:32]
    if not hmac.compare_digest(want, sig) or purpose not in purposes or int(exp) < time.time():
        raise bad
    user = staff_user_or_none(int(uid))
    if user is None or not user.active or user.password_hash[-12:] != pw_tail:
        raise bad
    if user.locked_until and user.locked_until > utcnow():
        raise ApiError(423, "账号已锁定，请稍后再试 / the account is locked; try again later")
    return user


# hooks called by the sign-in handler (server/handlers/auth.py) ------------------------------
def before_session(ctx, user, pol: dict, ip: str) -> str | None:
    """After a correct password (blocking: db pool). Applies password expiry (the account
    must change its password) and says which second-factor step is needed, if any."""
    if not user.must_change_password and password_expired(user, int(pol["password_max_age_days"])):
        with write_transaction():
            require_password_change(user.id)
            ctx.auditor.record("password.expired", actor_kind="system", ip=ip,
                               object_type="staff_user", object_id=user.username,
                               detail=f"older than {pol['password_max_age_days']} days")
        user.must_change_password = True
    if totp_enabled(user):
        return "totp"
    if _roles(user) & set(pol.get("totp_required_roles") or ()):
        return "enrol"
    return None


def start_staff_session(handler: BaseHandler, user, pol: dict, *, how: str):
    """Create the session after the last factor (blocking: db pool). Same rules as a
    one-step sign-in: the browser's previous session ends, a new ID is issued."""
    ip = handler.client_ip()
    ua = handler.request.headers.get("User-Agent", "")[:255]
    with write_transaction():
        if handler.credential:
            s = load_session(handler.credential)
            if s is not None:
                end_session(s)
        clear_sign_in_failures(user.id)
        new = create_session("staff", staff_user=user,
                             idle_timeout_s=int(pol["session_idle_minutes"]) * 60,
                             lifetime_s=int(pol["session_absolute_hours"]) * 3600, ip=ip,
                             user_agent=ua, verified=True)
        handler.ctx.auditor.record("login", actor_kind="staff", actor_id=user.username, ip=ip,
                                   outcome="ok", detail=how)
    return new


def _failed_factor(ctx, user, pol: dict, ip: str, what: str) -> bool:
    """Count a wrong code like a wrong password. Returns True if the account is now locked."""
    with write_transaction():
        fresh = staff_user_by_id(user.id)
        failures = fresh.failed_logins + 1
        locked = failures >= int(pol["lockout_failures"])
        set_sign_in_failures(
            user.id, 0 if locked else failures,
            utcnow() + dt.timedelta(minutes=int(pol["lockout_minutes"])) if locked else None)
        ctx.auditor.record("login.second_factor", actor_kind="staff", actor_id=user.username,
                           ip=ip, outcome="fail", detail=f"wrong {what}")
        if locked:
            ctx.auditor.record("account.locked", actor_kind="system", ip=ip,
                               object_type="staff_user", object_id=user.username,
                               detail=f"{pol['lockout_failures']} failed sign-ins")
    return locked


def _finish(handler: BaseHandler, result) -> None:
    from .auth import set_session_cookie, user_json
    user, new, pol, extra = result
    if handler.credential:
        handler.ctx.principals.forget(handler.credential)
    set_session_cookie(handler, new.token, int(pol["session_absolute_hours"]) * 3600)
    out = {"ok": True, "csrf_token": new.session.csrf_token, "user": user_json(user)}
    out.update(extra)
    handler.write_json(out)


def _wrong(locked: bool, pol: dict):
    if locked:
        return ApiError(423, f"验证码错误次数过多，账号已锁定 {pol['lockout_minutes']} 分钟 / too many "
                             f"wrong codes: the account is locked for {pol['lockout_minutes']} "
                             "minutes")
    return ApiError(401, "验证码错误 / wrong code")


def qr_svg(uri: str) -> str:
    import qrcode
    import qrcode.image.svg
    img = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2)
    buf = io.BytesIO()
    img.save(buf)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


# sign-in steps -------------------------------------------------------------------------------
class TotpLoginHandler(BaseHandler):
    """Second sign-in step: a code from the authenticator app or a recovery code."""

    async def post(self) -> None:
        body = self.json_body(8192)
        ticket = str(body.get("ticket") or "")
        code = str(body.get("code") or "")[:16]
        recovery = str(body.get("recovery_code") or "")[:32]
        if not code and not recovery:
            raise ApiError(400, "请输入验证码 / enter the code from your authenticator app")
        ip = self.client_ip()

        def step():
            pol = effective_policy(self.ctx)
            user = read_ticket(self.ctx, ticket, ("totp",))
            ok = verify_totp(user, self.ctx.secret_key, code) if code else \
                use_recovery_code(user, recovery)
            if not ok:
                return None, _failed_factor(self.ctx, user, pol, ip,
                                            "TOTP code" if code else "recovery code"), pol
            extra = {}
            if recovery:
                extra["recovery_codes_left"] = recovery_codes_left(user)
            new = start_staff_session(self, user, pol,
                                      how="totp" if code else "recovery code")
            return (user, new, pol, extra), False, pol

        result, locked, pol = await self.in_db(step)
        if result is None:
            raise _wrong(locked, pol)
        _finish(self, result)


class TotpEnrolHandler(BaseHandler):
    """A new secret and its QR code: for the signed-in user, or during sign-in (ticket)."""

    async def post(self) -> None:
        body = self.json_body(8192)
        ticket = body.get("ticket")
        p = self.principal

        def enrol():
            if ticket:
                user = read_ticket(self.ctx, str(ticket), ("enrol",))
            else:
                if p is None or p.kind != "staff" or p.via_token:
                    raise ApiError(401, "请先登录 / please sign in")
                user = staff_user_by_id(p.staff_user_id)
            try:
                secret, uri = begin_enrolment(user, self.ctx.secret_key)
            except ValueError:
                raise ApiError(409, "已启用双因素登录 / two-factor sign-in is already "
                                    "enabled") from None
            return secret, uri

        secret, uri = await self.in_db(enrol)
        self.write_json({"ok": True, "secret": secret, "otpauth_uri": uri,
                         "qr_svg": qr_svg(uri)})


class TotpConfirmHandler(BaseHandler):
    """The first code confirms the enrolment; answers the recovery codes (shown once)."""

    async def post(self) -> None:
        body = self.json_body(8192)
        ticket = body.get("ticket")
        code = str(body.get("code") or "")[:16]
        p = self.principal
        ip = self.client_ip()

        def confirm():
            pol = effective_policy(self.ctx)
            if ticket:
                user = read_ticket(self.ctx, str(ticket), ("enrol",))
            else:
                if p is None or p.kind != "staff" or p.via_token:
                    raise ApiError(401, "请先登录 / please sign in")
                user = staff_user_by_id(p.staff_user_id)
            with write_transaction():
                codes = confirm_enrolment(user, self.ctx.secret_key, code)
                if codes is not None:
                    self.ctx.auditor.record("totp.enrol", actor_kind="staff",
                                            actor_id=user.username, ip=ip,
                                            object_type="staff_user", object_id=user.username)
            if codes is None:
                if ticket:
                    return None, _failed_factor(self.ctx, user, pol, ip, "TOTP code"), pol
                return None, False, pol
            extra = {"recovery_codes": codes}
            if ticket:
                new = start_staff_session(self, user, pol, how="totp enrolment")
                return (user, new, pol, extra), False, pol
            return ("no-session", extra), False, pol

        result, locked, pol = await self.in_db(confirm)
        if result is None:
            raise _wrong(locked, pol)
        if result[0] == "no-session":
            self.write_json({"ok": True, **result[1]})
            return
        _finish(self, result)


# the signed-in user's own second factor ------------------------------------------------------
def _own_user(handler: BaseHandler):
    p = handler.principal
    if p is None or p.kind != "staff" or p.via_token:
        raise ApiError(401, "请先登录 / please sign in")
    return staff_user_by_id(p.staff_user_id)


class TotpStatusHandler(BaseHandler):
    async def get(self) -> None:
        def status():
            user = _own_user(self)
            pol = effective_policy(self.ctx)
            return {"ok": True, "enabled": totp_enabled(user),
                    "required": bool(_roles(user) & set(pol.get("totp_required_roles") or ())),
                    "recovery_codes_left": recovery_codes_left(user)}
        self.write_json(await self.in_db(status))


class TotpDisableHandler(BaseHandler):
    """Turn one's own second factor off (password needed; not for roles that require it)."""

    async def post(self) -> None:
        body = self.json_body(8192)
        password = str(body.get("password") or "")

        def off():
            from models.accounts import verify_password
            user = _own_user(self)
            if not verify_password(password, user.password_hash):
                raise ApiError(400, "密码错误 / wrong password")
            pol = effective_policy(self.ctx)
            if _roles(user) & set(pol.get("totp_required_roles") or ()):
                raise ApiError(403, "您的角色必须使用双因素登录 / your role requires two-factor "
                                    "sign-in")
            with write_transaction():
                disable_totp(user)
                self.ctx.auditor.record("totp.disable", actor_kind="staff",
                                        actor_id=user.username, ip=self.client_ip(),
                                        object_type="staff_user", object_id=user.username)
        await self.in_db(off)
        self.write_json({"ok": True})


class RecoveryCodesHandler(BaseHandler):
    """Ten fresh recovery codes (the old ones stop working); password needed."""

    async def post(self) -> None:
        body = self.json_body(8192)
        password = str(body.get("password") or "")

        def regen():
            from models.accounts import verify_password
            user = _own_user(self)
            if not verify_password(password, user.password_hash):
                raise ApiError(400, "密码错误 / wrong password")
            if not totp_enabled(user):
                raise ApiError(409, "尚未启用双因素登录 / two-factor sign-in is not enabled")
            with write_transaction():
                codes = new_recovery_codes(user)
                self.ctx.auditor.record("totp.recovery_codes", actor_kind="staff",
                                        actor_id=user.username, ip=self.client_ip(),
                                        object_type="staff_user", object_id=user.username)
            return codes
        self.write_json({"ok": True, "recovery_codes": await self.in_db(regen)})


class TotpResetHandler(BaseHandler):
    """A security admin removes another account's second factor (lost phone and codes);
    the account enrols again at its next sign-in."""

    async def post(self, username: str) -> None:
        p = self.require("security.manage")

        def reset():
            user = staff_user_named(username)
            if user is None:
                raise ApiError(404, "没有该账号 / no such account")
            with write_transaction():
                had = disable_totp(user)
                self.ctx.auditor.record("totp.reset", actor_kind="staff", actor_id=p.subject,
                                        ip=self.client_ip(), object_type="staff_user",
                                        object_id=username, outcome="ok" if had else "none")
            return had
        self.write_json({"ok": True, "was_enabled": await self.in_db(reset)})


# integrity and audit -------------------------------------------------------------------------
def _require_any(handler: BaseHandler, *perms: str):
    p = handler.require_principal()
    for perm in perms:
        if p.can(perm):
            return handler.require(perm)
    return handler.require(perms[0])


class IntegrityHandler(BaseHandler):
    """Open integrity findings: originals whose SHA-256 no longer matches, or missing."""

    async def get(self) -> None:
        _require_any(self, "health.read", "security.manage")
        rows = await self.in_db(open_findings)
        self.write_json({"ok": True, "findings": [
            {"id": f.id, "kind": f.kind, "object_id": f.object_id, "file_path": f.file_path,
             "expected_sha256": f.expected_sha256, "actual_sha256": f.actual_sha256 or None,
             "missing": not f.actual_sha256, "source": f.source,
             "found_at": f.found_at.isoformat()} for f in rows]})


class IntegrityResolveHandler(BaseHandler):
    async def post(self, finding_id: str) -> None:
        p = _require_any(self, "health.read", "security.manage")

        def resolve():
            with write_transaction():
                ok = resolve_finding(int(finding_id), p.subject)
                if ok:
                    self.ctx.auditor.record("integrity.resolve", actor_kind="staff",
                                            actor_id=p.subject, ip=self.client_ip(),
                                            object_type="integrity_finding",
                                            object_id=finding_id)
            return ok
        if not await self.in_db(resolve):
            raise ApiError(404, "没有该未处理的问题 / no such open finding")
        self.write_json({"ok": True})


def startup(ctx) -> None:
    from ..maintenance import install_integrity_hook
    install_integrity_hook(ctx)      # refused originals become findings (any app instance)


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/api/auth/totp", TotpLoginHandler, d),
        (r"/api/auth/totp/enrol", TotpEnrolHandler, d),
        (r"/api/auth/totp/confirm", TotpConfirmHandler, d),
        (r"/api/security/totp", TotpStatusHandler, d),
        (r"/api/security/totp/disable", TotpDisableHandler, d),
        (r"/api/security/totp/recovery-codes", RecoveryCodesHandler, d),
        (r"/api/security/users/([A-Za-z0-9_.-]{2,32})/totp/reset", TotpResetHandler, d),
        (r"/api/security/integrity", IntegrityHandler, d),
        (r"/api/security/integrity/([0-9]{1,12})/resolve", IntegrityResolveHandler, d),
    ]
