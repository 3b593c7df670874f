"""Download of the original DICOM files as a streamed ZIP with a DICOMDIR.

    GET|HEAD /api/download/studies/{study}.zip                               whole exam
    GET|HEAD /api/download/studies/{study}/series/{series}.zip               one series
    GET|HEAD /api/download/studies/{study}/series/{series}/instances/{sop}.zip   one image
    GET      /api/downloads?study_uid=                                       staff download.read

Access: policy.check_exam(need="download"): staff with exam.download; a patient or a share
visitor only where their session allows it and after an identity check in the last 10
minutes. The archive has an exact Content-Length, an ETag and answers Range requests
(If-Range honoured), so an interrupted download resumes with identical bytes. Every
request is logged (DownloadLog: who, what, when, IP, user agent, bytes, completed).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import tornado.iostream

from adapters.dicom_zip import Source, ZipLayoutError, cached_layout
from models import shares as svc
from models.catalog import exam_instances
from models.storage import valid_uid

from .base import UID, ApiError, BaseHandler

log = logging.getLogger(__name__)

_pool = ThreadPoolExecutor(4, thread_name_prefix="zip")
RANGE_RE = re.compile(r"^bytes=([0-9]{0,15})-([0-9]{0,15})$")


class DownloadHandler(BaseHandler):
    def initialize(self, ctx, scope: str) -> None:
        super().initialize(ctx)
        self.scope = scope

    def load(self, study, series, sop):
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

    def verify_sources(self, exam, sources) -> None:
        from ..render_service import InstanceRef
        renders = self.ctx.renders
        for src in sources:
            ref = InstanceRef(study_uid=exam.study_uid, series_uid="", sop_uid=src.sop_uid,
                              exam_id=exam.id, patient_db_id=exam.patient_id,
                              relpath=src.relpath, fast_relpath=src.relpath,
                              sha256=src.sha256, frames=0, rows=0,
                              columns=0, transfer_syntax="", images_enabled=True)
            renders.verify_original(ref)

    async def head(self, study, series=None, sop=None) -> None:
        await self.get(study, series, sop, head=True)

    async def get(self, study, series=None, sop=None, head=False) -> None:
        for u in (study, series, sop):
            if u is not None and not valid_uid(u):
                raise ApiError(400, "a UID in the path is not a valid DICOM UID")
        self.require_principal()
        exam, sources = await self.in_db(self.load, study, series, sop)
        when = dt.datetime.combine(exam.exam_date or dt.date(1980, 1, 1),
                                   exam.exam_time or dt.time(0, 0))
        loop = asyncio.get_running_loop()
        if not head:
            # Originals are re-checked against their SHA-256 before any byte is sent: a
            # tampered or missing file is refused (503) and reported, never served silently.
            await loop.run_in_executor(_pool, self.verify_sources, exam, sources)
        try:
            layout = await loop.run_in_executor(_pool, cached_layout, sources, when)
        except (ZipLayoutError, OSError) as exc:
            log.error("download of %s: %s", exam.accession_number or exam.id, exc)
            raise ApiError(500, "原始文件不可读，请联系医院 / an original file cannot be read; "
                                "please contact the hospital") from None
        start, end = 0, layout.size - 1
        partial = False
        rng = self.request.headers.get("Range")
        if_range = self.request.headers.get("If-Range")
        if rng and (not if_range or if_range == layout.etag):
            m = RANGE_RE.match(rng.strip())
            if m and (m.group(1) or m.group(2)):
                a, b = m.group(1), m.group(2)
                if a:
                    start = int(a)
                    end = min(int(b), layout.size - 1) if b else layout.size - 1
                else:                                     # suffix: the last N bytes
                    start = max(layout.size - int(b), 0)
                if start >= layout.size or start > end:
                    self.set_status(416)
                    self.set_header("Content-Range", f"bytes */{layout.size}")
                    self.set_header("Content-Type", "application/json; charset=utf-8")
                    self.finish('{"ok": false, "status": 416, "error": "请求的范围超出文件 / '
                                'the requested range is outside the file"}')
                    return
                partial = True
        name = (exam.accession_number or "exam").replace('"', "")
        if self.scope != "exam":
            name += "_" + ("series" if self.scope == "series" else "image")
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", f'attachment; filename="{name}.zip"')
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("ETag", layout.etag)
        self.set_header("Cache-Control", "private, no-store")
        length = end - start + 1
        self.set_header("Content-Length", str(length))
        if partial:
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end}/{layout.size}")
        if head:
            self.finish()
            return
        p = self.principal
        object_uid = sop or series or study
        log_id = await self.in_db(
            svc.start_download, exam, actor_kind=p.kind, actor_id=p.subject,
            scope=self.scope, object_uid=object_uid, ip=self.client_ip(),
            user_agent=self.request.headers.get("User-Agent", ""), bytes_total=layout.size,
            range_text=f"range={start}-{end}" if partial else "", auditor=self.ctx.auditor)
        sent = 0
        gen = layout.iter_range(start, end)
        ok = False
        try:
            while True:
                chunk = await loop.run_in_executor(_pool, next, gen, None)
                if chunk is None:
                    break
                self.write(chunk)
                await self.flush()
                sent += len(chunk)
            ok = sent == length
            self.finish()
        except tornado.iostream.StreamClosedError:
            log.info("download of %s aborted by the client after %d of %d bytes",
                     exam.accession_number or exam.id, sent, length)
        except (ZipLayoutError, OSError) as exc:
            log.error("download of %s failed: %s", exam.accession_number or exam.id, exc)
            self.request.connection.close()
        finally:
            gen.close()
            completed = ok and end == layout.size - 1
            await self.in_db(svc.finish_download, log_id, bytes_sent=sent, completed=completed)


class DownloadLogHandler(BaseHandler):
    async def get(self) -> None:
        self.require("download.read")
        study_uid = self.str_arg("study_uid", 64)
        if study_uid and not valid_uid(study_uid):
            raise ApiError(400, "study_uid is not a valid DICOM UID")
        limit = self.int_arg("limit", 200, 1, 5000)
        rows = await self.in_db(svc.list_downloads, study_uid=study_uid, limit=limit)
        self.write_json({"ok": True, "downloads": rows})


def routes(ctx) -> list:
    base = rf"/api/download/studies/{UID}"
    return [
        (rf"{base}\.zip", DownloadHandler, {"ctx": ctx, "scope": "exam"}),
        (rf"{base}/series/{UID}\.zip", DownloadHandler, {"ctx": ctx, "scope": "series"}),
        (rf"{base}/series/{UID}/instances/{UID}\.zip", DownloadHandler,
         {"ctx": ctx, "scope": "image"}),
        (r"/api/downloads", DownloadLogHandler, {"ctx": ctx}),
    ]
