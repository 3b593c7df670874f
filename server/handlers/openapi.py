"""/api/openapi.json: the OpenAPI 3.0 description of every route the server really has.

The document is built from the application's own route table (so a route cannot exist without
appearing here): the path and its parameters come from the route's regular expression (each
path parameter keeps its pattern), the methods from the handler class, the query parameters
and JSON body fields from what the handler reads (`get_query_argument`, `int_arg`, `str_arg`,
`body.get(...)`), the summary from the handler's docstring or SUMMARIES below. A test
(tests/security/test_openapi.py) fails when a route has no summary, so every new route gets
documented. Penetration tests (schemathesis, sqlmap) take their targets from this document.
"""
from __future__ import annotations

import inspect
import re
from functools import lru_cache

import tornado.web

from .base import BaseHandler

METHODS = ("get", "post", "put", "patch", "delete")
_QUERY_RE = re.compile(r"""(?:get_query_argument|get_query_arguments|get_argument|get_arguments|"""
                       r"""int_arg|str_arg|float_arg|bool_arg)\(\s*["']([A-Za-z_][\w-]*)["']""")
_BODY_RE = re.compile(r"""\bbody\.get\(\s*["']([A-Za-z_]\w*)["']|\bbody\[\s*["']([A-Za-z_]\w*)["']""")

# Summaries for handlers without a docstring (path pattern -> summary).
SUMMARIES = {
    "/healthz": "Liveness: the process answers (version); checks nothing else.",
    "/readyz": "Readiness: database reachable, data folder writable, free disk space above "
               "min_free_disk_mb (503 with the failed checks otherwise).",
    "/metrics": "Prometheus metrics of this node (loopback and the admin allow-list only).",
    "/api/studies": "Search exams (staff: exam.search).",
    "/api/studies/{study_uid}": "One exam: patient (masked for non-staff), series, report.",
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered":
        "One frame rendered to JPEG/PNG (DICOMweb rendered: window, viewport, quality).",
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered":
        "An instance rendered to JPEG/PNG (first frame).",
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/thumbnail":
        "Thumbnail of an instance.",
    "/dicomweb/studies/{study}/series/{series}/thumbnail": "Thumbnail of a series.",
    "/dicomweb/studies/{study}/thumbnail": "Thumbnail of an exam.",
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/tiles/{level}/"
    "{tx}/{ty}": "One tile of the zoom pyramid of a large image (pathology, radiographs).",
    "/api/render/studies/{study}/series/{series}/instances/{sop}/info":
        "Image facts: size, frames, pixel spacing, default window, pyramid levels.",
    "/api/render/studies/{study}/series/{series}/mpr/{plane}":
        "Multiplanar reconstruction: an axial/coronal/sagittal/oblique slice as JPEG.",
    "/api/render/studies/{study}/series/{series}/mpr/{plane}/geometry":
        "Geometry of an MPR slice (positions, spacing, patient orientation).",
    "/api/render/studies/{study}/series/{series}/mip":
        "3D projection at a rotation, as JPEG: maximum-intensity (mode=mip/minip/avg) or "
        "volume rendering (mode=vr, preset=bone|cta|lung|soft; the window moves the opacity "
        "ramp).",
    "/api/render/studies/{study}/series/{series}/volume": "Volume facts of a series.",
    "/api/studies/{study_uid}/report.pdf": "The exam's report as PDF.",
    "/api/studies/{study_uid}/report/pages": "Number and size of the report's pages.",
    "/api/studies/{study_uid}/report/pages/{page}": "One report page rendered as an image.",
    "/api/auth/login": "Staff sign-in with user name and password (may ask for a second "
                       "factor: second_factor + ticket).",
    "/api/auth/logout": "End the current session.",
    "/api/auth/me": "Who is signed in, with the CSRF token of the session.",
    "/api/auth/password": "Change one's own password (complexity, history, expiry rules).",
    "/api/staff/nav": "The staff pages the signed-in user's roles may open.",
    "/api/staff/users": "List staff accounts (GET) or create one (POST); user.manage.",
    "/api/staff/users/{username}": "One staff account (GET) or change its roles/state (PATCH).",
    "/api/staff/users/{username}/password-reset": "Give an account a temporary password.",
    "/api/staff/users/{username}/tokens": "Issue an API token for an account.",
    "/api/staff/tokens": "List API tokens.",
    "/api/staff/tokens/{token_id}/revoke": "Revoke an API token.",
    "/api/staff/patients": "Search patients (masked personal data).",
    "/api/staff/patients/{patient_id}/exams": "A patient's exam history.",
    "/api/staff/patients/{patient_id}/unmask": "Show one masked field, with a reason (audited).",
    "/api/staff/patients/{patient_id}/check-id": "Check a national ID against the patient's.",
    "/api/admin/settings": "Run-time settings (GET) or change them (PUT); settings.manage.",
    "/api/admin/health": "System health for the administrator.",
    "/api/admin/verification": "Identity verification methods on/off (GET, PUT).",
    "/api/admin/audit": "Search the audit trail (audit.read).",
    "/api/admin/audit.csv": "Export the audit trail as CSV (audit.read).",
    "/api/admin/audit/verify": "Verify the audit trail's HMAC chain (audit.read).",
    "/api/admin/downloads": "Download log (download.read; study_uid, since, until, limit); "
                            "the same handler and JSON as /api/downloads.",
    "/api/admin/security": "Security policy (GET) or change it (PUT); security.manage.",
    "/api/shares": "Shares of an exam (GET) or create one with an access code (POST).",
    "/api/shares/{share_id}/revoke": "Revoke a share.",
    "/api/share/status": "Is a share link valid and what does it need (no data).",
    "/api/share/open": "Open a share with its access code (starts a share session).",
    "/api/share/me": "The open share's exam (share session).",
    "/api/share/reverify": "Re-enter the share code before a download.",
    "/api/qr": "A QR code (SVG/PNG) for a share link.",
    "/api/exams/{study_uid}/images": "Switch image access of an exam on or off.",
    "/api/verify/methods": "Identity verification methods in force.",
    "/api/verify/sms": "Send an SMS verification code.",
    "/api/verify": "Verify a patient's identity (starts a patient session).",
    "/api/patient/me": "The verified patient's own data and exams.",
    "/api/patient/shares": "The patient's shares (GET) or share an own exam (POST).",
    "/api/patient/shares/{share_id}/revoke": "Revoke one of the patient's shares.",
    "/api/patient/downloads": "The patient's own download history.",
    "/api/patient/logout": "End the patient session.",
    "/api/download/studies/{p1}.zip": "Original DICOM of an exam as ZIP with DICOMDIR.",
    "/api/download/studies/{p1}/series/{p2}.zip": "Original DICOM of a series as ZIP.",
    "/api/download/studies/{p1}/series/{p2}/instances/{p3}.zip":
        "One original DICOM image as ZIP.",
    "/api/downloads": "Download log (download.read; study_uid, since, until, limit); "
                      "the same handler and JSON as /api/admin/downloads.",
    "/api/wechat/me": "The WeChat user's bound patients and current patient.",
    "/api/wechat/bind": "Bind the verified patient to the WeChat account.",
    "/api/wechat/switch": "Switch to another bound patient.",
    "/api/wechat/unbind": "Unbind a patient from the WeChat account.",
    "/api/wechat/notify": "Switch report notifications on or off.",
    "/api/wechat/logout": "End the WeChat session.",
    "/api/wechat/jssdk": "JS-SDK signature for a page URL of this server.",
    "/api/admin/wechat": "WeChat integration status (administrator).",
    "/api/admin/wechat/check": "Check the WeChat configuration against the hospital's proxy.",
    "/api/security/totp": "The signed-in user's second-factor status.",
    "/api/security/integrity/{finding_id}/resolve": "Mark an integrity finding as handled.",
}


