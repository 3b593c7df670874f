"""Download of the original DICOM files as a streamed ZIP with a DICOMDIR, and the download log.

    GET|HEAD /api/download/studies/{study}.zip                               whole exam
    GET|HEAD /api/download/studies/{study}/series/{series}.zip               one series
    GET|HEAD /api/download/studies/{study}/series/{series}/instances/{sop}.zip   one image
    GET      /api/downloads, /api/admin/downloads                            the download log
             (?study_uid= &since= &until= &limit=; staff download.read; one JSON shape)

Access: policy.check_exam(need="download"): staff with exam.download; a patient or a share
visitor only where their session allows it and after an identity check in the last 10
minutes. The archive is served by Tornado's StaticFileHandler machinery, its "file" being
the archive's layout (adapters/dicom_zip.py, read through the storage interface): an exact
Content-Length, a strong ETag (If-None-Match: 304), Range requests (206; 416 outside the
archive; If-Range honoured, which Tornado's handler alone ignores) and HEAD, so an
interrupted download resumes with identical bytes. Before the first byte of a GET the
originals' SHA-256 are re-checked (again whenever a file changed since its last check; a
tampered or missing file is reported: an exam or series archive leaves it out and lists it
in MISSING.TXT, a single image's archive answers 503). Every GET
that sends bytes is logged first (DownloadLog and the audit: who, what, when, IP, user
agent, range) and completed with the bytes sent.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator
from urllib.parse import quote

import tornado.web
from tornado import httputil

from adapters.dicom_zip import Source, ZipLayout, ZipLayoutError, cached_layout
from models import shares as svc
from models.catalog import download_log, exam_instances
from models.storage import valid_uid

from .base import UID, ApiError, BaseHandler

log = logging.getLogger(__name__)

_pool = ThreadPoolExecutor(4, thread_name_prefix="zip")
UNREADABLE = ("原始文件不可读，请联系医院 / an original file cannot be read; please contact the "
              "hospital")
OUTSIDE = "请求的范围超出文件 / the requested range is outside the file"


class ReadAhead:
    """The chunks of one span of the archive, for StaticFileHandler.get's loop (write,
    flush, next): each chunk is read in the zip pool while the one before it is being
    sent, so the event loop seldom waits on storage. Counts the bytes the client took."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks = chunks
        self.sent = 0
        self.done = False
        self._last = 0
        self._next = _pool.submit(next, chunks, None)

    def __iter__(self) -> "ReadAhead":
        return self

    def __next__(self) -> bytes:
        self.sent += self._last          # asked for more: the previous chunk was flushed
        self._last = 0
        chunk = self._next.result()
        if chunk is None:
            self.done = True
            raise StopIteration
        self._last = len(chunk)
        self._next = _pool.submit(next, self.chunks, None)
        return chunk

    async def close(self) -> None:
        try:
            await asyncio.wrap_future(self._next)
        except Exception:  # noqa: BLE001 - already reported by the loop that read it
            pass
        self.chunks.close()


