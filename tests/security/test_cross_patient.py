"""Issue 14 item 2 — no cross-patient overwrite. An image or report whose Patient ID is not
the patient of the exam it names (same Study UID / accession already filed under another
patient) is quarantined with the reason, whatever the path: C-STORE (a real pynetdicom SCU),
the import API (HTTP), the importer, the watched folder, HL7 ORU over MLLP, an Encapsulated
PDF. A replaced report keeps its earlier content as history that staff can read."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time

import pytest
from pynetdicom import AE

from adapters.hl7_codec import ack_code
from models.db import database
from models.schema import Exam, Quarantine, Report, Series
from tests import dicom_factory as F
from tests.integration import hl7_samples as S
from tests.integration.conftest import LoopThread

pytestmark = pytest.mark.db
ACC = "CT001"


@pytest.fixture
def exam_a(ctx):
    """Patient P1001's CT exam (accession CT001) with its final report."""
    ds = F.ct_dataset(patient_id="P1001", accession=ACC)
    with database.connection_context():
        r = ctx.catalog.store_instance(_meta(ds), F.to_bytes(ds), source="import")
        assert r.outcome == "stored"
        exam = Exam.get(Exam.study_uid == ds.StudyInstanceUID)
        ctx.catalog.store_report(exam, findings="P1001 的报告", pdf=S.report_pdf(ACC))
        # patient B exists too (the attacker's own record)
        from models.integration import upsert_patient
        upsert_patient(ctx.catalog, {"patient_id": "P6666", "name": "李四"})
    return ds


def _meta(ds):
    from adapters.dicom_meta import extract_meta
    return extract_meta(F.to_bytes(ds))[0]


def state(study_uid: str) -> tuple:
    with database.connection_context():
        exam = Exam.get(Exam.study_uid == study_uid)
        r = Report.get(Report.exam == exam)
        return (exam.patient.patient_id, exam.num_instances, r.findings, r.pdf_sha256,
                Series.select().where(Series.exam == exam).count())


def quarantined() -> list[Quarantine]:
    with database.connection_context():
        return list(Quarantine.select().where(Quarantine.reason.contains("cross-patient")))


@pytest.fixture
def scp(ctx):
    from adapters.dicom_net import DicomScp
    s = DicomScp(ctx.catalog, host="127.0.0.1", port=0, fast_copies=False).start()
    yield s
    s.stop()


def c_store(port: int, ds) -> int:
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CLOUDFILM")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_cstore_encapsulated_pdf_of_another_patient_does_not_replace_report(ctx, exam_a,
                                                                            scp):
    before = state(exam_a.StudyInstanceUID)
    other_pdf = S.report_pdf("FORGED")
    pdf = F.encapsulated_pdf(exam_a.StudyInstanceUID, other_pdf, patient_id="P6666")
    assert c_store(scp.port, pdf) == 0xC000
    # a series of patient B's images into A's study: refused too
    ct = F.ct_dataset(patient_id="P6666", study_uid=exam_a.StudyInstanceUID, accession=ACC)
    assert c_store(scp.port, ct) == 0xC000
    assert state(exam_a.StudyInstanceUID) == before
    assert len(quarantined()) == 2
    # A's own images still arrive
    ok = F.ct_dataset(patient_id="P1001", study_uid=exam_a.StudyInstanceUID, accession=ACC)
    assert c_store(scp.port, ok) == 0x0000


def test_hl7_oru_naming_another_patient_is_quarantined(ctx, exam_a):
    from server import integration
    lt = LoopThread()
    listener = lt.run(integration.start_hl7(ctx, "127.0.0.1", 0))
    try:
        before = state(exam_a.StudyInstanceUID)
        msg = S.oru("X9", ACC, S.report_pdf("FORGED"), status="C", pid="P6666",
                    findings="伪造报告")
        with socket.create_connection(("127.0.0.1", listener.port), timeout=20) as s:
            s.sendall(S.frame(msg))
            buf = b""
            while not buf.endswith(b"\x1c\r"):
                buf += s.recv(65536)
        code, ctrl, why = ack_code(buf.strip(b"\x0b\x1c\r").decode())
        assert code == "AE" and ctrl == "X9" and "cross-patient" in why
        assert state(exam_a.StudyInstanceUID) == before
        [q] = quarantined()
        assert q.source == "hl7" and q.file_path     # the PDF is kept for inspection
    finally:
        lt.run(listener.stop())
        integration.SERVICES.__init__()
        lt.stop()


