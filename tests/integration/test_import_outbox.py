"""The private import API (HMAC per client, idempotent by message ID), the watched folder,
JPEG/PNG/TIFF → DICOM conversion, and the outbox delivering to a real MLLP receiver with
retries, dead letters and the resend button."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from adapters.import_api import sign
from models.schema import Exam, Instance, Outbox, Patient, Quarantine, Report

from . import hl7_samples as S

pytestmark = pytest.mark.db
KEY = "k-ris-0123456789abcdef"


def picture(fmt="JPEG", size=(48, 64)) -> bytes:
    b = io.BytesIO()
    arr = (np.indices(size).sum(0) % 256).astype("uint8")
    Image.fromarray(np.stack([arr, arr // 2, 255 - arr], -1)).save(b, fmt)
    return b.getvalue()


@pytest.fixture
def api_live(tmp_path, config):
    from tests.conftest import LiveServer, context_with_import_clients
    ctx = context_with_import_clients(tmp_path, config, {"ris": KEY})
    srv = LiveServer(ctx)
    yield srv
    srv.stop()
    ctx.close()


def post(srv, kind, doc, key=KEY, client="ris", ts=None, body=None):
    body = body if body is not None else json.dumps(doc, ensure_ascii=False).encode()
    ts = str(int(time.time()) if ts is None else ts)
    path = f"/api/import/v1/{kind}"
    req = urllib.request.Request(srv.url + path, data=body, method="POST", headers={
        "Content-Type": "application/json", "X-CloudFilm-Client": client,
        "X-CloudFilm-Timestamp": ts,
        "X-CloudFilm-Signature": sign(key.encode(), ts, "POST", path, body)})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_import_api_documents_and_idempotency(api_live):
    patient = {"patient_id": "API1", "name": "周杰", "sex": "M", "birth_date": "1979-01-18",
               "phone": "13700000000"}
    st, a = post(api_live, "patient", {"message_id": "m1", "patient": patient})
    assert st == 200 and a["outcome"] == "applied"
    st, a = post(api_live, "order", {"message_id": "m2", "patient": patient, "order": {
        "accession_number": "ES100", "modality": "ES", "description": "胃镜",
        "status": "scheduled"}})
    assert st == 200 and a["result"]["status"] == "scheduled"
    pdf = S.report_pdf("ES100")
    doc = {"message_id": "m3", "accession_number": "ES100", "findings": "胃窦黏膜充血",
           "impression": "慢性浅表性胃炎", "author": "李明", "status": "final",
           "pdf_base64": base64.b64encode(pdf).decode()}
    st, a = post(api_live, "report", doc)
    assert st == 200 and a["result"]["has_pdf"]
    st, again = post(api_live, "report", doc)                 # retried by the client
    assert st == 200 and again.get("duplicate") and again["result"] == a["result"]
    for i, fmt in enumerate(("JPEG", "PNG", "TIFF")):
        st, a = post(api_live, "image", {"message_id": f"img{i}", "picture_base64":
                                         base64.b64encode(picture(fmt)).decode(),
                                         "exam": {"patient_id": "API1",
                                                  "patient_name": "周杰",
                                                  "accession_number": "ES100",
                                                  "modality": "ES", "instance_number": i + 1}})
        assert st == 200 and a["result"]["converted"], a
    st, a = post(api_live, "image", {"message_id": "img0", "picture_base64": "AAAA"})
    assert st == 409 and "img0" in a["error"]                # same id, other body (issue 15)
    exam = Exam.get(Exam.accession_number == "ES100")
    assert exam.num_instances == 3 and exam.category == "endoscopy"
    assert exam.status == "reported" and Report.get(Report.exam == exam).pdf_path
    assert {i.sop_class_uid for i in Instance.select()} == {"1.2.840.10008.5.1.4.1.1.77.1.1"}
    assert Patient.get(Patient.patient_id == "API1").phone == "13700000000"


@pytest.mark.parametrize("change,status,needle", [
    ({"key": "wrong-key-wrong-key-wrong"}, 401, "bad signature"),
    ({"client": "nobody"}, 401, "unknown client"),
    ({"ts": 1000}, 401, "server clock"),
])
def test_import_api_refuses_bad_credentials(api_live, change, status, needle):
    st, a = post(api_live, "patient", {"message_id": "x", "patient": {"patient_id": "Z"}},
                 **change)
    assert st == status and needle in a["error"] and a["ok"] is False
    assert Patient.get_or_none(Patient.patient_id == "Z") is None


@pytest.mark.parametrize("kind,doc,needle", [
    ("patient", {"patient": {"patient_id": "Q"}}, "message_id"),
    ("order", {"message_id": "b1", "patient": {"patient_id": "Q"}, "order": {}}, "accession"),
    ("report", {"message_id": "b2", "accession_number": "NONE"}, "no exam"),
    ("report", {"message_id": "b3", "accession_number": "A", "patient": {"patient_id": "Q"},
                "pdf_base64": base64.b64encode(b"not a pdf").decode()}, "not a PDF"),
    ("image", {"message_id": "b4", "picture_base64": base64.b64encode(b"GIF89a..").decode(),
               "exam": {"patient_id": "Q"}}, "JPEG, PNG or TIFF"),
    ("image", {"message_id": "b5", "dicom_base64": "%%%"}, "base64"),
    ("bogus", {"message_id": "b6"}, "unknown document kind"),
])
def test_import_api_bad_documents_name_the_problem(api_live, kind, doc, needle):
    st, a = post(api_live, kind, doc)
    assert st in (400, 404) and needle in a["error"], a
    from models.schema import InboundMessage
    assert InboundMessage.select().where(InboundMessage.outcome == "error").count() == 1


def test_import_api_body_not_json(api_live):
    st, a = post(api_live, "patient", None, body=b"\xff\xfe not json")
    assert st == 400 and "JSON" in a["error"]


def test_watched_folder(ctx, tmp_path):
    from adapters.watch_folder import WatchFolder
    from tests.dicom_factory import ct_bytes
    w = WatchFolder(ctx.catalog, tmp_path / "drop")
    w.ensure()
    d = w.root
    (d / "img001.dcm").write_bytes(ct_bytes(patient_id="WF1", accession="WF-ACC"))
    (d / "WF-ACC.pdf").write_bytes(S.report_pdf("WF-ACC"))
    (d / "endo1.jpg").write_bytes(picture())
    (d / "endo1.jpg.json").write_text(json.dumps({"patient_id": "WF2", "patient_name": "吴敏",
                                                  "accession_number": "ES9", "modality": "ES"},
                                                 ensure_ascii=False), encoding="utf-8")
    (d / "lonely.png").write_bytes(picture("PNG"))              # no sidecar
    (d / "junk.bin").write_bytes(b"\x00" * 300)
    (d / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    (d / "upload.part").write_bytes(b"still being written")
    assert w.scan() == 0                 # first pass only notes sizes
    assert w.scan() == 6
    done = sorted(p.name for p in (d / "done").rglob("*") if p.is_file())
    assert done == ["WF-ACC.pdf", "endo1.jpg", "endo1.jpg.json", "img001.dcm"]
    failed = {p.name: p for p in (d / "failed").iterdir()}
    assert "sidecar" in failed["lonely.png.reason.txt"].read_text()
    assert "not a DICOM" in failed["junk.bin.reason.txt"].read_text()
    assert "broken.dcm.reason.txt" in failed
    assert (d / "upload.part").exists()
    assert Report.get(Report.exam == Exam.get(Exam.accession_number == "WF-ACC")).pdf_path
    assert Exam.get(Exam.accession_number == "ES9").num_instances == 1
    assert Quarantine.select().count() >= 2


def test_converted_pictures_are_valid_dicom(ctx):
    import pydicom

    from adapters.convert import PictureMeta, picture_to_dicom
    for fmt, mod, cls in (("JPEG", "ES", "1.2.840.10008.5.1.4.1.1.77.1.1"),
                          ("PNG", "SM", "1.2.840.10008.5.1.4.1.1.77.1.4"),
                          ("TIFF", "OT", "1.2.840.10008.5.1.4.1.1.7")):
        raw = picture(fmt)
        ds = pydicom.dcmread(io.BytesIO(picture_to_dicom(raw, PictureMeta(
            patient_id="C1", patient_name="郑^爽", modality=mod))))
        assert ds.SOPClassUID == cls and ds.SpecificCharacterSet == "ISO_IR 192"
        assert str(ds.PatientName) == "郑^爽"
        arr = ds.pixel_array
        ref = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        assert arr.shape == ref.shape
        assert np.abs(arr.astype(int) - ref.astype(int)).mean() < (3 if fmt == "JPEG" else 0.01)


class Receiver:
    """A real MLLP receiver (the hl7 package's server) answering AA, or AE on demand, or
    nothing (answer=None: it reads and never acknowledges)."""

    def __init__(self, loop_thread, answer="AA"):
        from hl7.mllp import start_hl7_server
        self.answer = answer
        self.received: list[str] = []
        self.lt = loop_thread

        async def client(reader, writer):
            try:
                while True:
                    block = await reader.readblock()
                    text = block.decode()
                    self.received.append(text)
                    ctrl = text.split("\r")[0].split("|")[9]
                    if self.answer is None:
                        continue
                    writer.writeblock(f"MSH|^~\\&|R|R|||20260101||ACK|A{ctrl}|P|2.5\r"
                                      f"MSA|{self.answer}|{ctrl}|test\r".encode())
                    await writer.drain()
            except asyncio.IncompleteReadError:
                writer.close()

        async def start():
            return await start_hl7_server(client, "127.0.0.1", 0)
        self.server = loop_thread.run(start())
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self):
        self.server.close()


def test_outbox_delivers_retries_and_dead_letters(ctx, loop_thread):
    from adapters.outbox import OutboxSettings, OutboxWorker
    from models.db import write_transaction
    from models.integration import enqueue, outbox_resend
    rec = Receiver(loop_thread)
    with write_transaction():
        assert enqueue("hl7", f"127.0.0.1:{rec.port}", "k1",
                       {"kind": "film_published", "accession": "A1", "patient_id": "P",
                        "study_uid": "1.2.3", "report_status": "final", "exam_id": 1})
        assert not enqueue("hl7", f"127.0.0.1:{rec.port}", "k1", {"kind": "x"})  # same key
        enqueue("hl7", "127.0.0.1:1", "k2", {"kind": "film_published"})          # nobody
        enqueue("sms", "13800000000", "k3", {"text": "hi"})                       # no sender
    worker = OutboxWorker(OutboxSettings(max_attempts=3, backoff_s=1, backoff_max_s=1))
    for _ in range(3):
        loop_thread.run(worker.run_once())
        Outbox.update(next_attempt_at=Outbox.created_at).where(
            Outbox.status == "pending").execute()
    rows = {o.idempotency_key: o for o in Outbox.select()}
    assert rows["k1"].status == "sent" and rows["k1"].attempts == 1
    assert len(rec.received) == 1 and "ORU^R01" in rec.received[0]
    assert rows["k2"].status == "dead" and rows["k2"].attempts == 3
    assert "cannot connect" in rows["k2"].last_error
    assert rows["k3"].status == "dead" and "no sender" in rows["k3"].last_error
    # the admin's resend button: pending again, delivered once the peer is back
    Outbox.update(destination=f"127.0.0.1:{rec.port}").where(Outbox.id == rows["k2"].id).execute()
    assert outbox_resend(rows["k2"].id).status == "pending"
    loop_thread.run(worker.run_once())
    assert Outbox.get_by_id(rows["k2"].id).status == "sent"
    rec.close()


def test_an_ae_answer_is_retried_with_backoff(ctx, loop_thread):
    from adapters.outbox import OutboxSettings, OutboxWorker
    from models.db import write_transaction
    from models.integration import enqueue
    rec = Receiver(loop_thread, answer="AE")
    with write_transaction():
        enqueue("hl7", f"127.0.0.1:{rec.port}", "r1", {"kind": "film_published"})
    worker = OutboxWorker(OutboxSettings(max_attempts=5, backoff_s=10, backoff_max_s=60))
    loop_thread.run(worker.run_once())
    row = Outbox.get(Outbox.idempotency_key == "r1")
    assert row.status == "pending" and row.attempts == 1 and "answered AE" in row.last_error
    delay = (row.next_attempt_at - row.created_at).total_seconds()
    assert 8 <= delay <= 12
    loop_thread.run(worker.run_once())           # not due yet: nothing sent
    assert len(rec.received) == 1
    rec.close()


def test_final_report_queues_notice_in_same_transaction(ctx, hl7_server, loop_thread):
    """An ORU applied → one outbox row per receiver, written with the report."""
    from adapters.hl7_inbound import Hl7Settings
    from server import integration
    integration.SERVICES.hl7.s = Hl7Settings(receivers=["127.0.0.1:9", "127.0.0.1:10"])
    from .test_hl7 import send
    assert send(hl7_server.port, S.oru("N1", "ACC-N", S.report_pdf("ACC-N")))[0] == "AA"
    assert send(hl7_server.port, S.oru("N1", "ACC-N", S.report_pdf("ACC-N")))[0] == "AA"
    assert Outbox.select().count() == 2
    # a message that fails queues nothing
    assert send(hl7_server.port, S.oru("N2", "ACC-N", pdf_field="^Application^PDF^Base64^@"))[0] == "AE"
    assert Outbox.select().count() == 2


def test_admin_status_view(ctx, live):
    from models.integration import status_summary
    st, body = live.json("/api/admin/integration")
    if st in (401, 403):                 # staff login is wired: the view needs sysadmin
        body = status_summary()
    else:
        assert st == 200
    for key in ("inbound", "outbox", "dead_letters", "recent_inbound_failures",
                "quarantine", "last_inbound"):
        assert key in body


def test_watched_folder_takes_gbk_file_names(ctx, tmp_path):
    """A Chinese Windows tool writing to a share mounted without utf8 gives names in GBK
    bytes. Was: 'surrogates not allowed' and the file stayed in the folder forever."""
    import os
    from adapters.watch_folder import WatchFolder, shown_name
    from models.integration import IntegrationEvent
    from tests.dicom_factory import ct_bytes
    w = WatchFolder(ctx.catalog, tmp_path / "drop")
    w.ensure()
    root = os.fsencode(w.root)
    image, report, junk = ("胸部CT.dcm".encode("gbk"), "GBK-1_报告.pdf".encode("gbk"),
                           "无效文件.bin".encode("gbk"))
    with open(os.path.join(root, image), "wb") as f:
        f.write(ct_bytes(patient_id="WFG", accession="GBK-1"))
    with open(os.path.join(root, report), "wb") as f:
        f.write(S.report_pdf("GBK-1"))
    with open(os.path.join(root, junk), "wb") as f:
        f.write(b"\x00" * 300)
    assert w.scan() == 0 and w.scan() == 3
    done = sorted(shown_name(p) for p in (w.root / "done").rglob("*") if p.is_file())
    assert done == ["GBK-1_报告.pdf", "胸部CT.dcm"]
    failed = sorted(shown_name(p) for p in (w.root / "failed").iterdir())
    assert failed == ["无效文件.bin", "无效文件.bin.reason.txt"]
    exam = Exam.get(Exam.accession_number == "GBK-1")
    assert exam.num_instances == 1 and Report.get(Report.exam == exam).pdf_path
    assert IntegrationEvent.get(IntegrationEvent.peer == "无效文件.bin").outcome == "error"
