"""Staff sign-in, sign-out, who-am-I and password change; the session cookies of every
sign-in (staff, patient, share, WeChat).

The sign-in rules and their transactions are server/signin.py: a new session ID at every
sign-in (no fixation), the browser's old one ended, the account locked after the policy's
number of failures (with an audit event). The handlers here parse, call it and answer.
"""
from __future__ import annotations

import logging

from models.staff import staff_user_by_id

from .. import signin
from ..auth import COOKIE, KEEP_COOKIE, MAX_KEPT
from .base import ApiError, BaseHandler

log = logging.getLogger(__name__)

KEEP_MAX_AGE_S = 90 * 24 * 3600     # the sessions inside end on their own, sooner


def set_session_cookie(handler: BaseHandler, token: str, max_age_s: int, *,
                       drop: tuple[str, ...] = ()) -> None:
    """Make `token` the browser's primary session. The patient and share sessions it held
    until now stay usable (cf_keep, newest first) unless named in `drop` (ended ones)."""
    handler.set_cookie(COOKIE, token, path="/", httponly=True, samesite="Lax",
                       secure=handler.request.protocol == "https",
                       expires_days=None, max_age=max_age_s)
    keep = [cred for cred, p in handler.held
            if p.kind != "staff" and cred != token and cred not in drop]
    write_keep_cookie(handler, keep)


def write_keep_cookie(handler: BaseHandler, creds: list[str]) -> None:
    creds = list(dict.fromkeys(creds))[:MAX_KEPT]
    if creds:
        handler.set_cookie(KEEP_COOKIE, ".".join(creds), path="/", httponly=True,
                           samesite="Lax", secure=handler.request.protocol == "https",
                           expires_days=None, max_age=KEEP_MAX_AGE_S)
    elif handler.get_cookie(KEEP_COOKIE) is not None:
        handler.clear_cookie(KEEP_COOKIE, path="/")


def clear_session_cookie(handler: BaseHandler, *, keep_others: bool = True) -> None:
    """Sign out of the primary session; the other kept sessions move up (or go too)."""
    handler.clear_cookie(COOKIE, path="/")
    if not keep_others:
        write_keep_cookie(handler, [])


def client(handler: BaseHandler) -> dict:
    """The browser's side of a sign-in: keyword arguments of the server/signin.py calls."""
    return {"ip": handler.client_ip(),
            "user_agent": handler.request.headers.get("User-Agent", "")}


def adopt_session(handler: BaseHandler, new, *, ended: tuple[str, ...] = (),
                  drop: tuple[str, ...] = ()) -> None:
    """After a sign-in: the sessions it ended (`ended`, cookie values) leave the principal
    cache and the new one (a models.sessions.NewSession) becomes the browser's primary
    session for its lifetime; `drop`: ended ones to remove from cf_keep as well."""
    for cred in ended:
        handler.ctx.principals.forget(cred)
    s = new.session
    set_session_cookie(handler, new.token, int((s.expires_at - s.created_at).total_seconds()),
                       drop=drop)


def answer_sign_in(handler: BaseHandler, r: signin.SignInResult) -> None:
    """Answer a staff sign-in step: the next step's ticket, the refusal, or the session."""
    if r.outcome == "second-factor":
        handler.write_json({"ok": True, "second_factor": r.second_factor, "ticket": r.ticket})
        return
    refusal = r.refusal()
    if refusal is not None:
        raise refusal
    if r.session is None:          # a signed-in account confirmed its second factor
        handler.write_json({"ok": True, **r.extra})
        return
    adopt_session(handler, r.session, ended=(handler.credential,) if handler.credential else ())
    handler.write_json({"ok": True, "csrf_token": r.session.session.csrf_token,
                        "user": user_json(r.user), **r.extra})


class LoginHandler(BaseHandler):
    """Staff sign-in with user name and password: the session, or the second step's ticket."""

    async def post(self) -> None:
        body = self.json_body(8192)
        username = str(body.get("username") or "").strip()[:64]
        password = str(body.get("password") or "")
        r = await self.in_db(signin.password_step, self.ctx, username, password,
                             old=self.credential, **client(self))
        answer_sign_in(self, r)


def user_json(user) -> dict:
    return {"username": user.username, "display_name": user.display_name,
            "roles": [r for r in user.roles.split(",") if r],
            "must_change_password": bool(user.must_change_password)}


class LogoutHandler(BaseHandler):
    async def post(self) -> None:
        p, cred = self.principal, self.credential
        await self.in_db(signin.sign_out, self.ctx, (cred,) if cred else (),
                         actor=p.audit_actor() if p is not None else None, ip=self.client_ip())
        if cred:
            self.ctx.principals.forget(cred)
        clear_session_cookie(self)
        self.write_json({"ok": True})


class MeHandler(BaseHandler):
    async def get(self) -> None:
        p = self.principal
        if p is None:
            raise ApiError(401, "未登录 / not signed in")
        out = {"ok": True, "kind": p.kind, "csrf_token": p.csrf_token}
        if p.kind == "staff":
            u = await self.in_db(staff_user_by_id, p.staff_user_id)
            out["user"] = user_json(u)
        self.write_json(out)


class PasswordHandler(BaseHandler):
    async def post(self) -> None:
        p = self.principal
        if p is None or p.kind != "staff" or p.via_token:
            raise ApiError(401, "请先登录 / please sign in")
        body = self.json_body(8192)
        await self.in_db(signin.change_password, self.ctx, p.staff_user_id,
                         str(body.get("old_password") or ""),
                         str(body.get("new_password") or ""), ip=self.client_ip())
        if self.credential:
            self.ctx.principals.forget(self.credential)
        self.write_json({"ok": True})


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/api/auth/login", LoginHandler, d),
        (r"/api/auth/logout", LogoutHandler, d),
        (r"/api/auth/me", MeHandler, d),
        (r"/api/auth/password", PasswordHandler, d),
    ]