def import_post(ctx, live, kind, doc):
    from server import integration
    key = "k" * 24
    f = ctx.config.path("data_dir") / "clients.toml"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(f'[clients]\nris = "{key}"\n')
    ctx.import_api = None
    ctx.config.set_base(import_api_clients_file=str(f))
    integration.import_api_for(ctx)
    body = json.dumps(doc).encode()
    ts, path = str(int(time.time())), f"/api/import/v1/{kind}"
    sig = hmac.new(key.encode(), f"{ts}\nPOST\n{path}\n".encode() + body,
                   hashlib.sha256).hexdigest()
    status, _, out = live.request("POST", path, body, auth=False, headers={
        "X-CloudFilm-Client": "ris", "X-CloudFilm-Timestamp": ts,
        "X-CloudFilm-Signature": sig, "Content-Type": "application/json"})
    return status, json.loads(out)


def test_import_api_report_and_image_of_another_patient(ctx, live, exam_a):
    before = state(exam_a.StudyInstanceUID)
    st, body = import_post(ctx, live, "report", {
        "message_id": "r1", "accession_number": ACC, "status": "corrected",
        "findings": "伪造", "patient": {"patient_id": "P6666"},
        "pdf_base64": base64.b64encode(S.report_pdf("FORGED")).decode()})
    assert st == 400 and "cross-patient" in body["error"], body
    ct = F.ct_dataset(patient_id="P6666", study_uid=exam_a.StudyInstanceUID, accession=ACC)
    st, body = import_post(ctx, live, "image", {
        "message_id": "i1", "dicom_base64": base64.b64encode(F.to_bytes(ct)).decode()})
    assert st == 400 and "cross-patient" in body["error"], body
    assert state(exam_a.StudyInstanceUID) == before
    assert {q.source for q in quarantined()} == {"api"} and len(quarantined()) == 2


def test_stow_rs_of_another_patient(ctx, live, exam_a):
    before = state(exam_a.StudyInstanceUID)
    data = F.to_bytes(F.encapsulated_pdf(exam_a.StudyInstanceUID, S.report_pdf("FORGED"),
                                         patient_id="P6666"))
    status, _, body = live.request(
        "POST", "/dicomweb/studies",
        body=b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b1--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'})
    assert status in (409, 400) and b"00081198" in body      # FailedSOPSequence
    assert state(exam_a.StudyInstanceUID) == before
    assert len(quarantined()) == 1


def test_importer_and_watched_folder(ctx, exam_a, tmp_path):
    from adapters.importer import Importer
    from adapters.watch_folder import WatchFolder
    before = state(exam_a.StudyInstanceUID)
    f = tmp_path / "in" / "forged.dcm"
    f.parent.mkdir()
    f.write_bytes(F.to_bytes(F.encapsulated_pdf(exam_a.StudyInstanceUID,
                                                S.report_pdf("FORGED"), patient_id="P6666")))
    with database.connection_context():
        summary = Importer(ctx.catalog, fast_copies=False).run([f])
    assert summary.reports == 0 and "cross-patient" in summary.rejected[0][1]
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / f"{ACC}.pdf").write_bytes(S.report_pdf("FORGED"))
    (watch / f"{ACC}.pdf.json").write_text(json.dumps(
        {"patient": {"patient_id": "P6666"}, "status": "corrected"}))
    with database.connection_context():
        WatchFolder(ctx.catalog, watch).scan(settle=False)
    assert state(exam_a.StudyInstanceUID) == before
    assert {q.source for q in quarantined()} == {"import", "folder"}


def test_replaced_report_keeps_history_for_staff(ctx, live, exam_a):
    from adapters.hl7_inbound import Hl7Inbound
    uid = exam_a.StudyInstanceUID
    pdf2 = S.report_pdf("v2")
    with database.connection_context():
        res = Hl7Inbound(ctx.catalog).handle(
            S.oru("C1", ACC, pdf2, status="C", findings="更正后的报告").encode())
    assert res.outcome == "applied", res.reason
    st, body = live.json(f"/api/studies/{uid}/report/versions")
    assert st == 200
    [v] = body["versions"]
    assert v["number"] == 1 and v["findings"] == "P1001 的报告" and v["status"] == "final"
    assert v["has_pdf"] and v["replaced_by_source"] == "hl7"
    # the same content again keeps no new version
    with database.connection_context():
        Hl7Inbound(ctx.catalog).handle(
            S.oru("C2", ACC, pdf2, status="C", findings="更正后的报告").encode())
    assert len(live.json(f"/api/studies/{uid}/report/versions")[1]["versions"]) == 1
    # not for patients or anonymous visitors
    st, _ = live.json(f"/api/studies/{uid}/report/versions", auth=False)
    assert st in (401, 403)
