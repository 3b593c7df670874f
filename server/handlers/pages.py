"""The viewer's HTML pages (exam list, film view, comparison workspace), served from
viewer_static/ with the security headers of every response. The pages are static: their
scripts read what to show from the URL and ask the JSON API, so access control stays in
the API."""
from __future__ import annotations

import logging

from ..config import ROOT
from .base import BaseHandler

log = logging.getLogger(__name__)

UID = r"([0-9][0-9.]{0,63})"
STATIC = ROOT / "viewer_static"


class PageHandler(BaseHandler):
    """One HTML file of viewer_static/, read once and kept."""

    _cache: dict[str, bytes] = {}

    def initialize(self, ctx, page: str) -> None:
        super().initialize(ctx)
        self.page = page

    def body(self) -> bytes:
        data = self._cache.get(self.page)
        if data is None or self.settings.get("debug"):
            data = (STATIC / self.page).read_bytes()
            self._cache[self.page] = data
        return data

    def get(self, *args) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.body())


def routes(ctx) -> list:
    def page(name):
        return {"ctx": ctx, "page": name}
    return [
        (r"/", PageHandler, page("index.html")),
        (rf"/film/{UID}", PageHandler, page("film.html")),
        (r"/workspace", PageHandler, page("workspace.html")),
        (rf"/workspace/({UID[1:-1]}(?:,{UID[1:-1]}){{0,7}})", PageHandler, page("workspace.html")),
    ]
