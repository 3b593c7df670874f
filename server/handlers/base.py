"""Base handler: one JSON error shape, one mapping from error types to HTTP status."""
from __future__ import annotations

import hmac
import json
import logging
import time
from http import HTTPStatus
from typing import Any

import tornado.web

from models.db import outage, unavailable
from models.errors import DatabaseUnavailable, DomainError
from render.errors import RenderError

from .. import policy, proxies
from ..auth import COOKIE, KEEP_COOKIE, MAX_KEPT
from ..policy import Principal

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data: blob:; "
                                "style-src 'self'; script-src 'self'; object-src 'none'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
}


def set_security_headers(handler: tornado.web.RequestHandler) -> None:
    """The headers of every response (API, pages, static files, errors)."""
    for k, v in SECURITY_HEADERS.items():
        handler.set_header(k, v)
    handler.set_header("Server", "CloudFilm")
    if handler.request.protocol == "https":
        # security: browsers keep to HTTPS for a year once they have seen it over TLS (ours,
        # or a trusted proxy's: server/proxies.py sets the scheme from X-Forwarded-Proto)
        handler.set_header("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


class ApiError(DomainError):
    """A refusal raised by a handler: its status and the message the client reads (the
    domain layers raise their own DomainError subclasses; all map the same way)."""

    def __init__(self, status: int, message: str, *, log_message: str | None = None):
        super().__init__(message, status=status, log_message=log_message)


def error_status(exc: BaseException) -> tuple[int, str] | None:
    """Map a known error type to (status, client message); None for unexpected errors."""
    if isinstance(exc, (DomainError, RenderError)):
        return exc.status, exc.message
    if unavailable(exc):                # a database error raised outside in_db
        return DatabaseUnavailable.status, DatabaseUnavailable().message
    if isinstance(exc, tornado.web.MissingArgumentError):
        return 400, f"missing query parameter '{exc.arg_name}'"
    if isinstance(exc, tornado.web.HTTPError):
        try:
            reason = HTTPStatus(exc.status_code).phrase
        except ValueError:
            reason = "error"
        return exc.status_code, exc.reason or reason
    return None


UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# A DICOM UID in a route (digits and dots, at most 64); handlers check it with valid_uid.
UID = r"([0-9][0-9.]{0,63})"


class CsrfStale(ApiError):
    """The page's proof is missing or from another session: the page fetches a fresh one
    (GET /api/session/csrf) and repeats the request once; people never see this."""

    code = "csrf_stale"

    def __init__(self):
        super().__init__(403, "页面已过期，请刷新后重试 / this page is out of date; reload it")


class BaseHandler(tornado.web.RequestHandler):
    principal: Principal | None = None
    credential: str | None = None
    # Every live session this browser holds, primary (cf_session) first, then the patient
    # and share sessions kept in cf_keep: one WeChat browser keeps one cookie jar for every
    # link a patient opens, so opening share B must not lock out share A or the portal.
    held: tuple = ()
    # True for handlers that start a session rather than act on one (share status/open,
    # identity verification, sign-in): they need no CSRF proof of the session the browser
    # happens to hold, only the sessionless rules (same origin, JSON body).
    session_free = False
    # the browser sent a session that has ended (expired, revoked, signed out)
    ended_sessions = False

    def initialize(self, ctx) -> None:
        self.ctx = ctx

    async def prepare(self) -> None:
        """Resolve who is asking (cookie session or staff API token) and check CSRF."""
        auth = self.request.headers.get("Authorization", "")
        bearer = auth.startswith("Bearer ")
        credential = auth[7:].strip() if bearer else (self.get_cookie(COOKIE) or "")
        self.credential = credential or None
        held = []
        if credential:
            self.principal = await self.resolve_credential(credential, bearer)
            if bearer and self.principal is None:
                raise ApiError(401, "API 令牌无效或已过期 / the API token is invalid, revoked "
                                    "or expired")
            if self.principal is not None:
                held.append((credential, self.principal))
            elif not bearer:
                self.ended_sessions = True
        if not bearer:
            held += await self.resolve_kept(credential)
        self.held = tuple(held)
        if self.principal is None and self.held:
            # the primary session ended (expired, logged out): the newest kept one stands in
            self.credential, self.principal = self.held[0]
        if self.request.method in UNSAFE_METHODS:
            self.check_csrf(bearer)

    async def resolve_kept(self, primary: str) -> list[tuple[str, Principal]]:
        """The browser's other live patient and share sessions (cookie cf_keep)."""
        out = []
        for cred in self.kept_credentials():
            if cred == primary:
                continue
            p = await self.resolve_credential(cred, False)
            if p is not None and p.kind != "staff":
                out.append((cred, p))
            elif p is None:
                self.ended_sessions = True
        return out

    async def resolve_credential(self, credential: str, bearer: bool) -> Principal | None:
        resolver = self.ctx.principals
        hit, principal = resolver.cached(credential)
        if not hit:
            principal = await self.in_db(resolver.resolve, credential, bearer)
        return principal

    def kept_credentials(self) -> list[str]:
        raw = self.get_cookie(KEEP_COOKIE) or ""
        out = []
        for cred in raw.split("."):
            if 20 <= len(cred) <= 128 and cred not in out:
                out.append(cred)
        return out[:MAX_KEPT]

    def held_of(self, kind: str) -> Principal | None:
        """The newest held session of one kind (patient / share / staff)."""
        for _, p in self.held:
            if p.kind == kind:
                return p
        return None

    def held_creds(self, kind: str) -> tuple[str, ...]:
        return tuple(cred for cred, p in self.held if p.kind == kind)

    def held_share(self, share_id: int) -> Principal | None:
        for _, p in self.held:
            if p.kind == "share" and p.share_id == share_id:
                return p
        return None

    def exam_grants(self, **facts) -> tuple[list[Principal], policy.AccessError | None]:
        """Every held session that passes policy.check_exam(**facts), and the most telling
        refusal of the others (one about this exam before 'not found')."""
        candidates = [p for _, p in self.held] or [self.principal]
        if self.principal is not None and self.principal.kind == "staff":
            candidates = [self.principal]
        granting, first_error = [], None
        for p in candidates:
            try:
                policy.check_exam(p, **facts)
            except policy.AccessError as exc:
                if first_error is None or (first_error.status == 404 and exc.status != 404):
                    first_error = exc
                continue
            granting.append(p)
        return granting, first_error

    def check_exam(self, *, exam_id: int, patient_db_id: int, images_enabled: bool,
                   need: str) -> Principal:
        """policy.check_exam against every session this browser holds; the first that
        grants access becomes self.principal (the actor of logs and audit records)."""
        granting, first_error = self.exam_grants(
            exam_id=exam_id, patient_db_id=patient_db_id, images_enabled=images_enabled,
            need=need)
        if granting:
            self.principal = granting[0]
            return granting[0]
        if first_error.status == 404 and self.ended_sessions:
            # the session that showed this exam in this browser has ended (another one, say
            # a portal sign-in, is still live): say so, so the page offers the code again
            raise policy.Unauthenticated("查看时间已结束，请重新输入访问码或验证身份 / your "
                                         "viewing time has ended; enter the access code again "
                                         "or verify your identity")
        raise first_error  # type: ignore[misc]

    def check_csrf(self, bearer: bool) -> None:
        if bearer:
            return                     # tokens are not sent by browsers on their own
        origin = self.request.headers.get("Origin")
        if origin and origin != "null":
            from urllib.parse import urlparse
            if urlparse(origin).netloc != self.request.host:
                raise ApiError(403, "跨站请求被拒绝 / cross-site request refused")
        tokens = [p.csrf_token for _, p in self.held if p.csrf_token]
        if tokens and not self.session_free:
            sent = self.request.headers.get("X-CSRF-Token", "").encode()
            if not any(hmac.compare_digest(sent, t.encode()) for t in tokens):
                raise CsrfStale()
        else:
            # Without a session: only JSON bodies (a cross-site form cannot send them
            # without a CORS preflight, which we never grant).
            ctype = self.request.headers.get("Content-Type", "")
            if self.request.body and not ctype.startswith("application/json"):
                raise ApiError(415, "请求须为 JSON / send the request body as application/json")

    # access --------------------------------------------------------------------------------
    def require(self, permission: str) -> Principal:
        p = policy.require(self.principal, permission)
        if permission in policy.ADMIN_ONLY_PERMISSIONS:
            from models.staff import ip_in_networks
            from .. import settings
            if not ip_in_networks(self.client_ip(), settings.policy(self.ctx)["admin_allow_list"]):
                raise ApiError(403, "管理功能只能从管理网络白名单内的地址使用 / admin functions "
                                    "are only available from the admin allow-list")
        return p

    def require_principal(self) -> Principal:
        if self.principal is None:
            raise policy.Unauthenticated("请先登录或验证身份 / please sign in or verify your "
                                         "identity")
        return self.principal

    def client_ip(self) -> str:
        """The client's address (behind a trusted proxy: the forwarded one)."""
        return proxies.client_ip(self.request)

    def json_body(self, max_bytes: int = 1 << 20) -> dict:
        if len(self.request.body) > max_bytes:
            raise ApiError(413, "请求内容过大 / request body too large")
        try:
            data = json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "请求内容不是有效的 JSON / the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "请求内容应为 JSON 对象 / the body must be a JSON object")
        return data

    def set_default_headers(self) -> None:
        set_security_headers(self)

    def write_json(self, obj: Any, status: int = 200, personal: bool = True) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if personal:
            self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(obj, ensure_ascii=False, default=str))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = None
        exc_info = kwargs.get("exc_info")
        if exc_info:
            mapped = error_status(exc_info[1])
            if mapped:
                status_code, message = mapped
                self.set_status(status_code)
            retry = getattr(exc_info[1], "retry_after_s", None)
            if status_code == 503 and unavailable(exc_info[1]):
                retry = DatabaseUnavailable.retry_after_s
            if status_code in (429, 503) and retry:
                self.set_header("Retry-After", str(retry))
        code = getattr(exc_info[1], "code", None) if exc_info else None
        send_error_body(self, status_code, message, code if isinstance(code, str) else None)

    def log_exception(self, typ, value, tb) -> None:
        if value is not None and unavailable(value):
            outage.failed(value)          # one line per outage (models/db.py), not per request
            return
        mapped = error_status(value) if value is not None else None
        if mapped and mapped[0] < 500 and getattr(value, "quiet", False):
            return                        # expected and frequent (RenderBusy under load)
        from ..logmask import masked_path
        if mapped and mapped[0] < 500:
            log.info("%s %s -> %d: %s", self.request.method, masked_path(self), mapped[0],
                     getattr(value, "log_message", None) or mapped[1])
            return
        if isinstance(value, tornado.web.HTTPError):
            super().log_exception(typ, value, tb)      # its line uses _request_summary
            return
        # Tornado's own line adds repr(request), whose URI keeps the query string
        logging.getLogger("tornado.application").error(
            "Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))

    def _request_summary(self) -> str:
        # Tornado's uncaught-exception and warning lines: no query string, path masked
        from ..logmask import request_summary
        return request_summary(self)

    # helpers -----------------------------------------------------------------------------
    def int_arg(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            v = int(raw)
        except ValueError:
            raise ApiError(400, f"query parameter '{name}' must be a whole number") from None
        if not lo <= v <= hi:
            raise ApiError(400, f"query parameter '{name}' must be between {lo} and {hi}")
        return v

    def str_arg(self, name: str, max_len: int = 128) -> str | None:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return None
        raw = raw.strip()
        if len(raw) > max_len:
            raise ApiError(400, f"query parameter '{name}' longer than {max_len} characters")
        return raw or None

    async def in_db(self, fn, *args, **kwargs):
        """Run a database call off the event loop."""
        import functools
        loop = tornado.ioloop.IOLoop.current()
        return await loop.run_in_executor(
            self.ctx.db_executor,
            functools.partial(_with_db, fn, *args, _queued_at=time.perf_counter(), **kwargs))


def _with_db(fn, *args, _queued_at: float | None = None, **kwargs):
    # a database that cannot be reached raises DatabaseUnavailable: 503 + Retry-After
    from models.db import call

    from ..metrics import DB_WAIT
    t0 = time.perf_counter()
    if _queued_at is not None:
        DB_WAIT.labels("queue").observe(t0 - _queued_at)

    def timed():
        DB_WAIT.labels("connect").observe(time.perf_counter() - t0)
        return fn(*args, **kwargs)
    return call(timed)


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise ApiError(404, "no such page or API route")


def send_error_body(handler: tornado.web.RequestHandler, status: int, message: str | None,
                    code: str | None = None) -> None:
    """The one error answer: a page in the visitor's language for a browser that navigated
    here (never raw JSON), else {"ok": false, "status", "error"[, "code"]}."""
    if message is None:
        try:
            message = HTTPStatus(status).phrase
        except ValueError:
            message = "error"
        if status >= 500:
            message = "服务器内部错误，请稍后再试 / internal server error"
    handler.clear_header("Content-Disposition")
    handler.set_header("Cache-Control", "no-store")
    from .visitor import error_page, wants_html
    if getattr(handler, "ctx", None) is not None and wants_html(handler):
        for name in ("Content-Length", "Content-Range", "ETag", "Accept-Ranges"):
            handler.clear_header(name)
        handler.set_header("Content-Type", "text/html; charset=utf-8")
        handler.finish(error_page(handler, status, message))
        return
    handler.set_header("Content-Type", "application/json; charset=utf-8")
    body = {"ok": False, "status": status, "error": message}
    if code:
        body["code"] = code
    handler.finish(json.dumps(body, ensure_ascii=False))


class StaticFiles(tornado.web.StaticFileHandler):
    """viewer_static/ files with the security headers, no Server version and the JSON error
    shape (Tornado's own static handler answers 403/404/405 with its HTML page and
    'Server: TornadoServer/x.y'). Wired by `static_handler_class` in server/app.py."""

    def set_default_headers(self) -> None:
        set_security_headers(self)

    immutable = False

    def initialize(self, path: str, default_filename: str | None = None, ctx=None) -> None:
        super().initialize(path, default_filename)
        self.ctx = ctx

    def parse_url_path(self, url_path: str) -> str:
        # Tornado's own handler answers 500 to "/static/%00" (os.stat: embedded null byte)
        if "\x00" in url_path or len(url_path) > 1024:
            raise tornado.web.HTTPError(404)
        from .pages import BUILD, VERSION_PREFIX
        m = VERSION_PREFIX.match(url_path)
        if m:
            # /static/v-{BUILD}/…: the pages' versioned URLs (see pages.py). An older build's
            # URL still gets the current file, but is not cached for long.
            url_path = url_path[m.end():]
            self.immutable = m.group(1) == BUILD
        return super().parse_url_path(url_path)

    def set_extra_headers(self, path: str) -> None:
        if self.immutable:
            self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        else:
            self.set_header("Cache-Control", "no-cache")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        send_error_body(self, status_code,
                        "没有找到该页面 / no such page" if status_code == 404 else None)
