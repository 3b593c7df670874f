"""The WeChat Official Account: menu entry, web authorisation, binding, the message callback,
JS-SDK configuration and the admin status.

    GET  /wechat/                      "my exams" page (inside WeChat without a session: starts
                                       the silent web authorisation; outside: the portal's
                                       verification)
    GET  /wechat/oauth/start?next=     redirect to WeChat's authorisation (snsapi_base), state
                                       kept in a cookie
    GET  /wechat/oauth/callback        code → openid (state checked, snapshot users refused);
                                       bound: a patient session; not bound: the bind form
    GET  /api/wechat/me                visit, bound patients (masked), configured, csrf token
    POST /api/wechat/bind              identity verification (portal's methods) → binding
    POST /api/wechat/switch {binding_id}   sign in as another bound patient
    POST /api/wechat/unbind {binding_id}
    POST /api/wechat/notify {binding_id, on}
    POST /api/wechat/logout
    GET  /api/wechat/jssdk?url=        JS-SDK config (signature over the page URL)
    GET|POST /wechat/callback          WeChat's message push (signature, replay window, safe
                                       mode, duplicates, reply within 5 s)
    GET  /api/admin/wechat             staff integration.manage: configured + working
    POST /api/admin/wechat/check       staff integration.manage: try a call now
    GET  /wechat/admin                 the status page
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import html
import logging
import re
import secrets
from urllib.parse import urlparse

from adapters.wechat import (CallbackRefused, WechatApiError, check_callback_query,
                             open_callback, render_reply, reply_for)
from models import wechat as store
from models.db import write_transaction

from .. import signin
from .. import wechat_service as wx
from .auth import adopt_session, clear_session_cookie, client
from .base import UID, ApiError, BaseHandler
from .pages import PageHandler

log = logging.getLogger(__name__)

VISIT_COOKIE = "cf_wx"
STATE_COOKIE = "cf_wx_state"
NEXT_RE = re.compile(r"^/(wechat/[A-Za-z0-9_\-/]*|film/" + UID[1:-1] + ")$")
REPLY_BUDGET_S = 4.0                 # WeChat waits 5 s for the passive reply


def in_wechat(handler) -> bool:
    return "micromessenger" in handler.request.headers.get("User-Agent", "").lower()


class WechatBase(BaseHandler):
    def visit_token(self) -> str | None:
        return self.get_cookie(VISIT_COOKIE) or None

    async def openid(self, required: bool = True) -> str | None:
        tok = self.visit_token()
        openid = await self.in_db(store.load_visit, tok) if tok else None
        if openid is None and required:
            raise ApiError(401, "请从医院公众号菜单进入 / open this page from the hospital's "
                                "WeChat menu")
        return openid

    def settings_or_404(self):
        s = wx.wechat_settings(self.ctx)
        if s is None:
            raise ApiError(404, "微信公众号功能未启用 / WeChat is not configured")
        return s

    def set_visit_cookie(self, token: str) -> None:
        self.set_cookie(VISIT_COOKIE, token, path="/", httponly=True, samesite="Lax",
                        secure=self.request.protocol == "https", expires_days=None,
                        max_age=int(store.VISIT_LIFETIME.total_seconds()))

    async def sign_in(self, fn, *args):
        """Run a WeChat sign-in of server/signin.py (`fn(ctx, *args, old=, ip=,
        user_agent=)`, answering a NewSession or (x, NewSession | None)): this browser's
        previous patient sessions end (its share sessions stay) and the new one becomes its
        session. Returns what `fn` answered."""
        old = self.held_creds("patient")
        try:
            out = await self.in_db(fn, self.ctx, *args, old=old, **client(self))
        except store.WechatError as exc:
            raise ApiError(exc.status, str(exc)) from None
        new = out[1] if isinstance(out, tuple) else out
        if new is not None:
            adopt_session(self, new, ended=old, drop=old)
        return out


# pages ----------------------------------------------------------------------------------------
def message_page(title: str, text: str, link: tuple[str, str] | None = None) -> str:
    a = (f'<p><a class="btn primary wide" href="{html.escape(link[0])}">'
         f'{html.escape(link[1])}</a></p>') if link else ""
    return ("<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><link rel=\"icon\" href=\"data:,\">"
            "<link rel=\"stylesheet\" href=\"/static/share/share.css\"></head><body>"
            f"<div class=\"page\"><div class=\"card\"><h2>{html.escape(title)}</h2>"
            f"<p class=\"msg\">{html.escape(text)}</p>{a}</div></div></body></html>")


class WechatPageHandler(WechatBase):
    async def get(self) -> None:
        p = self.principal
        if (p is None or p.kind != "patient") and in_wechat(self) \
                and wx.wechat_settings(self.ctx) is not None:
            tok = self.visit_token()
            openid = await self.in_db(store.load_visit, tok) if tok else None
            if openid is None:
                self.redirect("/wechat/oauth/start")
                return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        from .pages import page_bytes
        self.finish(page_bytes("wechat/index.html"))


class OAuthStartHandler(WechatBase):
    async def get(self) -> None:
        if wx.wechat_settings(self.ctx) is None:
            self.redirect("/portal")
            return
        svc = wx.service(self.ctx)
        nxt = self.get_query_argument("next", "/wechat/")
        if not NEXT_RE.match(nxt or ""):
            nxt = "/wechat/"
        state = secrets.token_urlsafe(18)
        self.set_cookie(STATE_COOKIE, f"{state}|{nxt}", path="/wechat/oauth", httponly=True,
                        samesite="Lax", secure=self.request.protocol == "https",
                        expires_days=None, max_age=600)
        self.set_header("Cache-Control", "no-store")
        self.redirect(svc.authorize_url(state))


# why a web authorisation is refused → (status, title, text, link)
OAUTH_REFUSALS = {
    "not configured": (404, "未启用 / not configured", "微信公众号功能未启用。/ WeChat is not "
                       "configured.", ("/portal", "用身份信息查看 / verify to view")),
    "state mismatch": (403, "请重新进入 / please start again",
                       "授权请求已过期或不是从本页面发起的，请从公众号菜单重新进入。/ This sign-in did "
                       "not start here or has expired; open the page from the WeChat menu "
                       "again.", ("/wechat/oauth/start", "重新进入 / start again")),
    "no code": (400, "未授权 / not authorised", "没有收到微信的授权。/ WeChat did not "
                "authorise this visit.", ("/wechat/oauth/start", "重试 / retry")),
    "code exchange failed": (502, "微信暂时无法验证 / WeChat unavailable",
                             "暂时无法向微信确认您的身份，请稍后重试。/ WeChat could not confirm "
                             "who you are; please try again shortly.",
                             ("/wechat/oauth/start", "重试 / retry")),
    "snapshot user": (403, "请使用完整服务 / open the full page",
                      "当前为快照页，无法确认您的身份。请点击页面底部的“使用完整服务”后再查看。/ This "
                      "is a snapshot page; tap “使用完整服务” (use full service) at the bottom "
                      "first.", None),
}


class OAuthCallbackHandler(WechatBase):
    def page(self, status: int, title: str, text: str, link=None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(message_page(title, text, link))

    async def refuse(self, reason: str) -> None:
        """Audit the refused authorisation (not when WeChat is off) and show its page."""
        if reason != "not configured":
            def note():
                with write_transaction():
                    self.ctx.auditor.record("wechat.oauth", actor_kind="anonymous",
                                            ip=self.client_ip(), outcome="fail", detail=reason)
            await self.in_db(note)
        self.page(*OAUTH_REFUSALS[reason])

    def state_next(self) -> str | None:
        """The page to go to after sign-in, when the state matches its cookie (spent here)."""
        cookie = self.get_cookie(STATE_COOKIE) or ""
        self.clear_cookie(STATE_COOKIE, path="/wechat/oauth")
        want, _, nxt = cookie.partition("|")
        state = self.get_query_argument("state", "")
        if not want or not state or not hmac.compare_digest(want.encode(), state.encode()):
            return None
        return nxt if NEXT_RE.match(nxt or "") else "/wechat/"

    async def get(self) -> None:
        if wx.wechat_settings(self.ctx) is None:
            return await self.refuse("not configured")
        nxt = self.state_next()
        if nxt is None:
            return await self.refuse("state mismatch")
        code = self.get_query_argument("code", "")
        if not code:
            return await self.refuse("no code")
        try:
            res = await wx.in_db_thread(wx.service(self.ctx).exchange_code, code)
        except WechatApiError as exc:
            log.warning("WeChat web authorisation failed: %s", exc)
            return await self.refuse("code exchange failed")
        if res.snapshot_user:
            return await self.refuse("snapshot user")
        visit, new = await self.sign_in(signin.wechat_visit, res.openid)
        self.set_visit_cookie(visit)
        self.redirect(nxt if new is not None else "/wechat/#bind")


# JSON API -------------------------------------------------------------------------------------
class WechatMeHandler(WechatBase):
    async def get(self) -> None:
        configured = wx.wechat_settings(self.ctx) is not None
        openid = await self.openid(required=False)
        p = self.principal
        current = p.patient_db_id if p is not None and p.kind == "patient" else None
        bindings = await self.in_db(store.bindings_json, openid, current) if openid else []
        self.write_json({"ok": True, "configured": configured, "in_wechat": in_wechat(self),
                         "visit": openid is not None, "bindings": bindings,
                         "signed_in": current is not None,
                         "max_bindings": store.MAX_BINDINGS,
                         "csrf_token": p.csrf_token if p is not None and p.kind != "staff"
                         else None})


class WechatBindHandler(WechatBase):
    async def post(self) -> None:
        self.settings_or_404()
        openid = await self.openid()
        body = self.json_body(4096)
        binding_id, new = await self.sign_in(signin.wechat_bind, openid, body)
        self.write_json({"ok": True, "binding_id": binding_id,
                         "csrf_token": new.session.csrf_token})


def _binding_id(body: dict) -> int:
    try:
        return int(body.get("binding_id"))
    except (TypeError, ValueError):
        raise ApiError(400, "binding_id 应为数字 / binding_id must be a number") from None


class WechatSwitchHandler(WechatBase):
    async def post(self) -> None:
        openid = await self.openid()
        bid = _binding_id(self.json_body(1024))
        new = await self.sign_in(signin.wechat_switch, openid, bid)
        self.write_json({"ok": True, "csrf_token": new.session.csrf_token})


class WechatUnbindHandler(WechatBase):
    async def post(self) -> None:
        openid = await self.openid()
        bid = _binding_id(self.json_body(1024))
        p = self.principal
        try:
            b = await self.in_db(store.unbind, openid, bid, auditor=self.ctx.auditor,
                                 ip=self.client_ip())
        except store.WechatError as exc:
            raise ApiError(exc.status, str(exc)) from None
        ended = False
        if p is not None and p.kind == "patient" and p.patient_db_id == b.patient_id:
            cred = self.credential
            await self.in_db(signin.sign_out, self.ctx, (cred,))
            self.ctx.principals.forget(cred)
            clear_session_cookie(self)
            ended = True
        self.write_json({"ok": True, "signed_out": ended})


class WechatNotifyHandler(WechatBase):
    async def post(self) -> None:
        openid = await self.openid()
        body = self.json_body(1024)
        try:
            await self.in_db(store.set_notify, openid, _binding_id(body), bool(body.get("on")))
        except store.WechatError as exc:
            raise ApiError(exc.status, str(exc)) from None
        self.write_json({"ok": True})


class WechatLogoutHandler(WechatBase):
    async def post(self) -> None:
        tok, cred = self.visit_token(), self.credential
        p = self.principal

        def out():
            if tok:
                store.end_visit(tok)
            if cred and p is not None and p.kind != "staff":
                signin.sign_out(self.ctx, (cred,))
        await self.in_db(out)
        if cred:
            self.ctx.principals.forget(cred)
        self.clear_cookie(VISIT_COOKIE, path="/")
        if p is not None and p.kind != "staff":
            clear_session_cookie(self)
        self.write_json({"ok": True})


SHARE_PAGE_RE = re.compile(r"^/s/[A-Za-z0-9_\-]{16,64}$")
JS_API_LIST = ["updateAppMessageShareData", "updateTimelineShareData", "onMenuShareAppMessage"]


class JssdkHandler(WechatBase):
    async def get(self) -> None:
        self.settings_or_404()
        url = self.get_query_argument("url", "")
        base = urlparse(self.ctx.config.base_url)
        u = urlparse(url)
        if len(url) > 1024 or (u.scheme, u.netloc) != (base.scheme, base.netloc):
            raise ApiError(400, "url 必须是本站页面地址 / url must be a page of this server "
                                f"({base.scheme}://{base.netloc})")
        if not SHARE_PAGE_RE.match(u.path):
            # a share's code page shows no patient data and is opened from a chat without
            # our web authorisation: its share card (发送给朋友) is signed for anyone
            await self.openid()
        svc = wx.service(self.ctx)
        try:
            cfg = await wx.in_db_thread(svc.jssdk_config, url)
        except WechatApiError as exc:
            log.warning("JS-SDK ticket unavailable: %s", exc)
            raise ApiError(503, "微信接口暂时不可用 / WeChat is unavailable just now") from None
        self.write_json({"ok": True, **cfg, "jsApiList": JS_API_LIST})


# the message callback ---------------------------------------------------------------------------
class CallbackHandler(BaseHandler):
    """Server-to-server: no cookies, no CSRF; the signature is the authentication."""

    async def prepare(self) -> None:
        self.principal = None
        self.credential = None

    def answer(self, status: int, text: str = "") -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(text)

    def args(self) -> dict:
        return {k: self.get_query_argument(k, "")[:256] for k in
                ("signature", "timestamp", "nonce", "echostr", "encrypt_type", "msg_signature")}

    async def get(self) -> None:
        s = wx.wechat_settings(self.ctx)
        if s is None:
            self.answer(404, "not configured")
            return
        a = self.args()
        try:
            check_callback_query(s, a)
        except CallbackRefused as exc:
            log.warning("WeChat callback verification refused: %s", exc.reason)
            self.answer(exc.status, "")
            return
        self.answer(200, a["echostr"])

    async def post(self) -> None:
        s = wx.wechat_settings(self.ctx)
        if s is None:
            self.answer(404, "not configured")
            return
        try:
            inbound = open_callback(s, self.args(), self.request.body)
        except CallbackRefused as exc:
            log.warning("WeChat callback refused from %s: %s", self.client_ip(), exc.reason)
            self.answer(exc.status, "")
            return
        try:
            reply = await asyncio.wait_for(self.in_db(self.handle, s, inbound), REPLY_BUDGET_S)
        except asyncio.TimeoutError:
            log.warning("WeChat callback not handled within %.0f s; answered empty",
                        REPLY_BUDGET_S)
            reply = "success"
        except CallbackRefused as exc:
            log.warning("WeChat callback refused: %s", exc.reason)
            self.answer(exc.status, "")
            return
        self.set_header("Content-Type", "application/xml; charset=utf-8"
                        if reply != "success" else "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(reply)

    def handle(self, s, inbound) -> str:
        seen = store.note_nonce(inbound.timestamp, inbound.nonce, inbound.key,
                                dt.timedelta(seconds=s.replay_window_s))
        if seen == "replay":
            raise CallbackRefused(403, "nonce reused by another message (replay)")
        old = store.inbound_seen(inbound.key)
        if old is not None:
            return render_reply(s, inbound, old.reply or None)
        msg = inbound.message
        kind = getattr(msg, "type", "") + ":" + str(getattr(msg, "event", "") or "")
        text = None
        if getattr(msg, "event", "") == "templatesendjobfinish":
            store.notice_finished(int(getattr(msg, "id", 0) or 0),
                                  str(getattr(msg, "status", "")))
        else:
            text = reply_for(s, msg)
        if not store.inbound_record(inbound.key, kind, text or ""):
            old = store.inbound_seen(inbound.key)       # a concurrent retry got there first
            return render_reply(s, inbound, old.reply if old else None)
        return render_reply(s, inbound, text)


# admin --------------------------------------------------------------------------------------
class WechatStatusHandler(BaseHandler):
    async def get(self) -> None:
        self.require("integration.manage")
        out = await self.in_db(wx.status, self.ctx)
        self.write_json({"ok": True, **out})


class WechatCheckHandler(BaseHandler):
    async def post(self) -> None:
        self.require("integration.manage")
        out = await wx.in_db_thread(wx.check_now, self.ctx)
        status = await self.in_db(wx.status, self.ctx)
        self.write_json({"ok": True, "check": out, "status": status})


def startup(ctx) -> None:
    wx.register(ctx)                 # the 'wechat' outbox channel, in every process


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/wechat/?", WechatPageHandler, d),
        (r"/wechat/oauth/start", OAuthStartHandler, d),
        (r"/wechat/oauth/callback", OAuthCallbackHandler, d),
        (r"/wechat/callback", CallbackHandler, d),
        (r"/wechat/admin", PageHandler, {"ctx": ctx, "page": "wechat/admin.html"}),
        (r"/api/wechat/me", WechatMeHandler, d),
        (r"/api/wechat/bind", WechatBindHandler, d),
        (r"/api/wechat/switch", WechatSwitchHandler, d),
        (r"/api/wechat/unbind", WechatUnbindHandler, d),
        (r"/api/wechat/notify", WechatNotifyHandler, d),
        (r"/api/wechat/logout", WechatLogoutHandler, d),
        (r"/api/wechat/jssdk", JssdkHandler, d),
        (r"/api/admin/wechat", WechatStatusHandler, d),
        (r"/api/admin/wechat/check", WechatCheckHandler, d),
    ]