class DownloadHandler(BaseHandler, tornado.web.StaticFileHandler):
    """Original DICOM files as a ZIP with a DICOMDIR (Range, If-None-Match, HEAD)."""

    exam = layout = stream = span = log_id = None
    root = ""                  # no folder: the "file" is the archive's layout

    def initialize(self, ctx, scope: str) -> None:
        BaseHandler.initialize(self, ctx)
        self.scope = scope

    def head(self, *uids: str):
        return self.get(*uids, include_body=False)

    async def get(self, *uids: str, include_body: bool = True) -> None:
        self.exam, sources = await self.checked_sources(uids)
        missing = ()
        if include_body:
            # Originals are re-checked against their SHA-256 before any byte is sent (again
            # whenever a file changed since its last check): a tampered or missing file is
            # reported and never served; an exam or series archive leaves it out with a note
            # inside, a single image's archive is refused (503).
            sources, missing = await self.off_loop(self.verify_sources, self.exam, sources)
        self.layout = await self.build_layout(sources, missing)
        self.honour_if_range()
        self.span = self.body_span() if include_body else None
        if self.span is not None:
            await self.off_loop(self.layout.prepare, *self.span)
            await self.log_start(uids[-1])
        try:
            await super().get(self.file_name(), include_body)
        except (ZipLayoutError, OSError) as exc:
            self.stream_failed(exc)
        finally:
            await self.log_end()
        if self.get_status() == 416:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps({"ok": False, "status": 416, "error": OUTSIDE},
                                   ensure_ascii=False))

    # before the first byte ----------------------------------------------------------------
    async def off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(_pool, fn, *args)

    async def checked_sources(self, uids: tuple[str, ...]):
        for u in uids:
            if not valid_uid(u):
                raise ApiError(400, "a UID in the path is not a valid DICOM UID")
        self.require_principal()
        return await self.in_db(self.load, *uids)

    def load(self, study, series=None, sop=None):
        exam = self.ctx.catalog.exam_by_uid(study)
        self.check_exam(exam_id=exam.id, patient_db_id=exam.patient_id,
                        images_enabled=exam.images_enabled, need="download")
        rows = exam_instances(exam, series, sop)
        if not rows:
            raise ApiError(404, "没有找到该序列或图像 / no such series or image in this exam")
        storage = self.ctx.storage
        sources = [Source(storage, i.file_path, i.file_size, i.sop_uid, i.sha256)
                   for i in rows]
        return exam, sources

    def verify_sources(self, exam, sources) -> tuple[list, tuple[str, ...]]:
        """(the sources whose originals match their SHA-256, the SOP UIDs of the others);
        every mismatch is reported by the render service's integrity hook."""
        from ..render_service import InstanceRef, OriginalIntegrityError
        renders = self.ctx.renders
        good, missing = [], []
        for src in sources:
            ref = InstanceRef(study_uid=exam.study_uid, series_uid="", sop_uid=src.sop_uid,
                              exam_id=exam.id, patient_db_id=exam.patient_id,
                              relpath=src.relpath, fast_relpath=src.relpath,
                              sha256=src.sha256, frames=0, rows=0,
                              columns=0, transfer_syntax="", images_enabled=True)
            try:
                renders.verify_original(ref)
                good.append(src)
            except OriginalIntegrityError:
                if self.scope == "instance":
                    raise
                missing.append(src.sop_uid)
        if not good:
            raise OriginalIntegrityError()
        return good, tuple(missing)

    async def build_layout(self, sources, missing: tuple[str, ...] = ()) -> ZipLayout:
        exam = self.exam
        when = dt.datetime.combine(exam.exam_date or dt.date(1980, 1, 1),
                                   exam.exam_time or dt.time(0, 0))
        try:
            return await self.off_loop(cached_layout, sources, when, missing)
        except (ZipLayoutError, OSError) as exc:
            log.error("download of %s: %s", exam.accession_number or exam.id, exc)
            raise ApiError(500, UNREADABLE) from None

    def honour_if_range(self) -> None:
        """A Range with an If-Range naming another version of the archive gets the whole
        archive (RFC 9110 13.1.5); Tornado's StaticFileHandler does not look at If-Range."""
        if_range = self.request.headers.get("If-Range")
        if if_range and if_range != self.layout.etag and "Range" in self.request.headers:
            del self.request.headers["Range"]

    def body_span(self) -> tuple[int, int] | None:
        """The bytes [first, last] StaticFileHandler.get will send (its own Range rules), or
        None when it sends none (304, 416): logged, and their CRCs computed, beforehand."""
        self.set_etag_header()
        if self.should_return_304():
            return None
        size = self.layout.size
        header = self.request.headers.get("Range")
        start, end = (header and httputil._parse_request_range(header)) or (None, None)
        if start is not None and start < 0:
            start = max(start + size, 0)
        if (start is not None and (start >= size or (end is not None and start >= end))) \
                or end == 0:
            return None
        return start or 0, min(end or size, size) - 1

    async def log_start(self, object_uid: str) -> None:
        p, (first, last), size = self.principal, self.span, self.layout.size
        whole = (first, last) == (0, size - 1)
        self.log_id = await self.in_db(
            svc.start_download, self.exam, actor_kind=p.kind, actor_id=p.subject,
            scope=self.scope, object_uid=object_uid, ip=self.client_ip(),
            user_agent=self.request.headers.get("User-Agent", ""), bytes_total=size,
            range_text="" if whole else f"range={first}-{last}", auditor=self.ctx.auditor)

    # StaticFileHandler's hooks: the "file" is the archive's layout ------------------------
    def file_name(self) -> str:
        name = (self.exam.accession_number or "exam").replace('"', "")
        if self.scope != "exam":
            name += "_" + ("series" if self.scope == "series" else "image")
        return name + ".zip"

    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        return path

    def validate_absolute_path(self, root: str, absolute_path: str) -> str:
        return absolute_path

    def get_content_size(self) -> int:
        return self.layout.size

    def get_modified_time(self) -> None:
        return None                # the strong ETag (content and names) decides, not a date

    def compute_etag(self) -> str:
        return self.layout.etag

    def should_return_304(self) -> bool:
        return bool(self.request.headers.get("If-None-Match")) and self.check_etag_header()

    def get_content_type(self) -> str:
        return "application/zip"

    def get_cache_time(self, path, modified, mime_type) -> int:
        return 0

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Content-Disposition", content_disposition(path))
        self.set_header("Cache-Control", "private, no-store")

    def get_content(self, abspath: str, start: int | None = None,  # type: ignore[override]
                    end: int | None = None) -> ReadAhead:
        """The archive's bytes [start, end) (Tornado's convention), read ahead off the loop."""
        last = (self.layout.size if end is None else end) - 1
        self.stream = ReadAhead(self.layout.iter_range(start or 0, last))
        return self.stream

    # after the last byte -------------------------------------------------------------------
    def stream_failed(self, exc: Exception) -> None:
        log.error("download of %s failed: %s", self.exam.accession_number or self.exam.id, exc)
        if not self._headers_written:
            raise ApiError(500, UNREADABLE) from None
        self.request.connection.close()

    async def log_end(self) -> None:
        stream = self.stream
        if stream is not None:
            await stream.close()
        if self.log_id is None:
            return
        sent = stream.sent if stream else 0
        if stream is not None and not stream.done:
            log.info("download of %s aborted by the client after %d of %d bytes",
                     self.exam.accession_number or self.exam.id, sent,
                     self.span[1] - self.span[0] + 1)
        completed = bool(stream and stream.done) and self.span[1] == self.layout.size - 1
        await self.in_db(svc.finish_download, self.log_id, bytes_sent=sent,
                         completed=completed)


