"""The OHIF v3 viewer at /ohif/ (optional, setting `ohif_enabled`; docs/ohif.md): the files
that `./run.sh ohif-install` put into `ohif_dir`, CloudFilm's conf/ohif/app-config.js in
place of the package's, and OHIF's single-page fallback (a path without a file answers
index.html). Staff only: without a staff session a page request is sent to the sign-in
page and a file request is refused. OHIF reads CloudFilm's /dicomweb on the same origin with
the session cookie.

OHIF needs a looser Content-Security-Policy than CloudFilm's own pages (eval for its
codec/worker glue, WebAssembly, blob: workers, inline styles); it is sent on /ohif/ only.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import mimetypes
import re
from pathlib import Path
from urllib.parse import quote

from ..config import ROOT
from .base import BaseHandler

APP_CONFIG = ROOT / "conf" / "ohif" / "app-config.js"
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S)
MIME = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
        ".wasm": "application/wasm", ".css": "text/css; charset=utf-8",
        ".json": "application/json", ".html": "text/html; charset=utf-8"}


def csp_for(index_html: bytes) -> str:
    """The /ohif/ policy: still same-origin only (no third-party host), with what OHIF 3.13
    was seen to need (tests/e2e/test_ohif.py): 'unsafe-eval' (the JPEG 2000 / JPEG-LS
    WebAssembly codecs' glue builds functions at run time; it also covers WebAssembly),
    inline styles (React), and index.html's two inline scripts by hash. Workers and scripts
    stay same-origin files (no blob:)."""
    hashes = " ".join("'sha256-%s'" % base64.b64encode(hashlib.sha256(m).digest()).decode()
                      for m in _INLINE_SCRIPT.findall(index_html))
    return ("default-src 'self'; "
            f"script-src 'self' 'unsafe-eval' 'wasm-unsafe-eval' {hashes}; "
            "worker-src 'self'; child-src 'self'; connect-src 'self' blob: data:; "
            "img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
            "font-src 'self' data:; media-src 'self' blob:; object-src 'none'; "
            "frame-ancestors 'none'; base-uri 'self'; form-action 'self'")


def resolve(root: Path, rel: str) -> Path | None:
    """The file `rel` under `root`, or None (missing, a folder, or outside `root`)."""
    if "\x00" in rel or len(rel) > 512 or rel.startswith(".") or "/." in rel:
        return None
    path = (root / rel).resolve()
    if root not in path.parents or not path.is_file():
        return None
    return path


class OhifHandler(BaseHandler):
    """OHIF viewer files for signed-in staff (single-page app: unknown paths answer index.html)."""

    _csp: dict = {}

    def root(self) -> Path:
        return self.ctx.config.path("ohif_dir").resolve()

    def signed_in(self, rel: str) -> bool:
        """Staff only (as the staff pages): pages go to the sign-in (or password change)
        page, file requests get a 401."""
        p = self.principal
        if p is not None and p.kind == "staff" and not (p.must_change_password and not p.via_token):
            return True
        if rel and resolve(self.root(), rel) is not None:
            self.send_error(401)
        elif p is not None and p.kind == "staff":
            self.redirect("/login?change=1&next=" + quote(self.request.uri, safe=""))
        else:
            self.redirect("/login?next=" + quote(self.request.uri, safe=""))
        return False

    async def get(self, rel: str = "") -> None:
        if not self.ctx.config.ohif_enabled:
            return self.send_error(404)
        if not self.signed_in(rel):
            return
        root = self.root()
        index = root / "index.html"
        if not index.is_file():
            self.set_status(503)
            return self.write_json({"ok": False, "status": 503, "error":
                                    "OHIF 未安装：请运行 ./run.sh ohif-install / OHIF is not "
                                    "installed: run ./run.sh ohif-install"})
        path = APP_CONFIG if rel == "app-config.js" else (resolve(root, rel) if rel else None)
        if path is None and Path(rel).suffix in MIME and rel.rsplit("/", 1)[-1] != "index.html":
            return self.send_error(404)
        await self.send_file(path or index, root)

    async def send_file(self, path: Path, root: Path) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        index = (root / "index.html").read_bytes() if path.name != "index.html" else data
        key = hashlib.sha256(index).hexdigest()
        if key not in self._csp:
            OhifHandler._csp = {key: csp_for(index)}
        self.set_header("Content-Security-Policy", self._csp[key])
        ctype = MIME.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        self.set_header("Content-Type", ctype or "application/octet-stream")
        html_or_config = path.suffix == ".html" or path == APP_CONFIG
        self.set_header("Cache-Control", "no-store" if html_or_config else "private, max-age=3600")
        self.finish(data)


class OhifStatusHandler(BaseHandler):
    """Whether the OHIF viewer is offered (the doctor page's "OHIF 阅片" links)."""

    def get(self) -> None:
        p = self.require_principal()
        enabled = bool(self.ctx.config.ohif_enabled) and p.kind == "staff"
        self.write_json({"enabled": enabled, "viewer": "/ohif/viewer" if enabled else None})


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/api/ohif", OhifStatusHandler, d),
        (r"/ohif/?", OhifHandler, d),
        (r"/ohif/(.+)", OhifHandler, d),
    ]
