"""One report-filing function (models.integration.file_report) behind every path, with the
same rules: the sequence final → preliminary (refused, nothing changes) → corrected gives the
same stored report and the same notices whether it arrives by HL7, the import API, the
watched folder or Catalog.store_report; an encapsulated PDF (DICOM network, disc import)
keeps the report's text and status."""
from __future__ import annotations

import base64
import json

import pytest
from pydicom.uid import generate_uid

from models.db import write_transaction
from models.integration import ReportNotReplaced, upsert_order
from models.schema import Exam, Outbox, Report
from tests.dicom_factory import encapsulated_pdf, to_bytes
from tests.integration import hl7_samples as S

pytestmark = pytest.mark.db

RECEIVER = "127.0.0.1:9"
FINDINGS = "双肺纹理清晰，未见明显实质性病变。"
TEXT = {"final": "未见明显异常。", "preliminary": "初步：待复核。", "corrected": "更正：少量积液。"}
PATIENT = {"patient_id": "P1001", "name": "张伟"}


def _order(catalog, acc: str, study_uid: str = "") -> Exam:
    with write_transaction():
        return upsert_order(catalog, PATIENT, {"accession": acc, "study_uid": study_uid,
                                               "modality": "CT", "status": "examined"},
                            source="test")


def by_hl7(catalog, tmp_path):
    from adapters.hl7_inbound import Hl7Inbound, Hl7Settings
    hl7 = Hl7Inbound(catalog, Hl7Settings(receivers=[RECEIVER]))
    code = {"final": "F", "preliminary": "P", "corrected": "C"}

    def file(acc, status, n):
        res = hl7.handle(S.oru(f"RF{n}", acc, S.report_pdf(acc), status=code[status],
                               findings=FINDINGS, impression=TEXT[status]).encode())
        return res.outcome == "applied", res.reason
    return file


def by_import_api(catalog, tmp_path):
    from adapters.import_api import ImportApi
    api = ImportApi(catalog, receivers=[RECEIVER])

    def file(acc, status, n):
        doc = {"message_id": f"rf{n}", "accession_number": acc, "status": status,
               "findings": FINDINGS, "impression": TEXT[status], "author": "李明",
               "pdf_base64": base64.b64encode(S.report_pdf(acc)).decode()}
        st, answer = api.handle("ris", "report", json.dumps(doc, ensure_ascii=False).encode())
        return st == 200, answer.get("error", "")
    return file


def by_watched_folder(catalog, tmp_path):
    from adapters.watch_folder import WatchFolder
    w = WatchFolder(catalog, tmp_path / "drop", receivers=[RECEIVER])
    w.ensure()

    def file(acc, status, n):
        (w.root / f"{acc}.pdf").write_bytes(S.report_pdf(acc))
        (w.root / f"{acc}.pdf.json").write_text(json.dumps(
            {"status": status, "findings": FINDINGS, "impression": TEXT[status]},
            ensure_ascii=False), encoding="utf-8")
        before = w.rejected
        assert w.scan(settle=False) == 1
        reasons = sorted((w.root / "failed").glob("*.reason.txt"))
        return w.rejected == before, reasons[-1].read_text() if reasons else ""
    return file


def by_store_report(catalog, tmp_path):
    def file(acc, status, n):
        exam = Exam.get(Exam.accession_number == acc)
        try:
            catalog.store_report(exam, findings=FINDINGS, impression=TEXT[status],
                                 pdf=S.report_pdf(acc), status=status, receivers=[RECEIVER])
        except ReportNotReplaced as exc:
            return False, str(exc)
        return True, ""
    return file


def _state(exam: Exam) -> tuple:
    r = Report.get(Report.exam == exam)
    notices = [json.loads(o.payload) for o in Outbox.select().where(Outbox.channel == "hl7")
               .order_by(Outbox.id)]
    return (r.status, r.findings, r.impression, bool(r.pdf_path),
            Exam.get_by_id(exam.id).status,
            [(n["kind"], n["report_status"], n["accession"]) for n in notices
             if n["exam_id"] == exam.id])


@pytest.mark.parametrize("path", [by_hl7, by_import_api, by_watched_folder, by_store_report],
                         ids=lambda f: f.__name__)
def test_final_preliminary_corrected_gives_the_same_result(ctx, tmp_path, path):
    acc = "RF-" + path.__name__.replace("_", "-").upper()
    exam = _order(ctx.catalog, acc)
    file = path(ctx.catalog, tmp_path)
    assert file(acc, "final", 1)[0]
    final = _state(exam)
    assert final == ("final", FINDINGS, TEXT["final"], True, "reported",
                     [("film_published", "final", acc)])
    ok, why = file(acc, "preliminary", 2)
    assert not ok and "preliminary" in why                     # refused, and says why
    assert _state(exam) == final                               # nothing changed
    assert file(acc, "corrected", 3)[0]
    assert _state(exam) == ("corrected", FINDINGS, TEXT["corrected"], True, "reported",
                            [("film_published", "final", acc),
                             ("film_published", "corrected", acc)])


def _pdf_object(study: str, pdf: bytes) -> bytes:
    return to_bytes(encapsulated_pdf(study, pdf, patient_id="P1001"))


def test_an_encapsulated_pdf_keeps_the_report_text_and_status(ctx, tmp_path):
    """DICOM network (InstanceSink) and disc import (Importer) file a PDF-only document the
    same way: attached to the report, whose text and final/corrected status stay; a report
    that was only preliminary becomes final; no report yet: a final PDF report."""
    from adapters.dicom_net import InstanceSink
    from adapters.importer import Importer
    catalog = ctx.catalog
    sink = InstanceSink(catalog, fast_copies=False, receivers=[RECEIVER])
    src = tmp_path / "disc"
    src.mkdir()

    def by_network(study, pdf):
        sink.store(_pdf_object(study, pdf), "MODALITY1@127.0.0.1:104")

    def by_disc(study, pdf):
        f = src / f"{generate_uid()}.dcm"
        f.write_bytes(_pdf_object(study, pdf))
        assert Importer(catalog, fast_copies=False).run([f]).reports == 1
    for k, deliver in enumerate((by_network, by_disc)):
        for before in ("corrected", "preliminary", None):
            study, acc = generate_uid(), f"PDF-{k}-{before}"
            exam = _order(catalog, acc, study)
            if before:
                catalog.store_report(exam, findings=FINDINGS, impression=TEXT[before],
                                     status=before)
            pdf = S.report_pdf(acc)
            deliver(study, pdf)
            r = Report.get(Report.exam == exam)
            assert ctx.storage.abspath(r.pdf_path).read_bytes() == pdf, (deliver, before)
            want = {"corrected": ("corrected", TEXT["corrected"]),
                    "preliminary": ("final", TEXT["preliminary"]), None: ("final", "")}[before]
            assert (r.status, r.impression) == want, (deliver.__name__, before)

