"""Staff sign-in, sign-out, who-am-I and password change.

A new session ID is issued at every sign-in (no fixation); the old one from the same browser
is ended. Five failures lock the account for 30 minutes and raise an audit event.
"""
from __future__ import annotations

import datetime as dt
import logging

from models.accounts import (PasswordPolicyError, check_password_strength, hash_password,
                             verify_password)
from models.db import write_transaction
from models.clock import utcnow
from models.sessions import create_session, end_session, load_session
from models.staff import (clear_sign_in_failures, ip_in_networks, security_policy,
                          set_password_hash, set_sign_in_failures, staff_user_by_id,
                          staff_user_named)

from ..auth import COOKIE, KEEP_COOKIE, MAX_KEPT
from ..policy import ADMIN_ROLES
from .base import ApiError, BaseHandler

log = logging.getLogger(__name__)

# An unknown user name costs the same scrypt work as a known one (no user enumeration).
_DUMMY_HASH = hash_password("timing-equaliser-Aa1!")


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


class LoginHandler(BaseHandler):
    async def post(self) -> None:
        body = self.json_body(8192)
        username = str(body.get("username") or "").strip()[:64]
        password = str(body.get("password") or "")
        if not username or not password:
            raise ApiError(400, "请输入用户名和密码 / enter your user name and password")
        ip, ua = self.client_ip(), self.request.headers.get("User-Agent", "")[:255]
        old = self.credential

        def attempt():
            pol = security_policy(self.ctx.config.as_dict())
            self.pol = pol
            max_failures, lock_minutes = pol["lockout_failures"], pol["lockout_minutes"]
            user = staff_user_named(username)
            now = utcnow()
            if user is None or not user.active:
                verify_password(password, _DUMMY_HASH)
                self.ctx.auditor.record("login", actor_kind="staff", actor_id=username, ip=ip,
                                        outcome="fail", detail="unknown or disabled user")
                return None, "bad"
            if user.locked_until and user.locked_until > now:
                verify_password(password, _DUMMY_HASH)
                self.ctx.auditor.record("login", actor_kind="staff", actor_id=username, ip=ip,
                                        outcome="refused", detail="account locked")
                return None, "locked"
            if not verify_password(password, user.password_hash):
                with write_transaction():
                    failures = user.failed_logins + 1
                    locked = failures >= max_failures
                    set_sign_in_failures(
                        user.id, 0 if locked else failures,
                        now + dt.timedelta(minutes=lock_minutes) if locked else None)
                    self.ctx.auditor.record("login", actor_kind="staff", actor_id=username,
                                            ip=ip, outcome="fail", detail="wrong password")
                    if locked:
                        self.ctx.auditor.record("account.locked", actor_kind="system",
                                                ip=ip, object_type="staff_user",
                                                object_id=username, outcome="ok",
                                                detail=f"{max_failures} failed sign-ins")
                return None, "locked" if locked else "bad"
            if set(user.roles.split(",")) & ADMIN_ROLES and \
                    not ip_in_networks(ip, pol["admin_allow_list"]):
                self.ctx.auditor.record("login", actor_kind="staff", actor_id=username, ip=ip,
                                        outcome="refused", detail="address not on the admin "
                                                                  "allow-list")
                return None, "network"
            from .security import before_session   # security: expiry, second factor
            step = before_session(self.ctx, user, pol, ip)
            if step:
                return (user, step), "second-factor"
            with write_transaction():
                if old:
                    s = load_session(old)
                    if s is not None:
                        end_session(s)
                clear_sign_in_failures(user.id)
                new = create_session("staff", staff_user=user,
                                     idle_timeout_s=pol["session_idle_minutes"] * 60,
                                     lifetime_s=pol["session_absolute_hours"] * 3600, ip=ip,
                                     user_agent=ua, verified=True)
                self.ctx.auditor.record("login", actor_kind="staff", actor_id=username, ip=ip,
                                        outcome="ok")
            return (user, new), "ok"

        result, outcome = await self.in_db(attempt)
        if old:
            self.ctx.principals.forget(old)
        if outcome == "locked":
            n, minutes = self.pol["lockout_failures"], self.pol["lockout_minutes"]
            raise ApiError(423, f"连续 {n} 次密码错误，账号已锁定 {minutes} 分钟 / "
                                f"too many failed sign-ins: the account is locked for "
                                f"{minutes} minutes")
        if outcome == "network":
            raise ApiError(403, "管理员账号不能从此网络地址登录（管理网络白名单） / admin accounts "
                                "cannot sign in from this address (admin allow-list)")
        if outcome == "second-factor":
            from .security import make_ticket
            user, step = result
            self.write_json({"ok": True, "second_factor": step,
                             "ticket": make_ticket(self.ctx, user, step)})
            return
        if outcome != "ok":
            raise ApiError(401, "用户名或密码错误 / wrong user name or password")
        user, new = result
        set_session_cookie(self, new.token, self.pol["session_absolute_hours"] * 3600)
        self.write_json({"ok": True, "csrf_token": new.session.csrf_token,
                         "user": user_json(user)})


def user_json(user) -> dict:
    return {"username": user.username, "display_name": user.display_name,
            "roles": [r for r in user.roles.split(",") if r],
            "must_change_password": bool(user.must_change_password)}


class LogoutHandler(BaseHandler):
    async def post(self) -> None:
        p = self.principal
        cred = self.credential

        def out():
            if cred:
                s = load_session(cred)
                if s is not None:
                    with write_transaction():
                        end_session(s)
                        if p is not None:
                            kind, subject = p.audit_actor()
                            self.ctx.auditor.record("logout", actor_kind=kind,
                                                    actor_id=subject, ip=self.client_ip())
        await self.in_db(out)
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
        old_pw = str(body.get("old_password") or "")
        new_pw = str(body.get("new_password") or "")

        def change():
            pol = security_policy(self.ctx.config.as_dict())
            user = staff_user_by_id(p.staff_user_id)
            if not verify_password(old_pw, user.password_hash):
                raise ApiError(400, "原密码错误 / the current password is wrong")
            if old_pw == new_pw:
                raise ApiError(400, "新密码不能与原密码相同 / choose a new password")
            from models.security import password_reused, remember_password
            if password_reused(user, new_pw, int(pol["password_history"])):
                raise ApiError(400, f"不能重复使用最近 {pol['password_history']} 次用过的密码 / "
                                    f"do not reuse any of your last {pol['password_history']} "
                                    "passwords")
            try:
                check_password_strength(new_pw, username=user.username,
                                        min_length=pol["password_min_length"],
                                        min_classes=pol["password_min_classes"])
            except PasswordPolicyError as exc:
                raise ApiError(400, str(exc)) from None
            with write_transaction():
                remember_password(user, user.password_hash)
                set_password_hash(user.id, hash_password(new_pw))
                self.ctx.auditor.record("password.change", actor_kind="staff",
                                        actor_id=user.username, ip=self.client_ip())
        await self.in_db(change)
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
