"""DICOMweb (PS3.18) for standard viewers and workstations: QIDO-RS, WADO-RS, STOW-RS.

    GET  /dicomweb/studies | /series | /instances                           QIDO-RS
    GET  /dicomweb/studies/{s}/series | /studies/{s}/instances
    GET  /dicomweb/studies/{s}/series/{se}/instances
    GET  /dicomweb/studies/{s}[/series/{se}[/instances/{i}]]                WADO-RS
    GET  .../metadata, .../instances/{i}/frames/{list}, .../bulkdata/{tag}
    POST /dicomweb/studies[/{s}]                                            STOW-RS

Lists go through policy.visible_exams; retrieves through BaseHandler.check_exam (images).
Staff API tokens (Authorization: Bearer) authenticate clients; CORS answers only the origins
of the setting dicomweb_cors_origins. The rendered/thumbnail resources are in render.py.
"""
from __future__ import annotations

import asyncio
import re
import secrets

from adapters import dicomweb as dw
from models.storage import valid_uid

from .. import policy
from .base import UID, ApiError, BaseHandler

BASE = "/dicomweb"
FRAMES = r"([0-9]{1,7}(?:,[0-9]{1,7}){0,99})"
TAG = r"([0-9A-Fa-f]{8})"
_meta_cache = dw.MetadataCache()


class DicomWebHandler(BaseHandler):
    """Shared CORS, access and file reading of the DICOMweb resources."""

    def initialize(self, ctx) -> None:
        super().initialize(ctx)
        self.cors()

    def set_default_headers(self) -> None:
        super().set_default_headers()
        if getattr(self, "ctx", None) is not None:
            self.cors()           # again after clear() (error answers keep CORS)

    def cors(self) -> None:
        origin = self.request.headers.get("Origin", "")
        allowed = [o.strip() for o in (self.ctx.config.dicomweb_cors_origins or "").split(",")
                   if o.strip()]
        if origin and origin in allowed:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Expose-Headers", "Content-Type, Content-Length, "
                                                             "Warning")

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return                      # a preflight carries no credentials
        await super().prepare()

    def options(self, *args) -> None:
        """CORS preflight: 204 with the allowed methods and headers for a listed origin."""
        if "Access-Control-Allow-Origin" in self._headers:
            self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            self.set_header("Access-Control-Allow-Headers",
                            "Authorization, Accept, Content-Type")
            self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def base_url(self) -> str:
        public = (self.ctx.config.public_url or "").rstrip("/")
        if public:
            return public + BASE
        return f"{self.request.protocol}://{self.request.host}{BASE}"

    def check_uids(self, *uids) -> None:
        for uid in uids:
            if uid is not None and not valid_uid(uid):
                raise ApiError(400, "a UID in the path is not a valid DICOM UID")

    async def load_files(self, study, series=None, sop=None) -> dict:
        from models.qido import instance_files
        self.check_uids(study, series, sop)
        found = await self.in_db(instance_files, study, series, sop)
        if found is None:
            # a staff member may learn it does not exist; others get the same 404 as for
            # someone else's exam (policy.check_exam)
            self.require_principal()
            raise ApiError(404, "没有找到 / no such study, series or instance")
        self.check_exam(exam_id=found["exam_id"], patient_db_id=found["patient_db_id"],
                        images_enabled=found["images_enabled"], need="images")
        self.ctx.views.seen(self, "series.view", "series", series or study)
        return found

    async def read(self, relpath: str) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(
            None, self.ctx.storage.read, relpath)

    async def transcode(self, data: bytes, single: bool):
        """The file in explicit VR little endian (in a limited decode worker)."""
        try:
            out = await asyncio.get_running_loop().run_in_executor(None, dw.explicit_le, data)
        except ValueError:
            if single:
                raise ApiError(406, "this instance cannot be transcoded to explicit VR little "
                                    "endian; ask for transfer-syntax=*") from None
            return None, None
        return out, dw.EXPLICIT_LE


def _accept(handler) -> str:
    return handler.request.headers.get("Accept", "") or "*/*"


def _accept_ranges(accept: str) -> list[dict]:
    out = []
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        params = {}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        out.append({**params, "_media": parts[0].lower()})
    return out


