"""The Tornado application: one route table, one settings object, built in one place."""
from __future__ import annotations

import importlib
import logging

import tornado.web

from . import metrics, proxies
from .config import ROOT
from .logmask import masked_path
from .context import AppContext
from .handlers.api import HealthHandler, StudiesHandler, StudyHandler
from .handlers.base import UID, NotFoundHandler



# Each module of server/handlers/ named here contributes `routes(ctx) -> list` (only the
# routes, no side effect) and may have `startup(ctx)` for what it needs running (stored
# settings, timers, outbox senders); a feature adds its own module instead of editing one
# shared table. Every module named is required: one that fails to import stops start-up
# with its error. Order matters only for overlapping patterns (none so far).
ROUTE_MODULES = ("render", "dicomweb", "wado_uri", "report", "pages", "visitor", "auth",
                 "staff", "shares", "patient", "patient_qr", "ohif", "download", "integration",
                 "wechat", "admin", "security", "send", "measurements", "openapi", "ops")


def route_modules() -> list:
    return [importlib.import_module(f"{__package__}.handlers.{name}") for name in ROUTE_MODULES]


def make_routes(ctx: AppContext) -> list:
    d = {"ctx": ctx}
    routes = [
        (r"/healthz", HealthHandler, d),
        (r"/api/studies", StudiesHandler, d),
        (rf"/api/studies/{UID}", StudyHandler, d),
        (r"/api/exams/([0-9]{1,12})", StudyHandler, d),
    ]
    for mod in route_modules():
        routes += mod.routes(ctx)
    return routes


def startup(ctx: AppContext) -> None:
    """Run every route module's `startup(ctx)`, in ROUTE_MODULES order: once per process,
    before it serves (server/cli.py serve_forever; tests/conftest.py LiveServer)."""
    for mod in route_modules():
        start = getattr(mod, "startup", None)
        if start is not None:
            start(ctx)


access_log = logging.getLogger("tornado.access")


def log_request(handler) -> None:
    """Tornado's access log without secrets: share, QR and signed PACS tokens, patient IDs
    and accession numbers in paths are masked (server/logmask.py) and query strings (which
    may carry codes, tokens or names) are dropped."""
    app = handler.application
    if isinstance(app, CloudFilmApp):
        app.inflight = max(0, app.inflight - 1)
    status = handler.get_status()
    # 503 is an expected answer (database outage, overload: models/db.py), not a fault
    log_method = (access_log.info if status < 400 else
                  access_log.warning if status < 500 or status == 503 else access_log.error)
    path = masked_path(handler)          # no tokens, patient IDs or accession numbers
    seconds = handler.request.request_time()
    group = metrics.route_group(handler)
    metrics.observe_request(handler, seconds)
    log_method("%d %s %s %s %.1fms", status, proxies.client_ip(handler.request),
               handler.request.method, path, 1000.0 * seconds,
               extra={"method": handler.request.method, "path": path, "status": status,
                      "ms": round(1000.0 * seconds, 1), "group": group})


class CloudFilmApp(tornado.web.Application):
    """The application; every request's client address and scheme are first taken from a
    trusted proxy's headers (server/proxies.py; Tornado's xheaders stay off: they would
    trust anyone)."""

    def __init__(self, routes, ctx: AppContext, **settings):
        self.ctx = ctx
        # requests routed and not yet logged (finished): what a SIGTERM waits for
        # (server/cli.py drain); a request whose client vanished may never be logged, so the
        # wait is bounded by shutdown_grace_s
        self.inflight = 0
        super().__init__(routes, **settings)

    def find_handler(self, request, **kwargs):
        proxies.resolve(request, self.ctx.config.trusted_proxies)
        self.inflight += 1
        return super().find_handler(request, **kwargs)


def make_app(ctx: AppContext, **settings) -> tornado.web.Application:
    from .handlers.base import StaticFiles
    app_settings = dict(
        log_function=log_request,
        static_handler_class=StaticFiles,
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        static_path=str(ROOT / "viewer_static"),
        static_url_prefix="/static/",
        static_handler_args={"ctx": ctx},
        xheaders=False,
        compress_response=True,
    )
    app_settings.update(settings)
    return CloudFilmApp(make_routes(ctx), ctx, **app_settings)
