"""HL7 v2 over MLLP against our listener, sent with the hl7 package's mllp_send and a raw
socket: ADT, merge, orders, results with a PDF, ACK semantics, character sets, bad input."""
from __future__ import annotations

import base64
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.hl7_codec import ack_code
from models.schema import Exam, InboundMessage, Patient, Report

from . import hl7_samples as S

pytestmark = pytest.mark.db
MLLP_SEND = str(Path(sys.executable).parent / "mllp_send")


def read_answer(s) -> bytes:
    """What a listener answers to one frame: bytes up to its <FS><CR> (or the close)."""
    buf = b""
    while not buf.endswith(b"\x1c\r"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def send_raw(port: int, payload: bytes, read=True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(payload)
        return read_answer(s) if read else b""


def send(port: int, text: str, encoding="utf-8") -> tuple[str, str, str]:
    raw = send_raw(port, S.frame(text, encoding))
    return ack_code(raw.strip(b"\x0b\x1c\r").decode(encoding, errors="replace"))


def test_mllp_send_adt_and_oru_with_pdf_in_utf8(ctx, hl7_server, tmp_path):
    pdf = S.report_pdf("CT001")
    f = tmp_path / "msgs.hl7"
    f.write_bytes(S.frame(S.adt("C1")) + S.frame(S.orm("C2", "CT001"))
                  + S.frame(S.oru("C3", "CT001", pdf)))
    out = subprocess.run([MLLP_SEND, "-p", str(hl7_server.port), "-f", str(f), "127.0.0.1"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    acks = out.stdout.decode().split("\n")
    assert [ack_code(a.replace("\n", "\r"))[:2] for a in acks if "MSA" in a] == [
        ("AA", "C1"), ("AA", "C2"), ("AA", "C3")]
    p = Patient.get(Patient.patient_id == "P1001")
    assert p.name == "张伟" and p.sex == "M" and p.phone == "13800138000"
    assert p.id_number_masked.startswith("4420") and p.id_number_hash
    exam = Exam.get(Exam.accession_number == "CT001")
    assert exam.status == "reported" and exam.source == "hl7"
    r = Report.get(Report.exam == exam)
    assert r.status == "final" and "双肺纹理清晰" in r.findings and "未见明显异常" in r.impression
    assert r.author == "李明" and r.reviewer == "陈静"
    assert ctx.storage.abspath(r.pdf_path).read_bytes() == pdf
    assert InboundMessage.select().where(InboundMessage.outcome == "applied").count() == 3


def test_gb18030_and_gbk_with_fallback(ctx, hl7_server):
    code, ctrl, _ = send(hl7_server.port, S.adt("G1", pid="P2001", name="欧阳^娜娜",
                                                 charset="GB 18030-2000"), "gb18030")
    assert (code, ctrl) == ("AA", "G1")
    assert Patient.get(Patient.patient_id == "P2001").name == "欧阳娜娜"
    # no MSH-18 and not UTF-8: decoded with the configured fallback (GB18030 reads GBK)
    code, ctrl, _ = send(hl7_server.port, S.adt("G2", pid="P2002", name="李^晓峰", charset=""),
                         "gbk")
    assert code == "AA"
    assert Patient.get(Patient.patient_id == "P2002").name == "李晓峰"
    # declared UTF-8 but sent as GBK: AE with the reason, kept
    code, ctrl, why = send(hl7_server.port, S.adt("G3", pid="P2003", name="李^晓峰"), "gbk")
    assert (code, ctrl) == ("AE", "G3") and "UNICODE UTF-8" in why
    m = InboundMessage.get(InboundMessage.control_id == "G3")
    assert m.outcome == "error" and "UTF-8" in m.reason
    assert Patient.get_or_none(Patient.patient_id == "P2003") is None


def test_repeated_control_id_is_acknowledged_but_applied_once(ctx, hl7_server):
    for _ in range(3):
        code, ctrl, _ = send(hl7_server.port, S.orm("R1", "ACC-R1"))
        assert (code, ctrl) == ("AA", "R1")
    assert Exam.select().where(Exam.accession_number == "ACC-R1").count() == 1
    assert InboundMessage.select().where(InboundMessage.control_id == "R1").count() == 1


def test_order_workflow_and_cancel(ctx, hl7_server):
    assert send(hl7_server.port, S.orm("O1", "ACC-O"))[0] == "AA"
    assert Exam.get(Exam.accession_number == "ACC-O").status == "ordered"
    assert send(hl7_server.port, S.orm("O2", "ACC-O", control="SC", status="SC"))[0] == "AA"
    assert Exam.get(Exam.accession_number == "ACC-O").status == "scheduled"
    assert send(hl7_server.port, S.orm("O3", "ACC-O", control="SC", status="CM"))[0] == "AA"
    assert Exam.get(Exam.accession_number == "ACC-O").status == "examined"
    # a late 'scheduled' never moves the exam back
    assert send(hl7_server.port, S.orm("O4", "ACC-O", control="SC", status="SC"))[0] == "AA"
    assert Exam.get(Exam.accession_number == "ACC-O").status == "examined"
    assert send(hl7_server.port, S.orm("O5", "ACC-X"))[0] == "AA"
    assert send(hl7_server.port, S.orm("O6", "ACC-X", control="CA"))[0] == "AA"
    assert Exam.get(Exam.accession_number == "ACC-X").status == "cancelled"
    uid = "1.2.826.0.1.3680043.8.498.77"
    assert send(hl7_server.port, S.omi("O7", "ACC-MR", uid))[0] == "AA"
    e = Exam.get(Exam.accession_number == "ACC-MR")
    assert e.study_uid == uid and e.status == "scheduled" and e.modality == "MR"
    assert str(e.exam_date) == "2026-03-13"


def test_merge_moves_exams(ctx, hl7_server):
    send(hl7_server.port, S.orm("M1", "ACC-M1", pid="OLD1"))
    send(hl7_server.port, S.orm("M2", "ACC-M2", pid="NEW1"))
    code, ctrl, _ = send(hl7_server.port, S.a40("M3", "NEW1", "OLD1"))
    assert code == "AA"
    new = Patient.get(Patient.patient_id == "NEW1")
    old = Patient.get(Patient.patient_id == "OLD1")
    assert old.merged_into_id == new.id
    assert sorted(e.accession_number for e in new.exams) == ["ACC-M1", "ACC-M2"]
    # a later message for the old ID lands on the survivor
    send(hl7_server.port, S.orm("M4", "ACC-M3", pid="OLD1"))
    assert Exam.get(Exam.accession_number == "ACC-M3").patient_id == new.id


def test_preliminary_then_final_then_corrected(ctx, hl7_server):
    send(hl7_server.port, S.orm("P0", "ACC-P"))
    assert send(hl7_server.port, S.oru("P1", "ACC-P", status="P"))[0] == "AA"
    exam = Exam.get(Exam.accession_number == "ACC-P")
    assert Report.get(Report.exam == exam).status == "preliminary" and exam.status != "reported"
    assert send(hl7_server.port, S.oru("P2", "ACC-P", status="F"))[0] == "AA"
    assert send(hl7_server.port, S.oru("P3", "ACC-P", status="C", impression="更正：少量积液"))[0] == "AA"
    r = Report.get(Report.exam == exam)
    assert r.status == "corrected" and "更正" in r.impression
    code, _, why = send(hl7_server.port, S.oru("P4", "ACC-P", status="P"))
    assert code == "AE" and "preliminary" in why


@pytest.mark.parametrize("field,needle", [
    ("^Application^PDF^Base64^@@@notbase64@@@", "not valid base64"),
    ("^Application^PDF^Base64^" + base64.b64encode(b"GIF89a not a pdf").decode(), "not a PDF"),
    ("^Image^JPEG^Base64^AAAA", "only Application/PDF"),
])
def test_bad_pdf_answers_ae(ctx, hl7_server, field, needle):
    send(hl7_server.port, S.orm("B0" + needle[:3], "ACC-B"))
    code, _, why = send(hl7_server.port, S.oru("B1" + needle[:3], "ACC-B", pdf_field=field))
    assert code == "AE" and needle in why
    assert Report.select().count() == 0


def test_unsupported_type_ar_malformed_ae_and_listener_survives(ctx, hl7_server):
    port = hl7_server.port
    code, ctrl, why = send(port, S.msh("U1", "SIU^S12") + "\rSCH|1\r")
    assert (code, ctrl) == ("AR", "U1") and "not supported" in why
    code, ctrl, why = send(port, S.msh("U2", "ADT^A01") + "\rEVN|A01\r")   # no PID
    assert (code, ctrl) == ("AE", "U2") and "PID" in why
    code, _, why = send(port, "this is not HL7 at all")
    assert code == "AE" and "MSH" in why
    code, _, why = send(port, S.msh("U3", "ADT^A01") + "\rPID|1||X1||A^B\rZZ\x01|x\r")
    assert code == "AE" and "segment" in why
    # a frame without <VT>, then a truncated message and a disconnect: listener keeps going
    raw = send_raw(port, S.adt("U4").encode() + b"\x1c\r")
    assert b"MSA|AE" in raw
    send_raw(port, b"\x0b" + S.adt("U5").encode()[:40], read=False)
    code, ctrl, _ = send(port, S.adt("U6", pid="P-OK"))
    assert (code, ctrl) == ("AA", "U6")
    kept = {m.control_id: m for m in InboundMessage.select()}
    assert kept["U1"].outcome == "rejected" and kept["U2"].outcome == "error"
    assert any(k.startswith("nocid-") for k in kept)
    from models.integration import IntegrationEvent
    # the cut-off message is noted when the listener sees the connection close, which may
    # come after U6's answer: wait for it (a bounded poll, not a test that cannot fail)
    import time
    deadline = time.monotonic() + 10
    while not IntegrationEvent.select().where(
            IntegrationEvent.detail.contains("middle of a message")).exists():
        assert time.monotonic() < deadline, "the cut-off message was never noted"
        time.sleep(0.05)


def test_configurable_id_and_phone_fields(ctx):
    from adapters.hl7_inbound import Hl7Inbound, Hl7Settings
    from models.catalog import id_number_check_digit
    idn = "44200019850101002" + id_number_check_digit("44200019850101002")
    text = "\r".join([S.msh("F1", "ADT^A08^ADT_A01"),
                      f"PID|1||P3001^^^H^PI~{idn}^^^CHN^ID||赵^敏||19850101|F|||||"
                      "^PRN^PH^^^0760^1234567|^WPN^CP^^^^^^^^^13900001111"])
    h = Hl7Inbound(ctx.catalog, Hl7Settings(id_number_field="PID-3", phone_field="PID-14.12"))
    res = h.handle(text.encode())
    assert res.outcome == "applied", res.reason
    p = Patient.get(Patient.patient_id == "P3001")
    assert p.phone == "13900001111" and p.id_number_hash == ctx.catalog.id_number_hash(idn)
    with pytest.raises(ValueError):
        Hl7Inbound(ctx.catalog, Hl7Settings(phone_field="PHONE"))


def test_only_a_message_that_queued_something_wakes_the_outbox(ctx):
    """Issue 15: the listener woke the outbox worker (a query of the queue in another
    thread) after every applied message; now only after one that queued an outbound row."""
    from adapters.hl7_inbound import Hl7Inbound, Hl7Settings
    from models.schema import Outbox
    h = Hl7Inbound(ctx.catalog, Hl7Settings(receivers=["127.0.0.1:9"]))
    steps = [(S.adt("Q1", pid="PQ1", trigger="A08"), False),    # a patient update
             (S.orm("Q2", "QA1", pid="PQ1"), False),             # an order: no notice
             (S.oru("Q3", "QA1", pid="PQ1"), True),              # a final report: a notice
             (S.oru("Q3", "QA1", pid="PQ1"), False)]             # the same again: duplicate
    for text, queued in steps:
        before = Outbox.select().count()
        res = h.handle(text.encode())
        assert res.outcome in ("applied", "duplicate"), res.reason
        assert res.queued is queued
        assert (Outbox.select().count() > before) is queued


def test_a_transaction_that_fails_is_answered_ae_and_applied_on_resend(ctx):
    """Issue 17: a commit that fails (the database went away, or a fault) was answered by
    dropping the connection with no NAK. Now: AE with an ERR (temporary failure: retry), the
    changes rolled back, and the same message resent later is applied (AA). The fault is
    injected after the message's changes are written, before the commit."""
    import peewee
    import pymysql

    from adapters.hl7_inbound import Hl7Inbound, Hl7Settings

    class Failing(Hl7Inbound):
        fault: Exception | None = None

        def _apply(self, msg):
            note = super()._apply(msg)
            if self.fault is not None:
                raise self.fault
            return note

    h = Failing(ctx.catalog, Hl7Settings())
    lost = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
    h.fault = peewee.OperationalError(lost, *lost.args)
    res = h.handle(S.adt("TF1", pid="PTF1").encode())
    ack, _, text = ack_code(res.ack.decode())
    assert ack == "AE" and "temporary failure" in text and "retry" in text, text
    assert b"ERR|" in res.ack
    assert not Patient.select().where(Patient.patient_id == "PTF1").exists()
    assert not InboundMessage.select().where(InboundMessage.control_id == "TF1",
                                             InboundMessage.outcome == "applied").exists()
    h.fault = RuntimeError("a fault of ours")
    res = h.handle(S.adt("TF1", pid="PTF1").encode())
    ack, _, text = ack_code(res.ack.decode())
    assert ack == "AE" and "internal error" in text, text
    assert not Patient.select().where(Patient.patient_id == "PTF1").exists()
    h.fault = None
    res = h.handle(S.adt("TF1", pid="PTF1").encode())
    assert ack_code(res.ack.decode())[0] == "AA", res.reason
    assert Patient.select().where(Patient.patient_id == "PTF1").exists()
