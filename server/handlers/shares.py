"""Shares: created by staff (or by a patient, see patient.py), opened with their code, revoked;
QR codes; PACS-printed QR codes; the per-exam image switch; the share pages.

    POST /api/shares                       staff share.manage: create (returns url, code, QR)
    GET  /api/shares?study_uid=            staff share.manage: the exam's shares
    POST /api/shares/{id}/revoke           staff share.manage
    POST /api/shares/{id}/unlock           staff share.manage: lift a lock (wrong codes)
    POST /api/share/status  {token}        anyone: state of a share before the code is typed
    POST /api/share/open    {token, code}  anyone: one open → share session cookie
    POST /api/share/reverify {code}        share session: confirm the code before a download
    GET  /api/share/me                     share session: what this session may do
    POST /api/qr {text, format}            staff / patient / share: QR of one of our URLs
    POST /api/exams/{study_uid}/images {enabled}   staff exam.switch_images
    GET  /s/{token}                        the code-entry page (phone first)
    GET  /share/desk                       front-desk page: create a share and print its slip
    PACS QR patterns (setting pacs_qr_patterns) → signed: open; unsigned: verify identity
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import urllib.parse

from adapters.qr import png_data_url, qr_png, qr_svg
from models import shares as svc
from models.storage import valid_uid

from .. import signin
from ..config import ROOT
from .auth import adopt_session, client
from .base import UID, ApiError, BaseHandler
from .pages import PageHandler

log = logging.getLogger(__name__)

STATIC = ROOT / "viewer_static"


def share_url(ctx, token: str) -> str:
    return f"{ctx.config.base_url}/s/{token}"


def pacs_key(ctx) -> bytes:
    path = ctx.config.pacs_qr_key_file
    if not path:
        return ctx.secret_key
    from pathlib import Path
    return bytes.fromhex(Path(path).read_text().strip())


def bool_field(body: dict, name: str, default: bool) -> bool:
    v = body.get(name, default)
    if not isinstance(v, bool):
        raise ApiError(400, f"'{name}' must be true or false")
    return v


def share_options(ctx, body: dict) -> dict:
    cfg = ctx.config
    max_opens = body.get("max_opens", cfg.share_default_max_opens)
    if not isinstance(max_opens, int) or isinstance(max_opens, bool):
        raise ApiError(400, "max_opens 应为整数 / max_opens must be a whole number")
    expires = body.get("expires", f"{cfg.share_default_days}d")
    return dict(include_images=bool_field(body, "include_images", True),
                allow_download=bool_field(body, "allow_download", False),
                max_opens=max_opens, expires_in=svc.parse_duration(expires),
                max_expiry=dt.timedelta(days=cfg.share_max_days))


def creator_may_share(principal, exam, opts: dict) -> None:
    """Raise unless the creator may themself do what the share would allow (policy)."""
    from ..policy import check_share
    # (a report-only share never allows downloads: models/shares.py refuses that asking)
    check_share(principal, exam_id=exam.id, patient_db_id=exam.patient_id,
                images_enabled=bool(exam.images_enabled),
                allow_download=opts["allow_download"] and opts["include_images"])


def created_json(ctx, new: svc.NewShare) -> dict:
    url = share_url(ctx, new.token)
    return {"ok": True, "url": url, "code": new.code, "share": svc.share_json(new.share),
            "qr_png": png_data_url(qr_png(url)), "qr_svg": qr_svg(url)}


class SharesHandler(BaseHandler):
    async def post(self) -> None:
        p = self.require("share.manage")
        body = self.json_body(8192)
        study_uid = str(body.get("study_uid") or "")
        if not valid_uid(study_uid):
            raise ApiError(400, "study_uid 不是有效的 DICOM UID / study_uid is not a valid UID")
        opts = share_options(self.ctx, body)

        def make():
            exam = self.ctx.catalog.exam_by_uid(study_uid)
            creator_may_share(p, exam, opts)
            return svc.create_share(exam, key=self.ctx.secret_key, auditor=self.ctx.auditor,
                                    created_by_kind="staff", created_by=p.subject,
                                    ip=self.client_ip(), **opts)
        new = await self.in_db(make)
        self.write_json(created_json(self.ctx, new), status=201)

    async def get(self) -> None:
        self.require("share.manage")
        study_uid = self.str_arg("study_uid", 64)
        if not study_uid or not valid_uid(study_uid):
            raise ApiError(400, "需要 study_uid / query parameter study_uid is required")

        def load():
            exam = self.ctx.catalog.exam_by_uid(study_uid)
            return svc.list_shares(exam=exam)
        self.write_json({"ok": True, "shares": await self.in_db(load)})


class ShareRevokeHandler(BaseHandler):
    async def post(self, share_id: str) -> None:
        p = self.require("share.manage")
        await self.in_db(svc.revoke_share, int(share_id), auditor=self.ctx.auditor,
                         actor_kind="staff", actor_id=p.subject, ip=self.client_ip())
        self.ctx.principals.clear()
        self.write_json({"ok": True})


class ShareUnlockHandler(BaseHandler):
    """Lift a share's lock after too many wrong codes (the front desk, once it has checked
    who is asking); audited share.unlock."""

    async def post(self, share_id: str) -> None:
        p = self.require("share.manage")
        sh = await self.in_db(svc.unlock_share, int(share_id), auditor=self.ctx.auditor,
                              actor_id=p.subject, ip=self.client_ip())
        self.write_json({"ok": True, "share": await self.in_db(svc.share_json, sh)})


def share_view_json(sh, held) -> dict:
    """What the code page and the film view show of a share the browser holds."""
    return {"session": held is not None, "study_uid": sh.exam.study_uid,
            "film_url": film_url(sh.exam), "allow_download": bool(sh.allow_download),
            "include_images": bool(sh.include_images), "opens": sh.opens,
            "max_opens": sh.max_opens, "expires_at": sh.expires_at.isoformat() + "Z"}


def film_url(exam) -> str:
    """The film view of an exam; one whose images have not arrived has no study UID yet."""
    if exam.study_uid:
        return f"/film/{exam.study_uid}"
    return f"/film/exam/{exam.id}"


class ShareStatusHandler(BaseHandler):
    session_free = True

    async def post(self) -> None:
        body = self.json_body(4096)
        token = str(body.get("token") or "")
        sh, out = await self.in_db(svc.share_status, token)
        out["session"] = False
        held = self.held_share(sh.id)
        if held is not None:
            out.update(share_view_json(sh, held))
        out["ok"] = True
        self.write_json(out)


class ShareOpenHandler(BaseHandler):
    session_free = True

    async def post(self) -> None:
        body = self.json_body(4096)
        token = str(body.get("token") or "")
        code = body.get("code")
        if any(p.kind == "share" for _, p in self.held):
            sh = await self.in_db(svc.find_share, token)
            held = self.held_share(sh.id) if sh is not None else None
            if held is not None and held.csrf_token:
                # this browser opened the share already (back, reload, the link again): no
                # second open is counted, the film view just opens
                self.write_json({"ok": True, "reused": True, "csrf_token": held.csrf_token,
                                 **share_view_json(sh, held)})
                return
        with_study = body.get("include_study") is True
        opened, study = await self.in_db(self.open_and_load, token,
                                         None if code is None else str(code), with_study)
        adopt_session(self, opened.session)
        out = {"ok": True, "reused": False, "csrf_token": opened.session.session.csrf_token,
               **share_view_json(opened.share, True)}
        if with_study:
            out["study"] = study
            exam = opened.share.exam
            self.ctx.views.seen(self, "exam.view", "exam", exam.accession_number or exam.id)
        self.write_json(out)

    def open_and_load(self, token: str, code: str | None, with_study: bool):
        """The open and (with_study) the film view's data in one database call: the data
        saves the phone a round trip before its first image, and one call instead of two
        saves a wait in the database pool under load (issue 17)."""
        opened = signin.open_share(self.ctx, token, code, **client(self))
        if not with_study:
            return opened, None
        from ..auth import principal_from_session
        from .api import study_payload
        self.principal = principal_from_session(opened.session.session)
        return opened, study_payload(self.ctx, opened.share.exam, self.principal)


class ShareSessionBase(BaseHandler):
    def share_principal(self, study_uid: str | None):
        """The held share session of one exam (or the newest one)."""
        shares = [p for _, p in self.held if p.kind == "share"]
        if study_uid:
            if not valid_uid(study_uid):
                raise ApiError(400, "study_uid 不是有效的 DICOM UID / study_uid is not a valid UID")
            exam = self.ctx.catalog.exam_by_uid(study_uid) if shares else None
            shares = [p for p in shares if exam is not None and p.share_exam_id == exam.id]
        if not shares:
            self.require_principal()           # 401 without any session
            raise ApiError(403, "不是分享会话 / this is not a share session")
        return shares[0]


class ShareMeHandler(ShareSessionBase):
    async def get(self) -> None:
        p = await self.in_db(self.share_principal, self.str_arg("study_uid", 64))

        def load():
            sh = svc.share_by_id(p.share_id)
            return svc.share_json(sh)
        out = await self.in_db(load)
        self.write_json({"ok": True, "share": out, "csrf_token": p.csrf_token,
                         "freshly_verified": p.freshly_verified()})


class ShareReverifyHandler(ShareSessionBase):
    async def post(self) -> None:
        body = self.json_body(4096)
        study_uid = str(body.get("study_uid") or "") or None
        p = await self.in_db(self.share_principal, study_uid)
        await self.in_db(svc.reverify_share_session, p.session_id, p.share_id,
                         str(body.get("code") or ""), key=self.ctx.secret_key,
                         auditor=self.ctx.auditor, ip=self.client_ip(),
                         ip_limit=self.ctx.config.access_ip_max_failures)
        for cred, held in self.held:
            if held.session_id == p.session_id:
                self.ctx.principals.forget(cred)
        self.write_json({"ok": True})


class QrHandler(BaseHandler):
    async def post(self) -> None:
        self.require_principal()
        body = self.json_body(4096)
        text = str(body.get("text") or "")
        base = self.ctx.config.base_url + "/"
        if not text.startswith(base) or len(text) > 500:
            raise ApiError(400, f"只能为本系统的链接生成二维码 / QR codes are made only for links "
                                f"of this server ({base}…)")
        fmt = str(body.get("format") or "png")
        if fmt == "svg":
            self.set_header("Content-Type", "image/svg+xml")
            data = qr_svg(text).encode()
        elif fmt == "png":
            self.set_header("Content-Type", "image/png")
            data = qr_png(text)
        else:
            raise ApiError(400, "format 应为 png 或 svg / format must be png or svg")
        self.set_header("Cache-Control", "no-store")
        self.finish(data)


class ImageSwitchHandler(BaseHandler):
    async def post(self, study_uid: str) -> None:
        p = self.require("exam.switch_images")
        body = self.json_body(1024)
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise ApiError(400, "enabled 应为 true 或 false / 'enabled' must be true or false")

        def switch():
            exam = self.ctx.catalog.exam_by_uid(study_uid)
            svc.set_images_enabled(exam, enabled, auditor=self.ctx.auditor,
                                   actor_id=p.subject, ip=self.client_ip())
            self.ctx.renders.forget_exam(exam.id)   # this process: at once; others at their
            # next read of the change marker (server/changes.py, change_poll_ms)
        await self.in_db(switch)
        self.write_json({"ok": True, "study_uid": study_uid, "images_enabled": enabled})


# PACS-printed QR codes ---------------------------------------------------------------------
FIELDS = ("accession", "study_uid", "token")


def compile_pattern(pattern: str) -> tuple[str, str, str, str | None]:
    """'/pacs/a/{accession}' or '/pacs/view?acc={accession}' → (route regex, field,
    where: 'path'|'query', query name)."""
    path, _, query = pattern.strip().partition("?")
    fields = re.findall(r"\{([a-z_]+)\}", pattern)
    if len(fields) != 1 or fields[0] not in FIELDS or not path.startswith("/"):
        raise ValueError(f"pacs_qr_patterns: {pattern!r} must be a path starting with / and "
                         f"hold exactly one of {{accession}}, {{study_uid}}, {{token}}")
    field = fields[0]
    if query:
        name, _, value = query.partition("=")
        if value != "{" + field + "}" or "{" in path:
            raise ValueError(f"pacs_qr_patterns: {pattern!r}: put the field in the path or as "
                             "the whole value of one query parameter")
        return "^" + re.escape(path) + "$", field, "query", name
    before, _, after = path.partition("{" + field + "}")
    return "^" + re.escape(before) + r"([A-Za-z0-9._\-]{1,200})" + re.escape(after) + "$", \
        field, "path", None


class PacsQrHandler(BaseHandler):
    log_masks_path_args = True      # a signed token or an accession number (server/logmask.py)

    def initialize(self, ctx, field: str, where: str, name: str | None) -> None:
        super().initialize(ctx)
        self.field, self.where, self.name = field, where, name

    async def get(self, *groups) -> None:
        value = groups[0] if self.where == "path" else self.get_query_argument(self.name, "")
        value = urllib.parse.unquote(value or "").strip()
        if not value or len(value) > 200:
            raise ApiError(400, "二维码内容不完整 / the QR code is incomplete")
        if self.field == "token":
            share_token = await self.in_db(svc.pacs_signed_share, value, key=pacs_key(self.ctx),
                                           auditor=self.ctx.auditor,
                                           max_opens=self.ctx.config.pacs_qr_max_opens,
                                           ip=self.client_ip())
            sh = await self.in_db(svc.find_share, share_token)
            if sh is not None and self.held_share(sh.id) is not None:
                # scanned again, reloaded or back: this browser holds it, no open is counted
                self.redirect(film_url(sh.exam))
                return
            opened = await self.in_db(signin.open_share, self.ctx, share_token, None,
                                      **client(self))
            adopt_session(self, opened.session)
            self.redirect(film_url(opened.share.exam))
            return
        # unsigned: guessable, so the patient verifies their identity first
        if self.field == "study_uid" and not valid_uid(value):
            raise ApiError(400, "二维码内容不完整 / the QR code is incomplete")
        ref = urllib.parse.quote(f"{self.field}:{value}", safe="")
        self.redirect(f"/portal#exam={ref}")


def pacs_routes(ctx) -> list:
    out = []
    for pattern in (ctx.config.pacs_qr_patterns or "").split(","):
        if not pattern.strip():
            continue
        regex, field, where, name = compile_pattern(pattern)
        out.append((regex.strip("^$"), PacsQrHandler,
                    {"ctx": ctx, "field": field, "where": where, "name": name}))
    return out


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/api/shares", SharesHandler, d),
        (r"/api/shares/([0-9]{1,12})/revoke", ShareRevokeHandler, d),
        (r"/api/shares/([0-9]{1,12})/unlock", ShareUnlockHandler, d),
        (r"/api/share/status", ShareStatusHandler, d),
        (r"/api/share/open", ShareOpenHandler, d),
        (r"/api/share/me", ShareMeHandler, d),
        (r"/api/share/reverify", ShareReverifyHandler, d),
        (r"/api/qr", QrHandler, d),
        (rf"/api/exams/{UID}/images", ImageSwitchHandler, d),
        (r"/s/([A-Za-z0-9_\-]{16,64})", PageHandler, {"ctx": ctx, "page": "share/index.html"}),
        (r"/share/desk", PageHandler, {"ctx": ctx, "page": "share/desk.html"}),
    ] + pacs_routes(ctx)