class QidoHandler(DicomWebHandler):
    """QIDO-RS search (studies, series, instances) as application/dicom+json."""

    def initialize(self, ctx, level: str) -> None:
        super().initialize(ctx)
        self.level = level

    async def get(self, study=None, series=None) -> None:
        self.check_uids(study, series)
        accept = _accept(self)
        if not any(t in accept for t in ("application/dicom+json", "application/json", "*/*",
                                         "application/*")):
            raise ApiError(406, "search results are available as application/dicom+json")
        filters, includefields = qido_query(self.request.query_arguments)
        limit = self.int_arg("limit", 100, 1, 1000)
        offset = self.int_arg("offset", 0, 0, 10_000_000)
        level = {"studies": "study", "series": "series", "instances": "instance"}[self.level]
        principals = [p for _, p in self.held] or [self.principal]
        rows = await self.in_db(policy.visible_exams, principals, filters, level=level,
                                study_uid=study, series_uid=series, limit=limit,
                                offset=offset)
        if not rows and study and not await self.in_db(
                policy.visible_exams, principals, {}, level="study", study_uid=study,
                limit=1):
            # someone else's study answers as one that does not exist (policy.check_exam)
            raise ApiError(404, "没有找到该检查 / no such study")
        self.write_dicom_json(dw.qido_json(rows, level, includefields, self.base_url()))

    def write_dicom_json(self, body: list) -> None:
        import orjson
        self.set_header("Content-Type", "application/dicom+json")
        self.set_header("Cache-Control", "no-store")
        if not body:
            self.set_status(204)
            self.finish()
            return
        self.finish(orjson.dumps(body))           # UTF-8, names as they are


def qido_query(arguments: dict) -> tuple[dict, list]:
    """QIDO query parameters as (matching keyword -> value, includefields); keys may be
    keywords or tags; unsupported keys are ignored (PS3.18 8.3.4)."""
    filters, includefields = {}, []
    for key, values in arguments.items():
        texts = [v.decode("utf-8", "replace") for v in values]
        if key == "includefield":
            for t in texts:
                for f in re.split(r"[,\s]+", t):
                    if f == "all" or (f and dw.keyword_of(f)):
                        includefields.append("all" if f == "all" else dw.keyword_of(f))
            continue
        kw = dw.keyword_of(key)
        if kw is not None:
            filters[kw] = ",".join(texts)[:1000]
    return filters, includefields


class RetrieveHandler(DicomWebHandler):
    """WADO-RS retrieve of a study, series or instance as multipart/related;
    type="application/dicom" (transfer-syntax=* keeps the stored files byte-identical)."""

    async def get(self, study, series=None, sop=None) -> None:
        accept = _accept(self)
        ranges = _accept_ranges(accept)
        wanted = [r for r in ranges if r["_media"] in ("multipart/related", "*/*",
                                                     "application/dicom")]
        if not wanted:
            raise ApiError(406, 'instances are available as multipart/related; '
                                'type="application/dicom"')
        ts_any = any(r.get("transfer-syntax") == "*" for r in wanted)
        ts_list = {r.get("transfer-syntax") for r in wanted if r.get("transfer-syntax")}
        found = await self.load_files(study, series, sop)
        boundary = secrets.token_hex(16)
        self.set_header("Content-Type", f'multipart/related; type="application/dicom"; '
                                        f'boundary={boundary}')
        self.set_header("Cache-Control", "private, no-store")
        for f in found["files"]:
            data = await self.read(f["file_path"])
            ts = f["transfer_syntax"]
            if not (ts_any or ts in ts_list or ts == dw.EXPLICIT_LE):
                data, ts = await self.transcode(data, single=bool(sop))
                if data is None:
                    continue
            self.write(f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={ts}"
                       f"\r\nContent-Length: {len(data)}\r\n\r\n".encode())
            self.write(data)
            self.write(b"\r\n")
            await self.flush()
        self.finish(f"--{boundary}--\r\n".encode())


