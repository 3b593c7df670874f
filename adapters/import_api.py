"""The private-protocol import API (HTTP JSON), without HTTP: client keys, request
signatures, and the documents it accepts (patient, order, report with PDF, picture or DICOM
image). server/handlers/integration.py only parses the request and calls `ImportApi.handle`.

Authentication, per client: every request carries
    X-CloudFilm-Client:    the client's name (a key in import_api_clients_file)
    X-CloudFilm-Timestamp: Unix time in seconds (within import_api_max_skew_s of ours)
    X-CloudFilm-Signature: hex HMAC-SHA256(key, "<timestamp>\\n<METHOD>\\n<path>\\n" + body)
Idempotency: every document has a `message_id` chosen by the client; the same document again
is answered with the first answer and not applied again; the message_id reused for a
different document (another kind or body) is answered 409 naming the conflict. An ID number
or phone that fails validation is stored as unverified and named in `warnings` (the document
is applied). See docs/integration.md.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
import tomllib
from pathlib import Path

from pydicom.uid import generate_uid

from models.catalog import ALREADY_PRESENT, STORED, Catalog, CatalogError
from models.integration import (IntegrationError, ReportFields, Unsupported, apply_inbound,
                                file_report, find_exam, inbound_duplicate, merge_patients,
                                record_failure, sent_by, upsert_order, upsert_patient)
from models.peers import Gate, audit_refusal

from .convert import ConversionError, PictureMeta, picture_to_dicom
from .dicom_meta import ENCAPSULATED_PDF, DicomRejected, extract_meta

log = logging.getLogger(__name__)

KINDS = ("patient", "order", "report", "image")
MAX_SKEW_DEFAULT = 300


class AuthError(Exception):
    """Missing or bad credentials (HTTP 401); the message says which."""


def load_clients(path: str | Path) -> dict[str, bytes]:
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"import_api_clients_file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{p}: not valid TOML: {exc}") from None
    clients = data.get("clients", {})
    out = {}
    for name, key in clients.items():
        if not isinstance(key, str) or len(key) < 16:
            raise ValueError(f"{p}: the key of client {name!r} must be text of at least 16 "
                             "characters")
        out[name] = key.encode()
    return out


def sign(key: bytes, timestamp: str, method: str, path: str, body: bytes) -> str:
    msg = f"{timestamp}\n{method.upper()}\n{path}\n".encode() + body
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def verify(clients: dict[str, bytes], client: str | None, timestamp: str | None,
           signature: str | None, method: str, path: str, body: bytes,
           max_skew: int = MAX_SKEW_DEFAULT, now: float | None = None) -> str:
    if not client or not timestamp or not signature:
        raise AuthError("missing X-CloudFilm-Client, X-CloudFilm-Timestamp or "
                        "X-CloudFilm-Signature header")
    key = clients.get(client)
    if key is None:
        raise AuthError("unknown client or bad signature")
    try:
        ts = int(timestamp)
    except ValueError:
        raise AuthError("X-CloudFilm-Timestamp must be Unix time in seconds") from None
    if abs((now or time.time()) - ts) > max_skew:
        raise AuthError(f"X-CloudFilm-Timestamp is more than {max_skew} s away from the "
                        "server clock (check NTP)")
    expected = sign(key, timestamp, method, path, body)
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise AuthError("unknown client or bad signature")
    return client


def _b64(value, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise IntegrationError(f"{what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise IntegrationError(f"{what} is not valid base64") from None


def _date(value, what: str) -> dt.date | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise IntegrationError(f"{what} must be a date as YYYY-MM-DD")
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(value, fmt).date()
        except ValueError:
            pass
    raise IntegrationError(f"{what} {value[:20]!r}: expected YYYY-MM-DD")


def _datetime(value, what: str) -> dt.datetime | None:
    if value in (None, ""):
        return None
    try:
        return dt.datetime.fromisoformat(str(value)).replace(tzinfo=None)
    except ValueError:
        raise IntegrationError(f"{what}: expected an ISO date-time such as "
                               "2026-03-12T10:15:00") from None


def _text(d: dict, key: str, limit: int = 255) -> str:
    v = d.get(key)
    if v is None:
        return ""
    if not isinstance(v, (str, int)):
        raise IntegrationError(f"{key} must be text")
    return str(v)[:limit]


def patient_fields(d) -> dict:
    if not isinstance(d, dict):
        raise IntegrationError("patient must be a JSON object")
    return {"patient_id": _text(d, "patient_id", 100), "name": _text(d, "name", 128),
            "sex": _text(d, "sex", 1), "birth_date": _date(d.get("birth_date"), "birth_date"),
            "phone": _text(d, "phone", 32), "id_number": _text(d, "id_number", 32)}


def content_digest(kind: str, doc: dict) -> str:
    """SHA-256 of a document as JSON with sorted keys (the same document re-serialised by
    the client has the same digest), with its kind."""
    canon = json.dumps([kind, doc], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def stable_uid(*parts: str) -> str:
    """A UID derived from its parts: a repeated document yields the same UIDs."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def store_dicom(catalog: Catalog, data: bytes, origin: str, source: str,
                charset_fallback: str = "GB18030", receivers: list[str] = ()) -> dict:
    """Store one DICOM file from the API or the watched folder (an encapsulated PDF is also
    filed as the exam's report, file_report's rules). Raises IntegrationError with the
    reason (quarantined)."""
    try:
        meta, ds = extract_meta(data, charset_fallback=charset_fallback)
    except DicomRejected as exc:
        catalog.quarantine(data, str(exc), source, origin)
        raise IntegrationError(f"DICOM file rejected: {exc}") from None
    result = catalog.store_instance(meta, data, source=source, origin=origin)
    if result.outcome not in (STORED, ALREADY_PRESENT):
        raise IntegrationError(f"DICOM file not stored ({result.outcome}): {result.reason}")
    if meta["sop_class_uid"] == ENCAPSULATED_PDF:
        pdf = bytes(ds.get("EncapsulatedDocument", b"") or b"").rstrip(b"\x00")
        exam = find_exam(None, meta["study_uid"])
        if exam is not None and pdf.startswith(b"%PDF-"):
            file_report(catalog, exam, ReportFields(pdf=pdf, pdf_only=True,
                                                    patient_id=meta["patient_id"],
                                                    source=source, origin=origin),
                        receivers=receivers)
    return {"outcome": result.outcome, "sop_uid": result.sop_uid,
            "study_uid": result.study_uid}