# the download log ---------------------------------------------------------------------------
def _when(text: str | None, what: str, end: bool = False) -> dt.datetime | None:
    """YYYY-MM-DD (the whole day; `end`: up to its end) or an ISO 8601 time, as naive UTC."""
    if not text:
        return None
    try:
        if len(text) == 10:
            day = dt.datetime.strptime(text, "%Y-%m-%d")
            return day + dt.timedelta(days=1) if end else day
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{what}: expected a date (YYYY-MM-DD) or an ISO 8601 time") \
            from None
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def content_disposition(name: str) -> str:
    """attachment with an ASCII name every browser takes, and the real (UTF-8) name as
    RFC 6266 filename* for a Chinese accession number."""
    ascii_name = "".join(ch if 32 < ord(ch) < 127 and ch not in '"\\;' else "_"
                         for ch in name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


class DownloadLogHandler(BaseHandler):
    """Download log (download.read), newest first: ?study_uid= one exam, ?since= ?until=
    (YYYY-MM-DD or ISO 8601, UTC), ?limit= (default 200). Served at /api/downloads and at
    /api/admin/downloads with the same JSON: {ok, total, downloads: [...]}."""

    async def get(self) -> None:
        self.require("download.read")
        study_uid = self.str_arg("study_uid", 64)
        if study_uid and not valid_uid(study_uid):
            raise ApiError(400, "study_uid is not a valid DICOM UID")
        since = _when(self.str_arg("since", 40), "since")
        until = _when(self.str_arg("until", 40), "until", end=True)
        limit = self.int_arg("limit", 200, 1, 5000)
        out = await self.in_db(download_log, study_uid=study_uid, since=since, until=until,
                               limit=limit)
        self.write_json({"ok": True, **out})


def routes(ctx) -> list:
    base = rf"/api/download/studies/{UID}"
    return [
        (rf"{base}\.zip", DownloadHandler, {"ctx": ctx, "scope": "exam"}),
        (rf"{base}/series/{UID}\.zip", DownloadHandler, {"ctx": ctx, "scope": "series"}),
        (rf"{base}/series/{UID}/instances/{UID}\.zip", DownloadHandler,
         {"ctx": ctx, "scope": "image"}),
        (r"/api/downloads", DownloadLogHandler, {"ctx": ctx}),
    ]