class MetadataHandler(DicomWebHandler):
    """WADO-RS metadata of a study, series or instance: DICOM JSON with BulkDataURIs for
    pixel data and large values (cached per stored file)."""

    async def get(self, study, series=None, sop=None) -> None:
        found = await self.load_files(study, series, sop)
        # the whole answer is cached per version of its set of files (dw.files_etag)
        key = dw.files_etag(found["files"])
        body = _doc_cache.get(key)
        if body is None:
            body = await asyncio.get_running_loop().run_in_executor(
                None, self.metadata_body, study, found["files"])
            _doc_cache.put(key, body)
        self.set_header("Content-Type", "application/dicom+json")
        self.set_header("Cache-Control", "private, no-store")
        # the cached documents carry a marker for the base URL, which depends on the request
        self.finish(body.replace(_BASE_MARK, self.base_url()))

    def metadata_body(self, study: str, files: list[dict]) -> str:
        """The DICOM JSON array of these files: each instance's text from memory, else from
        its sidecar made at ingest, else from the file's header (dw.metadata_text); runs in
        a worker thread; a damaged file is left out, not a 500."""
        out = []
        for f in files:
            text = _meta_cache.get(f["sha256"])
            if text is None:
                try:
                    text = dw.metadata_text(self.ctx.storage, f["file_path"], f["sha256"],
                                            study, f["series_uid"], f["sop_uid"])
                except Exception:  # noqa: BLE001
                    continue
                _meta_cache.put(f["sha256"], text)
            out.append(text)
        return "[" + ",".join(out) + "]"


_BASE_MARK = dw.BASE_MARK
_doc_cache = dw.MetadataCache(64)        # whole answers (a 300-slice series: ~0.8 MB)
_frame_layouts = dw.FrameLayout()


class FramesHandler(DicomWebHandler):
    """WADO-RS frames (1-based list): application/octet-stream (uncompressed), or the stored
    compressed syntax when Accept allows it (transfer-syntax=* or that UID)."""

    async def get(self, study, series, sop, numbers) -> None:
        nums = [int(n) for n in numbers.split(",")]
        ranges = _accept_ranges(_accept(self))
        found = await self.load_files(study, series, sop)
        f = found["files"][0]
        stored = f["transfer_syntax"]
        keep = any(r.get("transfer-syntax") in ("*", stored) for r in ranges) or any(
            r["_media"].startswith("image/") and r["_media"] != "image/*" for r in ranges)
        try:
            chunks, ts = await asyncio.get_running_loop().run_in_executor(
                None, self.frames, f, nums, keep)
        except IndexError as exc:
            raise ApiError(404, str(exc)) from None
        except ValueError as exc:
            raise ApiError(406, f"the frames cannot be decoded here ({exc}); ask for "
                                "transfer-syntax=*") from None
        ctype = ("application/octet-stream" if ts == dw.EXPLICIT_LE
                 else _FRAME_TYPES.get(ts, "application/octet-stream"))
        boundary = secrets.token_hex(16)
        parts = [(f"{ctype}; transfer-syntax={ts}", c) for c in chunks]
        self.set_header("Content-Type", f'multipart/related; type="{ctype}"; '
                                        f'boundary={boundary}')
        self.set_header("Cache-Control", "private, max-age=3600")
        self.finish(dw.multipart(parts, boundary))

    def compute_etag(self):
        return None          # no SHA-1 over every frame body (0.3 ms per 512x512 frame)

    def frames(self, f: dict, nums: list[int], keep: bool):
        """In a worker thread: uncompressed little endian frames straight from their byte
        range (layout cached per file), anything else decoded by dw.frames."""
        storage = self.ctx.storage
        layout = _frame_layouts.of(f["sha256"], lambda: storage.open(f["file_path"]))
        if layout is not None:
            with storage.open(f["file_path"]) as fh:
                return dw.read_frames(fh, layout, nums), dw.EXPLICIT_LE
        return dw.frames(storage.read(f["file_path"]), nums, keep)


_FRAME_TYPES = {"1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
                "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
                "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
                "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
                "1.2.840.10008.1.2.5": "image/dicom-rle"}


class BulkdataHandler(DicomWebHandler):
    """WADO-RS bulk data of one instance's top-level element (e.g. 00420011, the PDF of an
    encapsulated report) as application/octet-stream (application/pdf for a PDF)."""

    async def get(self, study, series, sop, tag) -> None:
        found = await self.load_files(study, series, sop)
        data = await self.read(found["files"][0]["file_path"])
        value = await asyncio.get_running_loop().run_in_executor(None, dw.bulkdata, data, tag)
        if value is None:
            raise ApiError(404, "this instance has no such bulk data element")
        ctype = "application/pdf" if value.startswith(b"%PDF-") else "application/octet-stream"
        boundary = secrets.token_hex(16)
        self.set_header("Content-Type", f'multipart/related; type="{ctype}"; '
                                        f'boundary={boundary}')
        self.set_header("Cache-Control", "private, no-store")
        self.finish(dw.multipart([(ctype, value)], boundary))


