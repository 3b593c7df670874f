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
import io
import logging

from models.db import write_transaction
from models.security import (begin_enrolment, disable_totp, new_recovery_codes, open_findings,
                             recovery_codes_left, resolve_finding, totp_enabled)
from models.staff import staff_user_by_id, staff_user_named

from .. import settings, signin
from .auth import answer_sign_in, client
from .base import ApiError, BaseHandler

log = logging.getLogger(__name__)


def effective_policy(ctx) -> dict:
    """The security policy in force (one table: server/config.py, changed via settings.py)."""
    return settings.policy(ctx)


def _roles(user) -> set[str]:
    return {r for r in (user.roles or "").split(",") if r}


def qr_svg(uri: str) -> str:
    import qrcode
    import qrcode.image.svg
    img = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2)
    buf = io.BytesIO()
    img.save(buf)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


# sign-in steps (server/signin.py) -----------------------------------------------------------
class TotpLoginHandler(BaseHandler):
    """Second sign-in step: a code from the authenticator app or a recovery code."""

    async def post(self) -> None:
        body = self.json_body(8192)
        r = await self.in_db(signin.code_step, self.ctx, str(body.get("ticket") or ""),
                             code=str(body.get("code") or "")[:16],
                             recovery_code=str(body.get("recovery_code") or "")[:32],
                             old=self.credential, **client(self))
        answer_sign_in(self, r)


class TotpEnrolHandler(BaseHandler):
    """A new secret and its QR code: for the signed-in user, or during sign-in (ticket)."""

    async def post(self) -> None:
        body = self.json_body(8192)
        ticket = body.get("ticket")
        p = self.principal

        def enrol():
            if ticket:
                user = signin.read_ticket(self.ctx, str(ticket), ("enrol",))
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
        p = self.principal
        if not ticket and (p is None or p.kind != "staff" or p.via_token):
            raise ApiError(401, "请先登录 / please sign in")
        r = await self.in_db(signin.confirm_enrolment, self.ctx,
                             str(body.get("code") or "")[:16],
                             ticket=str(ticket) if ticket else None,
                             user_id=None if ticket else p.staff_user_id,
                             old=self.credential, **client(self))
        answer_sign_in(self, r)


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
            user = _own_user(self)      # the password counts on the lock-out (signin.py)
            signin.confirm_password(self.ctx, user, password, ip=self.client_ip(),
                                    action="totp.disable")
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
            user = _own_user(self)      # the password counts on the lock-out (signin.py)
            signin.confirm_password(self.ctx, user, password, ip=self.client_ip(),
                                    action="totp.recovery_codes")
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
