"""Base handler: one JSON error shape, one mapping from error types to HTTP status."""
from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

import tornado.web

from models.catalog import CatalogError

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data: blob:; "
                                "style-src 'self'; script-src 'self'; object-src 'none'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
}


class ApiError(tornado.web.HTTPError):
    """An error whose message is shown to the client."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)
        self.message = message


def error_status(exc: BaseException) -> tuple[int, str] | None:
    """Map a known error type to (status, client message); None for unexpected errors."""
    if isinstance(exc, ApiError):
        return exc.status_code, exc.message
    if isinstance(exc, CatalogError):
        return exc.status, str(exc)
    try:
        from render.errors import RenderError
    except ImportError:  # render/ not present yet
        RenderError = ()  # type: ignore[assignment]
    if RenderError and isinstance(exc, RenderError):
        return getattr(exc, "status", 400), str(exc)
    if isinstance(exc, tornado.web.MissingArgumentError):
        return 400, f"missing query parameter '{exc.arg_name}'"
    if isinstance(exc, tornado.web.HTTPError):
        try:
            reason = HTTPStatus(exc.status_code).phrase
        except ValueError:
            reason = "error"
        return exc.status_code, exc.reason or reason
    return None


class BaseHandler(tornado.web.RequestHandler):
    def initialize(self, ctx) -> None:
        self.ctx = ctx

    def set_default_headers(self) -> None:
        for k, v in SECURITY_HEADERS.items():
            self.set_header(k, v)
        self.set_header("Server", "CloudFilm")

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
        if message is None:
            try:
                message = HTTPStatus(status_code).phrase
            except ValueError:
                message = "error"
            if status_code >= 500:
                message = "服务器内部错误，请稍后再试 / internal server error"
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"ok": False, "status": status_code, "error": message},
                               ensure_ascii=False))

    def log_exception(self, typ, value, tb) -> None:
        mapped = error_status(value) if value is not None else None
        if mapped and mapped[0] < 500:
            log.info("%s %s -> %d: %s", self.request.method, self.request.path, mapped[0],
                     mapped[1])
            return
        super().log_exception(typ, value, tb)

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
        return await loop.run_in_executor(self.ctx.db_executor,
                                          functools.partial(_with_db, fn, *args, **kwargs))


def _with_db(fn, *args, **kwargs):
    from models.db import database
    try:
        with database.connection_context():
            return fn(*args, **kwargs)
    except Exception:
        raise


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise ApiError(404, "no such page or API route")