class StudiesRootHandler(QidoHandler):
    """QIDO-RS study search (GET) and STOW-RS store (POST, staff with exam.import)."""

    async def post(self, study=None) -> None:
        await stow(self, study)


class StudyHandler(RetrieveHandler):
    """WADO-RS retrieve of a whole study (GET) and STOW-RS into it (POST)."""

    async def post(self, study) -> None:
        self.check_uids(study)
        await stow(self, study)


async def stow(handler: DicomWebHandler, study: str | None) -> None:
    """STOW-RS: store each application/dicom part through the import path (the rules of
    C-STORE and the import API); the PS3.18 response lists stored and failed instances."""
    import json

    from adapters.import_api import store_dicom
    handler.require("exam.import")
    try:
        parts = dw.parse_multipart(handler.request.body,
                                   handler.request.headers.get("Content-Type", ""))
    except ValueError as exc:
        raise ApiError(415, f'send multipart/related; type="application/dicom" ({exc})') \
            from None
    if len(parts) > 10000:
        raise ApiError(413, "too many parts")
    base = handler.base_url()
    origin = f"stow:{handler.principal.subject}@{handler.client_ip()}"

    def store_all():
        from adapters.dicom_meta import extract_meta
        ok, failed = [], []
        for ctype, data in parts:
            if not ctype.lower().startswith("application/dicom"):
                failed.append(({}, 0xA900, "not application/dicom"))
                continue
            data = dw.part10(data)
            try:
                meta, _ = extract_meta(data)
            except Exception:  # noqa: BLE001 - quarantined by store_dicom below
                meta = {}
            if study and meta.get("study_uid") and meta["study_uid"] != study:
                failed.append((meta, 0xA900, "Study Instance UID differs from the URL"))
                continue
            try:
                r = store_dicom(handler.ctx.catalog, data, origin, "api")
                ok.append((meta, r))
            except Exception as exc:  # noqa: BLE001 - reported per instance
                failed.append((meta, 0xC000, str(getattr(exc, "message", exc))[:200]))
        return ok, failed

    ok, failed = await handler.in_db(store_all)
    doc = {}
    if ok:
        doc["00081199"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": [m.get("sop_class_uid", "")]},
             "00081155": {"vr": "UI", "Value": [r["sop_uid"]]},
             "00081190": {"vr": "UR", "Value": [
                 f"{base}/studies/{r['study_uid']}/series/{m.get('series_uid', '')}"
                 f"/instances/{r['sop_uid']}"]}} for m, r in ok]}
    if failed:
        doc["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": [m.get("sop_class_uid") or "0"]},
             "00081155": {"vr": "UI", "Value": [m.get("sop_uid") or "0"]},
             "00081197": {"vr": "US", "Value": [code]},
             "00090010": {"vr": "LO", "Value": ["CLOUDFILM"]},
             "00091001": {"vr": "LT", "Value": [reason]}} for m, code, reason in failed]}
    if study or ok:
        doc["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study or ok[0][1]['study_uid']}"]}
    status = 200 if not failed else (202 if ok else 409)
    handler.set_status(status)
    handler.set_header("Content-Type", "application/dicom+json")
    handler.set_header("Cache-Control", "no-store")
    handler.finish(json.dumps(doc, ensure_ascii=False))


def routes(ctx) -> list:
    d = {"ctx": ctx}
    S = rf"{BASE}/studies/{UID}"
    SE = rf"{S}/series/{UID}"
    I = rf"{SE}/instances/{UID}"
    return [
        (rf"{BASE}/studies", StudiesRootHandler, d | {"level": "studies"}),
        (rf"{BASE}/series", QidoHandler, d | {"level": "series"}),
        (rf"{BASE}/instances", QidoHandler, d | {"level": "instances"}),
        (rf"{S}/series", QidoHandler, d | {"level": "series"}),
        (rf"{S}/instances", QidoHandler, d | {"level": "instances"}),
        (rf"{SE}/instances", QidoHandler, d | {"level": "instances"}),
        (S, StudyHandler, d),
        (SE, RetrieveHandler, d),
        (I, RetrieveHandler, d),
        (rf"{S}/metadata", MetadataHandler, d),
        (rf"{SE}/metadata", MetadataHandler, d),
        (rf"{I}/metadata", MetadataHandler, d),
        (rf"{I}/frames/{FRAMES}", FramesHandler, d),
        (rf"{I}/bulkdata/{TAG}", BulkdataHandler, d),
    ]