def _path_and_params(pattern: str) -> tuple[str, list[tuple[str, str]]]:
    """'/a/([0-9]+)/b' -> ('/a/{p1}/b', [('p1', '[0-9]+')]); unescapes literals."""
    pattern = pattern.rstrip("$")
    out, params, i, n = [], [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(pattern[i + 1])
            i += 2
            continue
        if c == "(" and not pattern.startswith("(?", i):
            depth, j = 1, i + 1
            while j < n and depth:
                if pattern[j] == "\\":
                    j += 2
                    continue
                depth += {"(": 1, ")": -1}.get(pattern[j], 0)
                j += 1
            params.append((f"p{len(params) + 1}", pattern[i + 1:j - 1]))
            out.append("{" + params[-1][0] + "}")
            i = j
            continue
        if c not in "?^":              # optional trailing slash etc.: not part of the path
            out.append(c)
        i += 1
    return "".join(out), params


def _own_methods(handler: type) -> list[str]:
    return [m for m in METHODS
            if getattr(handler, m, None) is not getattr(tornado.web.RequestHandler, m)]


def _sources(handler: type, method: str | None = None) -> str:
    """The handler's code that serves `method`: that method and every helper of the class,
    but not the other HTTP methods (a query parameter GET reads is not one POST takes)."""
    parts, seen = [], set()
    for cls in handler.__mro__:
        if cls in (BaseHandler, tornado.web.RequestHandler, object):
            break
        for name, member in vars(cls).items():
            if name in seen or not inspect.isfunction(member):
                continue
            seen.add(name)
            if method is not None and name in METHODS and name != method:
                continue
            try:
                parts.append(inspect.getsource(member))
            except (OSError, TypeError):
                pass
    return "\n".join(parts)


def _arg_names(handler: type, method: str, count: int) -> list[str]:
    try:
        sig = inspect.signature(getattr(handler, method))
    except (TypeError, ValueError):
        return []
    names = [p.name for p in sig.parameters.values()
             if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names if len(names) == count else []


def query_params(handler: type, method: str | None = None) -> list[str]:
    return sorted(set(_QUERY_RE.findall(_sources(handler, method))))


def body_fields(handler: type, method: str | None = None) -> list[str]:
    return sorted({a or b for a, b in _BODY_RE.findall(_sources(handler, method))})


def media_type(path: str) -> str:
    if path.startswith("/static/") or path in ("/{path}",) or "favicon" in path or \
            "robots" in path:
        return "*/*"
    if path.endswith(".pdf"):
        return "application/pdf"
    if path.endswith(".zip"):
        return "application/zip"
    if path.endswith(".csv"):
        return "text/csv"
    if any(k in path for k in ("/rendered", "/thumbnail", "/tiles/", "/mip", "/pages/{")) or \
            re.search(r"/mpr/\{\w+\}$", path):
        return "image/*"
    if path == "/metrics":
        return "text/plain"
    if path.startswith("/api/") or path in ("/healthz", "/readyz"):
        return "application/json"
    if path.startswith("/dicomweb/"):           # QIDO-RS, metadata / WADO-RS, STOW-RS
        return ("application/dicom+json" if re.search(r"/(studies|series|instances|metadata)$",
                                                      path) else "multipart/related")
    return "text/html"


def summary_for(path: str, handler: type) -> str | None:
    if path in SUMMARIES:
        return SUMMARIES[path]
    doc = handler.__dict__.get("__doc__")
    if doc and doc.strip():
        return doc.strip().splitlines()[0]
    if media_type(path) in ("text/html", "*/*"):
        return "Page or file of the web interface (HTML, JS, CSS)."
    return None


def describe_rules(rules) -> list[dict]:
    """One entry per (route, method): what the document and the attack tests need."""
    ops = []
    for pattern, handler in rules:
        if not (isinstance(handler, type) and issubclass(handler, tornado.web.RequestHandler)):
            continue
        path, groups = _path_and_params(pattern)
        for method in _own_methods(handler):
            names = _arg_names(handler, method, len(groups))
            params = [(names[k] if names else name, rx) for k, (name, rx) in enumerate(groups)]
            if names:
                for k, (name, _rx) in enumerate(groups):
                    path = path.replace("{" + name + "}", "{" + names[k] + "}", 1)
            ops.append({"pattern": pattern, "path": path, "method": method, "handler": handler,
                        "path_params": params, "query": query_params(handler, method),
                        "body": body_fields(handler, method) if method != "get" else [],
                        "media_type": media_type(path)})
    return ops


def rules_of(app: tornado.web.Application) -> list[tuple[str, type]]:
    out = []
    for rule in app.wildcard_router.rules:
        regex = getattr(rule.matcher, "regex", None)
        if regex is None:
            continue
        out.append((regex.pattern, rule.target))
    return out


def build_document(ops: list[dict], version: str) -> dict:
    paths: dict = {}
    for op in ops:
        path = op["path"]
        params = [{"name": n, "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": f"^{rx}$"}}
                  for n, rx in op["path_params"]]
        params += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}}
                   for q in op["query"]]
        responses = {"200": {"description": "OK",
                             "content": {op["media_type"]: {"schema": {}}}}}
        for code, text in (("400", "Bad input"), ("401", "Not signed in / not verified"),
                           ("403", "Not allowed"), ("404", "No such resource")):
            responses[code] = {"description": text, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}
        entry = {"summary": summary_for(path, op["handler"]) or "",
                 "operationId": f"{op['method']}_{op['handler'].__name__}_"
                                f"{abs(hash(op['pattern'])) % 10**6}",
                 "parameters": params, "responses": responses,
                 "security": [{"bearer": []}, {"cookie": []}, {}]}
        if op["method"] in ("post", "put", "patch"):
            entry["requestBody"] = {"required": False, "content": {"application/json": {
                "schema": {"type": "object", "additionalProperties": True,
                           "properties": {f: {} for f in op["body"]}}}}}
        paths.setdefault(path, {})[op["method"]] = entry
    return {
        "openapi": "3.0.3",
        "info": {"title": "CloudFilm 云胶片 API", "version": version,
                 "description": "Every HTTP route of this server. Errors share one JSON shape. "
                                "Staff authenticate with a session cookie (then unsafe "
                                "methods need the X-CSRF-Token header) or an API token."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "staff API token cft_…"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "cf_session"}},
            "schemas": {"Error": {"type": "object", "required": ["ok", "status", "error"],
                                  "properties": {"ok": {"type": "boolean"},
                                                 "status": {"type": "integer"},
                                                 "error": {"type": "string"}}}}},
    }


@lru_cache(maxsize=4)
def _cached(app_id: int, rules: tuple, version: str) -> dict:
    return build_document(describe_rules(list(rules)), version)


class OpenApiHandler(BaseHandler):
    """This OpenAPI 3.0 document (public: it describes routes, never data)."""

    def get(self) -> None:
        doc = _cached(id(self.application), tuple(rules_of(self.application)),
                      self.ctx.version)
        self.write_json(doc, personal=False)


def routes(ctx) -> list:
    return [(r"/api/openapi\.json", OpenApiHandler, {"ctx": ctx})]
