"""What a log line may say about a request path: credentials (share and patient QR tokens,
signed PACS QR tokens) and patient identifiers (hospital patient IDs, accession numbers)
never reach a log. Query strings are never logged (they carry codes, tokens, names).

Used by the access log (server/app.py log_request) and by the handlers' own lines about a
refused or failed request (server/handlers/base.py)."""
from __future__ import annotations

import re

MASK = "***"
# /s/{share token}, /p/{patient QR token}, /api/share/{verb}/{token}
_SECRET_IN_PATH = re.compile(r"^(/s/|/p/|/api/share/[a-z]+/)[^/?]+")
# /api/staff/patients/{patient id}/…, /api/pacs/patients/{patient id}/…
_PATIENT_IN_PATH = re.compile(r"(/patients/)[^/?]+")


def masked_path(handler) -> str:
    """The request's path with every credential and identifier replaced by ***. A handler
    whose path arguments are all secret or identifying (PACS QR codes: a signed token, an
    accession number) says so with `log_masks_path_args = True`."""
    path = handler.request.path
    path = _SECRET_IN_PATH.sub(lambda m: m.group(1) + MASK, path)
    path = _PATIENT_IN_PATH.sub(lambda m: m.group(1) + MASK, path)
    if getattr(handler, "log_masks_path_args", False):
        for arg in getattr(handler, "path_args", None) or ():
            if isinstance(arg, bytes):
                arg = arg.decode("utf-8", "replace")
            if arg:
                path = path.replace(arg, MASK)
    return path


def request_summary(handler) -> str:
    """Tornado's "METHOD URI (address)" without the query string and with the path masked."""
    return f"{handler.request.method} {masked_path(handler)} ({handler.request.remote_ip})"