def store_picture(catalog: Catalog, data: bytes, meta_doc: dict, origin: str, source: str,
                  uid_seed: str) -> dict:
    """Convert a JPEG/PNG/TIFF picture with its exam metadata to DICOM and store it."""
    try:
        meta = PictureMeta.from_dict(meta_doc)
    except ConversionError as exc:
        raise IntegrationError(str(exc)) from None
    exam = find_exam(meta.accession_number or None, meta.study_uid or None)
    if exam is not None and exam.study_uid and not meta.study_uid:
        meta.study_uid = exam.study_uid
    if not meta.study_uid:
        meta.study_uid = stable_uid("study", meta.patient_id, meta.accession_number or uid_seed)
    if not meta.series_uid:
        meta.series_uid = stable_uid("series", meta.study_uid, meta.modality, source)
    try:
        dcm = picture_to_dicom(data, meta)
    except ConversionError as exc:
        catalog.quarantine(data, str(exc), source, origin)
        raise IntegrationError(str(exc)) from None
    return store_dicom(catalog, dcm, origin, source) | {"converted": True}


REFUSED_MESSAGE = ("来源地址不在对接系统白名单中，已拒绝 / this sender's address is not in the "
                   "integration peer table: refused")


class ImportApi:
    def __init__(self, catalog: Catalog, *, receivers: list[str] = (),
                 charset_fallback: str = "GB18030", gate: Gate | None = None):
        self.catalog = catalog
        self.receivers = list(receivers)
        self.charset_fallback = charset_fallback
        self.gate = gate          # trusted peers (models/peers.py); None: every address

    def admit(self, address: str | None, kind: str) -> tuple[int, dict] | None:
        """The peer table's word on a request from `address`: None (go on) or the 403
        answer (audited peer.refused)."""
        if self.gate is None or address is None:
            return None
        adm = self.gate.admit(address, what=kind)
        if adm.allowed:
            return None
        audit_refusal(getattr(self.catalog, "auditor", None), "import", address,
                      message_type=kind, reason=adm.reason)
        log.warning("import API request from %s refused: %s", address, adm.reason)
        return 403, {"ok": False, "status": 403, "error": REFUSED_MESSAGE}

    def handle(self, client: str, kind: str, body: bytes,
               address: str | None = None) -> tuple[int, dict]:
        """Apply one document. Returns (HTTP status, JSON answer); never raises for bad
        input. The answer to an applied document is kept and repeated for its message_id.
        `address`: the client's IP address, checked against the peer table."""
        refused = self.admit(address, kind)
        if refused is not None:
            return refused
        adm = self.gate.admit(address, what=kind) if self.gate and address else None
        with sent_by(adm.peer.name if adm and adm.peer else f"api:{client}",
                     adm.may_change_identity if adm else True):
            return self._handle(client, kind, body)

    def _handle(self, client: str, kind: str, body: bytes) -> tuple[int, dict]:
        channel = f"api:{client}"[:32]
        try:
            doc = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._fail(channel, "", kind, body, f"body is not UTF-8 JSON: {exc}")
        if not isinstance(doc, dict):
            return self._fail(channel, "", kind, body, "body must be a JSON object")
        mid = doc.get("message_id")
        if not isinstance(mid, str) or not mid.strip() or len(mid) > 128:
            return self._fail(channel, "", kind, body, "message_id (1-128 characters) is "
                              "required: it makes a retry safe")
        if kind not in KINDS:
            return self._fail(channel, mid, kind, body, f"unknown document kind {kind!r}: "
                              f"use one of {', '.join(KINDS)}", status=404)
        digest = content_digest(kind, doc)
        prev = inbound_duplicate(channel, mid)
        if prev is not None:
            if prev.digest and prev.digest != digest:
                return self._conflict(mid, prev.message_type, prev.received_at)
            return 200, {**json.loads(prev.ack), "duplicate": True}
        raw = body.decode("utf-8")
        if len(raw) > 4096 and kind in ("report", "image"):
            raw = raw[:4096] + "…(truncated in the log; the content was stored)"
        result: dict = {}

        def ack(outcome: str, note: str, issues=()) -> str:
            if outcome == "applied":
                warnings = [{"field": i.where, "message": i.text} for i in issues]
                return json.dumps({"ok": True, "message_id": mid, "outcome": "applied",
                                   "result": result, **({"warnings": warnings} if warnings
                                                        else {})},
                                  ensure_ascii=False, default=str)
            return json.dumps({"ok": False, "status": 400, "error": note,
                               "message_id": mid}, ensure_ascii=False)

        try:
            if kind == "image":
                # store_instance owns its transaction: store first, then record the message
                result.update(self._image(doc, client, mid))
                res = apply_inbound(channel, mid, kind, raw, lambda: "image stored", ack,
                                    digest=digest)
            else:
                res = apply_inbound(channel, mid, kind, raw,
                                    lambda: self._apply(kind, doc, result), ack, digest=digest)
        except (IntegrationError, CatalogError) as exc:
            return self._fail(channel, mid, kind, body, str(exc))
        if res.outcome == "conflict":
            prev = inbound_duplicate(channel, mid)
            return self._conflict(mid, prev.message_type if prev else kind,
                                  prev.received_at if prev else None)
        if res.outcome in ("applied", "duplicate"):
            return 200, {**json.loads(res.ack), **({"duplicate": True}
                                                   if res.outcome == "duplicate" else {})}
        return 400, json.loads(res.ack) | {"status": 400}

    @staticmethod
    def _conflict(mid: str, first_kind: str, first_at) -> tuple[int, dict]:
        """A message_id reused for a different document: 409, nothing applied or recorded
        (the first document's record and answer stay as they were)."""
        when = f"{first_at:%Y-%m-%d %H:%M:%S} UTC" if first_at else "earlier"
        log.info("import API message_id reused for different content (first: %s, %s)",
                 first_kind, when)
        return 409, {"ok": False, "status": 409, "message_id": mid, "error":
                     f"message_id {mid!r} was already used for a different document (a "
                     f"{first_kind} received {when}); send a new document with a new "
                     "message_id, or the same document to get its first answer",
                     "conflict": {"message_id": mid, "first_kind": first_kind,
                                  "first_received_at": first_at.isoformat() if first_at
                                  else None}}

    def _fail(self, channel, mid, kind, body, reason, status=400) -> tuple[int, dict]:
        ctrl = mid or "nomid-" + hashlib.sha256(body).hexdigest()[:20]
        answer = {"ok": False, "status": status, "error": reason}
        if mid:
            answer["message_id"] = mid
        record_failure(channel, ctrl, kind, body[:4096].decode("utf-8", errors="replace"),
                       "error", reason, json.dumps(answer, ensure_ascii=False))
        log.info("import API %s %s rejected: %s", kind, ctrl, reason[:200])
        return status, answer

    def _apply(self, kind: str, doc: dict, result: dict) -> str:
        if kind == "patient":
            fields = patient_fields(doc.get("patient"))
            if doc.get("merge_from"):
                p = merge_patients(self.catalog, fields, _text(doc, "merge_from", 64))
            else:
                p = upsert_patient(self.catalog, fields)
            result["patient_id"] = p.patient_id
            return f"patient {p.patient_id}"
        if kind == "order":
            o = doc.get("order")
            if not isinstance(o, dict):
                raise IntegrationError("order must be a JSON object")
            status = o.get("status", "ordered")
            if status not in ("ordered", "scheduled", "examined", "cancelled", None):
                raise IntegrationError(f"order status {status!r}: expected ordered, "
                                       "scheduled, examined or cancelled")
            exam = upsert_order(self.catalog, patient_fields(doc.get("patient")), {
                "accession": _text(o, "accession_number", 100),
                "study_uid": _text(o, "study_uid", 64), "modality": _text(o, "modality", 16),
                "description": _text(o, "description"),
                "exam_date": _date(o.get("exam_date"), "exam_date"), "status": status,
                "referring_physician": _text(o, "referring_physician", 128)}, source="api")
            result.update(accession_number=exam.accession_number, status=exam.status)
            return f"order {exam.accession_number}: {exam.status}"
        if kind == "report":
            return self._report(doc, result)
        raise Unsupported(f"unknown document kind {kind!r}")

    def _report(self, doc: dict, result: dict) -> str:
        acc, uid = _text(doc, "accession_number", 64), _text(doc, "study_uid", 64)
        exam = find_exam(acc or None, uid or None)
        if exam is None:
            if not doc.get("patient"):
                raise IntegrationError("no exam with this accession number / study UID, and "
                                       "no patient to create it")
            exam = upsert_order(self.catalog, patient_fields(doc["patient"]),
                                {"accession": acc, "study_uid": uid, "status": "examined",
                                 "modality": _text(doc, "modality", 16)}, source="api")
        pdf = _b64(doc["pdf_base64"], "pdf_base64") if doc.get("pdf_base64") else None
        status = doc.get("status", "final")
        r = ReportFields(findings=_text(doc, "findings", 100000),
                         impression=_text(doc, "impression", 100000), pdf=pdf,
                         author=_text(doc, "author", 128), reviewer=_text(doc, "reviewer", 128),
                         signed_at=_datetime(doc.get("signed_at"), "signed_at"),
                         status=status if isinstance(status, str) else "",
                         patient_id=patient_fields(doc["patient"])["patient_id"]
                         if doc.get("patient") else "", source="api",
                         origin=f"api:{_text(doc, 'message_id', 128)}"[:255])
        file_report(self.catalog, exam, r, receivers=self.receivers)
        result.update(accession_number=exam.accession_number, study_uid=exam.study_uid,
                      report_status=r.status, has_pdf=pdf is not None)
        return f"report {exam.accession_number}: {r.status}"

    def _image(self, doc: dict, client: str, mid: str) -> dict:
        origin = f"api:{client}:{mid}"[:255]
        if doc.get("dicom_base64"):
            return store_dicom(self.catalog, _b64(doc["dicom_base64"], "dicom_base64"),
                               origin, "api", self.charset_fallback, self.receivers)
        data = _b64(doc.get("picture_base64"), "picture_base64")
        return store_picture(self.catalog, data, doc.get("exam") or {}, origin, "api",
                             uid_seed=f"{client}:{mid}")
