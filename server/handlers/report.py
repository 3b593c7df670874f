"""The exam's report: its PDF (byte-exact) and its pages as images."""
from __future__ import annotations

import logging
from urllib.parse import quote

from adapters.pdf_pages import PdfError, page_count, render_page
from models.catalog import report_of
from models.storage import valid_uid

from .base import UID, ApiError, BaseHandler

log = logging.getLogger(__name__)



class ReportBase(BaseHandler):
    async def prepare(self) -> None:
        await super().prepare()
        # anonymous callers get one answer (401) before any lookup, so the answer never
        # tells an existing study from a made-up one
        self.require_principal()

    def load(self, study_uid: str) -> tuple[bytes, str, object]:
        """(pdf bytes, sha256, exam) — run in the db pool."""
        exam = self.ctx.catalog.exam_by_uid(study_uid)
        self.check_access(exam)
        self.ctx.views.seen(self, "report.view", "exam", exam.accession_number or exam.id)
        report = report_of(exam)
        if report is None or not report.pdf_path:
            raise ApiError(404, "报告尚未发布 / this exam has no report PDF yet")
        data = self.ctx.storage.read(report.pdf_path)
        return data, report.pdf_sha256, exam

    def check_access(self, exam) -> None:
        self.check_exam(exam_id=exam.id, patient_db_id=exam.patient_id,
                          images_enabled=exam.images_enabled, need="report")

    async def pdf(self, study_uid):
        if not valid_uid(study_uid):
            raise ApiError(400, "the study UID is not a valid DICOM UID")
        return await self.in_db(self.load, study_uid)


class ReportPdfHandler(ReportBase):
    async def get(self, study_uid) -> None:
        data, sha, exam = await self.pdf(study_uid)
        name = f"report-{exam.accession_number or exam.id}.pdf"
        disposition = "attachment" if self.get_query_argument("download", "") == "1" else "inline"
        self.set_header("Content-Type", "application/pdf")
        self.set_header("Content-Disposition",
                        f"{disposition}; filename=\"report.pdf\"; filename*=UTF-8''{quote(name)}")
        self.set_header("Cache-Control", "private, no-store")
        self.set_header("ETag", f'"{sha[:32]}"')
        self.finish(data)


class ReportPagesHandler(ReportBase):
    async def get(self, study_uid) -> None:
        data, sha, _ = await self.pdf(study_uid)
        try:
            n = await self.ctx.renders.run(page_count, data)
        except PdfError as exc:
            raise ApiError(422, str(exc)) from None
        self.write_json({"ok": True, "pages": n})


class ReportPageHandler(ReportBase):
    async def get(self, study_uid, page) -> None:
        width = self.int_arg("width", 1080, 100, 2480)
        data, sha, _ = await self.pdf(study_uid)
        index = int(page) - 1
        key = ("report-page", sha, index, width)
        body = self.ctx.renders.encoded.get(key)
        if body is None:
            try:
                body = await self.ctx.renders.run(render_page, data, index, width)
            except IndexError:
                raise ApiError(404, f"the report has no page {page}") from None
            except PdfError as exc:
                raise ApiError(422, str(exc)) from None
            self.ctx.renders.encoded.put(key, body)
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "private, max-age=600")
        self.finish(body)


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (rf"/api/studies/{UID}/report\.pdf", ReportPdfHandler, d),
        (rf"/api/studies/{UID}/report/pages", ReportPagesHandler, d),
        (rf"/api/studies/{UID}/report/pages/([0-9]{{1,3}})", ReportPageHandler, d),
    ]
