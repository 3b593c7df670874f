"""The Tornado application: one route table, one settings object, built in one place."""
from __future__ import annotations

import tornado.web

from .config import ROOT
from .context import AppContext
from .handlers.api import HealthHandler, StudiesHandler, StudyHandler
from .handlers.base import NotFoundHandler

UID = r"([0-9][0-9.]{0,63})"


def make_routes(ctx: AppContext) -> list:
    d = {"ctx": ctx}
    routes = [
        (r"/healthz", HealthHandler, d),
        (r"/api/studies", StudiesHandler, d),
        (rf"/api/studies/{UID}", StudyHandler, d),
    ]
    try:
        from .handlers.render import render_routes
    except ImportError:
        pass
    else:
        routes += render_routes(ctx)
    return routes


def make_app(ctx: AppContext, **settings) -> tornado.web.Application:
    app_settings = dict(
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        static_path=str(ROOT / "viewer_static"),
        static_url_prefix="/static/",
        xheaders=False,
        compress_response=True,
    )
    app_settings.update(settings)
    return tornado.web.Application(make_routes(ctx), **app_settings)
