"""The viewer's HTML pages (exam list, film view, comparison workspace), served from
viewer_static/ with the security headers of every response. The pages are static: their
scripts read what to show from the URL and ask the JSON API, so access control stays in
the API.

Static files are versioned: every page is served with its /static/ URLs rewritten to
/static/v-{BUILD}/, where BUILD is a hash of everything in viewer_static/. Module imports are
relative, so the whole module graph is versioned too, and versioned files are cacheable as
immutable: a second visit revalidates nothing, and a new release changes every URL at once.
"""
from __future__ import annotations

import hashlib
import logging
import re

from ..config import ROOT
from .base import UID, BaseHandler

log = logging.getLogger(__name__)

STATIC = ROOT / "viewer_static"
VERSION_PREFIX = re.compile(r"^v-([0-9a-f]{12})/")


def _build_id() -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in STATIC.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(STATIC)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


BUILD = _build_id()
_pages: dict[str, bytes] = {}


def versioned(data: bytes) -> bytes:
    return data.replace(b'"/static/', b'"/static/v-' + BUILD.encode() + b'/')


# <!--#include parts/NAME.html key="value" …--> stands for that part with {{key}} filled in:
# what several pages share (a head, a form) is written once.
INCLUDE = re.compile(rb'<!--#include (parts/[a-z_]+\.html)((?: [a-z]+="[^"<>]*")*)-->')
PARAM = re.compile(rb'([a-z]+)="([^"<>]*)"')


def expand(data: bytes) -> bytes:
    def one(m: re.Match) -> bytes:
        part = (STATIC / m.group(1).decode()).read_bytes().rstrip(b"\n")
        for key, value in PARAM.findall(m.group(2)):
            part = part.replace(b"{{" + key + b"}}", value)
        if b"{{" in part:
            raise ValueError(f"{m.group(1).decode()}: a parameter is missing")
        return part
    return INCLUDE.sub(one, data)


def page_bytes(name: str, *, debug: bool = False) -> bytes:
    """One HTML file of viewer_static/ with its parts included and versioned static URLs,
    read once and kept."""
    data = _pages.get(name)
    if data is None or debug:
        data = versioned(expand((STATIC / name).read_bytes()))
        _pages[name] = data
    return data


class PageHandler(BaseHandler):
    """One HTML file of viewer_static/."""

    def initialize(self, ctx, page: str) -> None:
        super().initialize(ctx)
        self.page = page

    def body(self) -> bytes:
        return page_bytes(self.page, debug=bool(self.settings.get("debug")))

    def get(self, *args) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.body())


def routes(ctx) -> list:
    def page(name):
        return {"ctx": ctx, "page": name}
    return [
        (rf"/film/{UID}", PageHandler, page("film.html")),
        (r"/film/exam/([0-9]{1,12})", PageHandler, page("film.html")),
        (r"/workspace", PageHandler, page("workspace.html")),
        (rf"/workspace/({UID[1:-1]}(?:,{UID[1:-1]}){{0,7}})", PageHandler, page("workspace.html")),
    ]
