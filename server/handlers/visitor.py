"""What a patient's browser needs around the film view, and the pages it lands on when
something is refused.

    GET /api/session/csrf?study_uid=     a fresh CSRF proof for the page (the session that
                                         grants that exam, else the primary one)
    GET /api/film/context/{study_uid}    who is looking at this exam and what they may do:
    GET /api/film/context/exam/{id}      opens used / allowed, expiry, download, 我的检查
    GET /api/hospital                    the hospital's name, phone, hours (public)
    GET /hospital/logo                   the hospital's logo file (public)
    GET /                                phone: the patient entry; desktop: the staff sign-in
    GET /entry                           the patient entry page

Every refusal a browser navigates to (Accept: text/html) is answered by `error_page`: an
HTML page in the visitor's language with the hospital's contact and a next step.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

from models.shares import share_by_id

from models.catalog import CatalogError

from .. import policy
from ..config import ROOT
from .base import UID, ApiError, BaseHandler

STATIC = ROOT / "viewer_static"
LOGO_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
              ".svg": "image/svg+xml"}
LOGO_MAX_BYTES = 512 * 1024
LANG_COOKIE = "cf_lang"
_MOBILE = re.compile(r"Mobi|Android|iPhone|iPad|MicroMessenger|HarmonyOS", re.I)


def in_wechat(handler) -> bool:
    return "micromessenger" in handler.request.headers.get("User-Agent", "").lower()


def is_phone(handler) -> bool:
    return bool(_MOBILE.search(handler.request.headers.get("User-Agent", "")))


def hospital_json(ctx) -> dict:
    c = ctx.config
    logo = c.hospital_logo_file
    return {"name": c.hospital_name, "phone": c.hospital_phone, "hours": c.hospital_hours,
            "logo_url": "/hospital/logo" if logo and Path(logo).suffix.lower() in LOGO_TYPES
            else None}


def wechat_configured(ctx) -> bool:
    try:
        from .. import wechat_service
        return wechat_service.wechat_settings(ctx) is not None
    except Exception:           # a broken WeChat setting shows on /wechat/admin, not here
        return False


def ui_lang(handler) -> str:
    return "en" if handler.get_cookie(LANG_COOKIE) == "en" else "zh-CN"


_CJK = re.compile(r"[\u3400-\u9fff]")
PLAIN = {
    "zh-CN": {400: "链接不完整或有误，请检查后重试。", 401: "查看时间已结束，请重新输入访问码或验证身份。",
              403: "您暂时无法查看此内容。", 404: "没有找到您要查看的内容，链接可能有误或已失效。",
              429: "尝试次数过多，请稍后再试。", 500: "服务暂时不可用，请稍后再试。"},
    "en": {400: "The link is incomplete or wrong.", 401: "Your viewing time has ended; enter "
           "the access code again or verify your identity.", 403: "This cannot be shown to you.",
           404: "What you asked for was not found; the link may be wrong or no longer valid.",
           429: "Too many attempts; please try again later.",
           500: "The service is not available right now; please try again later."},
}


def local_part(message: str, lang: str, status: int = 400) -> str:
    """Server messages read 'chinese / english': the visitor sees one language only, and a
    technical message that has no Chinese (a UID parser's, say) becomes a plain sentence."""
    zh, sep, en = message.partition(" / ")
    text = (en if lang == "en" else zh).strip() if sep else message
    if (lang != "en" and not _CJK.search(text)) or (lang == "en" and not sep
                                                    and _CJK.search(text)):
        plain = PLAIN[lang]
        return plain.get(status) or plain[500 if status >= 500 else 400]
    return text


# film view --------------------------------------------------------------------------------
def _download_state(p, exam) -> tuple[bool, bool]:
    """(may download at all, freshly verified) of one principal for one exam."""
    if p.kind == "staff":
        return p.can("exam.download"), True
    if not exam.images_enabled or not exam.study_uid:
        return False, False
    if p.kind == "share" and not (p.share_include_images and p.share_allow_download):
        return False, False
    return True, p.freshly_verified()


class FilmContextHandler(BaseHandler):
    """Who looks at this exam in this browser and what they may do there: opens used and
    allowed, expiry, download (and how to verify for it), a link to 我的检查."""

    async def get(self, ref: str) -> None:
        by_id = "/exam/" in self.request.path
        if not by_id and not policy_uid(ref):
            raise ApiError(400, "the study UID is not a valid DICOM UID")
        self.require_principal()     # anonymous: one 401 whether the exam exists or not

        def load():
            catalog = self.ctx.catalog
            exam = catalog.exam_by_id(int(ref)) if by_id else catalog.exam_by_uid(ref)
            facts = dict(exam_id=exam.id, patient_db_id=exam.patient_id,
                         images_enabled=exam.images_enabled, need="report")
            granting, _ = self.exam_grants(**facts)
            p = self.check_exam(**facts)      # the same refusal the study JSON gives
            return {"ok": True, "kind": p.kind, "csrf_token": p.csrf_token,
                    **_download_json(granting, exam), "share": _share_json(granting),
                    "images_enabled": bool(exam.images_enabled),
                    "include_images": bool(exam.images_enabled and (
                        p.kind != "share" or any(q.kind != "share" or q.share_include_images
                                                 for q in granting))),
                    "has_images": bool(exam.study_uid) and exam.num_instances > 0,
                    "study_uid": exam.study_uid, "exam_id": exam.id,
                    "portal": self.held_of("patient") is not None,
                    "in_wechat": in_wechat(self), "hospital": hospital_json(self.ctx)}
        self.write_json(await self.in_db(load))


def _download_json(granting, exam) -> dict:
    """May this browser download the exam, and if not yet, how it verifies for it."""
    states = [(q, *_download_state(q, exam)) for q in granting]
    can = any(c for _, c, _ in states)
    fresh = any(c and f for _, c, f in states)
    reverify = None
    if can and not fresh:
        kinds = {q.kind for q, c, _ in states if c}
        reverify = "identity" if "patient" in kinds else "share_code"
    return {"freshly_verified": fresh, "can_download": can, "reverify": reverify}


def _share_json(granting) -> dict | None:
    """The share this browser looks through (opens used and allowed, expiry), if any."""
    sp = next((q for q in granting if q.kind == "share"), None)
    if sp is None:
        return None
    sh = share_by_id(sp.share_id)
    return {"id": sh.id, "opens": sh.opens, "max_opens": sh.max_opens,
            "expires_at": sh.expires_at.isoformat() + "Z",
            "allow_download": bool(sh.allow_download),
            "include_images": bool(sh.include_images), "token_url": None}


def policy_uid(ref: str) -> bool:
    from models.storage import valid_uid
    return valid_uid(ref)


class SessionCsrfHandler(BaseHandler):
    """A page whose proof went stale (another link of the same browser started a session)
    asks for a fresh one; a cross-site page cannot read the answer (no CORS)."""

    async def get(self) -> None:
        token = self.principal.csrf_token if self.principal is not None else None
        study_uid = self.str_arg("study_uid", 64)
        if study_uid and policy_uid(study_uid) and self.held:
            def find():
                exam = self.ctx.catalog.exam_by_uid(study_uid)
                return self.check_exam(exam_id=exam.id, patient_db_id=exam.patient_id,
                                       images_enabled=exam.images_enabled, need="report")
            try:
                token = (await self.in_db(find)).csrf_token or token
            except (policy.AccessError, CatalogError):   # not granted or unknown exam:
                pass                                      # the primary session's proof
        self.write_json({"ok": True, "csrf_token": token,
                         "kind": self.principal.kind if self.principal else None})


class HospitalHandler(BaseHandler):
    """The hospital's name, phone, opening hours and logo URL (public)."""

    def get(self) -> None:
        self.write_json({**hospital_json(self.ctx), "wechat": wechat_configured(self.ctx)})


class HospitalLogoHandler(BaseHandler):
    """The hospital's logo file (public)."""

    def get(self) -> None:
        path = self.ctx.config.hospital_logo_file
        ctype = LOGO_TYPES.get(Path(path).suffix.lower()) if path else None
        if not ctype:
            raise ApiError(404, "没有设置医院标志 / no hospital logo is set")
        try:
            with open(path, "rb") as fh:            # small and local: at most 512 KiB read
                data = fh.read(LOGO_MAX_BYTES + 1)
        except OSError:
            raise ApiError(404, "医院标志文件无法读取 / the hospital logo file cannot be read") \
                from None
        if len(data) > LOGO_MAX_BYTES:
            raise ApiError(404, "医院标志文件过大 / the hospital logo file is too large")
        self.set_header("Content-Type", ctype)
        self.set_header("Cache-Control", "public, max-age=3600")
        if ctype == "image/svg+xml":
            self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.finish(data)


class RootHandler(BaseHandler):
    """A phone gets the patient entry; a desktop the staff pages (sign-in first)."""

    def get(self) -> None:
        if is_phone(self) and (self.principal is None or self.principal.kind != "staff"):
            return self.send_page("entry.html")
        if self.principal is None or self.principal.kind != "staff":
            return self.redirect("/login?next=%2F")
        self.send_page("index.html")

    def send_page(self, name: str) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(versioned_page(name))


class EntryHandler(RootHandler):
    def get(self) -> None:
        self.send_page("entry.html")


def versioned_page(name: str) -> bytes:
    from .pages import page_bytes
    return page_bytes(name)


# refusal pages ---------------------------------------------------------------------------
TITLES = {
    "zh-CN": {400: "链接不完整", 401: "需要重新验证", 403: "暂时无法查看", 404: "没有找到",
              413: "请求过大", 429: "尝试次数过多", 500: "服务暂时不可用"},
    "en": {400: "Incomplete link", 401: "Please verify again", 403: "Cannot be shown",
           404: "Not found", 413: "Request too large", 429: "Too many attempts",
           500: "Service unavailable"},
}
WORDS = {
    "zh-CN": {"call": "拨打电话 {phone}", "hours": "服务时间：{hours}",
              "portal": "验证身份，查看我的检查", "verify_download": "验证身份后下载",
              "film": "返回影像", "code": "重新输入访问码", "home": "返回首页",
              "help": "如需帮助，请联系{name}。", "lang": "English"},
    "en": {"call": "Call {phone}", "hours": "Opening hours: {hours}",
           "portal": "Verify your identity to see my exams",
           "verify_download": "Verify your identity to download", "film": "Back to the images",
           "code": "Enter the access code again", "home": "Home",
           "help": "For help, contact {name}.", "lang": "中文"},
}
_STUDY_IN_PATH = re.compile(r"^/(?:film|api/download/studies|api/studies|dicomweb/studies)/"
                            + UID)


def wants_html(handler) -> bool:
    req = handler.request
    if req.method not in ("GET", "HEAD"):
        return False
    accept = req.headers.get("Accept", "")
    return "text/html" in accept and "application/json" not in accept.split(",")[0]


def error_page(handler, status: int, message: str) -> bytes:
    """The HTML refusal page: what happened in plain words, the hospital's contact and the
    next steps that work from here."""
    lang = ui_lang(handler)
    w = WORDS[lang]
    ctx = handler.ctx
    hosp = hospital_json(ctx)
    title = TITLES[lang].get(status) or TITLES[lang][500 if status >= 500 else 400]
    text = local_part(message, lang, status)
    path = handler.request.path
    m = _STUDY_IN_PATH.match(path)
    study = m.group(1) if m else ""
    links: list[tuple[str, str, str]] = []     # (href, label, id)
    if path.startswith("/api/download/") and study:
        if status == 403 and ("验证" in message or "verify" in message):
            links.append((f"/portal#reverify={study}", w["verify_download"], "next-verify"))
        links.append((f"/film/{study}", w["film"], "next-film"))
    elif status in (401, 403, 404) and not path.startswith("/s/"):
        ref = f"#exam=study_uid%3A{study}" if study else ""
        links.append((f"/portal{ref}", w["portal"], "next-portal"))
    links.append(("/entry", w["home"], "next-home"))
    if hosp["phone"]:
        links.append(("tel:" + re.sub(r"[^0-9+\-]", "", hosp["phone"]),
                      w["call"].format(phone=hosp["phone"]), "next-call"))
    esc = html.escape
    buttons = "".join(
        f'<a id="{i}" class="btn {"primary " if k == 0 else ""}wide" href="{esc(h)}">{esc(t)}</a>'
        for k, (h, t, i) in enumerate(links))
    logo = (f'<img class="hosp-logo" src="{esc(hosp["logo_url"])}" alt="">'
            if hosp["logo_url"] else "")
    hours = (f'<p class="muted">{esc(w["hours"].format(hours=hosp["hours"]))}</p>'
             if hosp["hours"] else "")
    data = esc(json.dumps({"study": study, "status": status}), quote=True)
    from .pages import versioned
    return versioned((
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover">'
        f'<title>{esc(title)} · {esc(hosp["name"])}</title><link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/share/share.css">'
        '<script type="module" src="/static/share/error_page.js"></script></head>'
        f'<body class="cf-error-page" data-error="{data}"><div class="page">'
        f'<header class="bar"><div class="hosp">{logo}<span class="hosp-name">'
        f'{esc(hosp["name"])}</span></div></header>'
        f'<section class="card"><h1 id="error-title" class="err-title">{esc(title)}</h1>'
        f'<p id="error-text" class="big-msg">{esc(text)}</p>'
        f'<div id="next-steps" class="next-steps">{buttons}</div></section>'
        f'<footer class="card hosp-contact"><p>{esc(w["help"].format(name=hosp["name"]))}</p>'
        f'{hours}</footer></div></body></html>').encode())


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/", RootHandler, d),
        (r"/entry", EntryHandler, d),
        (r"/api/session/csrf", SessionCsrfHandler, d),
        (rf"/api/film/context/{UID}", FilmContextHandler, d),
        (r"/api/film/context/exam/([0-9]{1,12})", FilmContextHandler, d),
        (r"/api/hospital", HospitalHandler, d),
        (r"/hospital/logo", HospitalLogoHandler, d),
    ]
