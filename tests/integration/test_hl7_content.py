"""Issue 15, items 3, 4, 6, 8: HL7 content as real senders send it, over MLLP against our
listener (raw socket), the 'film published' ORU to a real MLLP receiver, and the import API's
message_id conflicts.

- a non-clinical identifier that fails validation (passport, HK/Macau permit, 15-digit ID,
  bad check digit, a phone that is not a number) never loses the message: AA with an ERR
  warning (severity W) naming the field; the value is stored masked as unverified only;
- IHE OMI^O23 (accession in IPC-1), OBX of every value type, every escape sequence, a PDF
  over several OBX rows, ERR per version, ACKs that pass hl7apy's strict validation;
- outbound ORU with the viewer URL, MSH-5/6 from hl7_receivers, OBX-5 never empty;
- import API: a reused message_id with another body → 409, the same body → the first answer.
"""
from __future__ import annotations

import base64
import logging

import pytest

from adapters.hl7_codec import ack_code
from models.schema import Exam, InboundMessage, Patient, Report

from . import hl7_samples as S
from .test_hl7 import send_raw
from . import test_import_outbox

api_live = test_import_outbox.api_live      # the import API fixture, shared

pytestmark = pytest.mark.db

PASSPORT = "E12345678"
HK_PERMIT = "H1234567801"
OLD_ID_15 = "442000800307123"


def bad_check_digit() -> str:
    from models.catalog import id_number_check_digit
    first = "44200019900307123"
    good = id_number_check_digit(first)
    return first + ("0" if good != "0" else "1")


def exchange(port: int, text: str, encoding: str = "utf-8") -> str:
    raw = send_raw(port, S.frame(text, encoding))
    return raw.strip(b"\x0b\x1c\r").decode(encoding, errors="replace")


def segments(ack: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in ack.replace("\n", "\r").split("\r") if s.startswith(name)]


def adt_with(ctrl: str, pid: str, id_number: str = "", phone: str = "13800138000",
             version: str = "2.5") -> str:
    return "\r".join([
        f"MSH|^~\\&|HIS|ZSDFRMYY|CLOUDFILM|ZSDFRMYY|20260312101500||ADT^A08^ADT_A01|{ctrl}|P|"
        f"{version}||||||UNICODE UTF-8",
        "EVN|A08|20260312101500",
        f"PID|1||{pid}^^^ZSDFRMYY^PI||王^五||19800307|M|||||{phone}||||||{id_number}",
        "PV1|1|O"]) + "\r"


def strict(ack: str):
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message
    return parse_message(ack.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT)


# item 3 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [PASSPORT, HK_PERMIT, OLD_ID_15, "bad-check-digit"])
def test_invalid_id_number_is_applied_with_a_warning(ctx, hl7_server, caplog, value):
    value = bad_check_digit() if value == "bad-check-digit" else value
    caplog.set_level(logging.INFO)   # ours; peewee's DEBUG is the SQL
    ack = exchange(hl7_server.port, adt_with("W1", "PW1", value))
    assert ack_code(ack)[:2] == ("AA", "W1"), ack
    (err,) = segments(ack, "ERR")
    assert err[2] == "PID^1^19" and err[3].startswith("102^") and err[4] == "W"
    assert "PID-19" in err[8] and "unverified" in err[8]
    p = Patient.get(Patient.patient_id == "PW1")
    assert p.name == "王五" and p.phone == "13800138000"
    assert p.id_number_hash is None and p.id_number_masked is None    # not usable to verify
    assert p.id_number_unverified and value not in p.id_number_unverified
    assert "*" in p.id_number_unverified
    assert value not in ack and value not in caplog.text              # never echoed or logged
    msg = InboundMessage.get(InboundMessage.control_id == "W1")
    assert msg.outcome == "applied" and value not in msg.ack


def test_unverified_id_number_never_verifies_identity(ctx, hl7_server):
    """The staff search by ID number (the same hash the patient verification compares)
    does not find a patient by an unverified number."""
    from models.staff import search_patients
    assert ack_code(exchange(hl7_server.port, adt_with("W2", "PW2", PASSPORT)))[0] == "AA"
    assert Patient.get(Patient.patient_id == "PW2").id_number_hash is None
    found = search_patients(PASSPORT, ctx.catalog.id_number_hash)
    assert not [r for r in found if "PW2" in str(r)]


def test_a_valid_id_number_later_replaces_the_unverified_one(ctx, hl7_server):
    assert ack_code(exchange(hl7_server.port, adt_with("W3", "PW3", PASSPORT)))[0] == "AA"
    ack = exchange(hl7_server.port, adt_with("W4", "PW3", S._id_number()))
    assert ack_code(ack)[0] == "AA" and not segments(ack, "ERR")
    p = Patient.get(Patient.patient_id == "PW3")
    assert p.id_number_hash and p.id_number_masked.startswith("4420")
    assert p.id_number_unverified is None


def test_bad_phone_is_applied_with_a_warning(ctx, hl7_server, caplog):
    caplog.set_level(logging.INFO)   # ours; peewee's DEBUG is the SQL
    ack = exchange(hl7_server.port, adt_with("W5", "PW5", S._id_number(), phone="call-me"))
    assert ack_code(ack)[0] == "AA", ack
    (err,) = segments(ack, "ERR")
    assert err[2] == "PID^1^13" and err[4] == "W" and "PID-13" in err[8]
    p = Patient.get(Patient.patient_id == "PW5")
    assert p.phone is None and p.phone_unverified and p.id_number_hash
    assert "callme" not in caplog.text and "call-me" not in caplog.text


def test_order_and_report_with_invalid_id_number_are_applied(ctx, hl7_server):
    orm = S.orm("W6", "ACC-W6", pid="PW6").replace(
        "PID|1||PW6^^^ZSDFRMYY^PI||张^伟||19800307|M",
        f"PID|1||PW6^^^ZSDFRMYY^PI||张^伟||19800307|M|||||||||||{HK_PERMIT}")
    ack = exchange(hl7_server.port, orm)
    assert ack_code(ack)[0] == "AA" and segments(ack, "ERR")[0][4] == "W"
    oru = S.oru("W7", "ACC-W6", S.report_pdf("ACC-W6"), pid="PW6").replace(
        "PID|1||PW6^^^ZSDFRMYY^PI||张^伟||19800307|M",
        f"PID|1||PW6^^^ZSDFRMYY^PI||张^伟||19800307|M|||||||||||{OLD_ID_15}")
    ack = exchange(hl7_server.port, oru)
    assert ack_code(ack)[0] == "AA", ack
    exam = Exam.get(Exam.accession_number == "ACC-W6")
    assert exam.status == "reported" and Report.get(Report.exam == exam).status == "final"


def test_content_that_cannot_be_applied_is_still_ae_with_err3(ctx, hl7_server):
    ack = exchange(hl7_server.port, adt_with("W8", "PW8").replace("19800307", "1980-3-7x"))
    assert ack_code(ack)[0] == "AE"
    (err,) = segments(ack, "ERR")
    assert err[2] == "PID^1^7" and err[3] == "102^Data type error^HL70357" and err[4] == "E"
    strict(ack)
    ack = exchange(hl7_server.port, adt_with("W9", "PW9").replace("ADT^A08^ADT_A01",
                                                                   "ADT^A99^ADT_A01"))
    assert ack_code(ack)[0] == "AR" and segments(ack, "ERR")[0][3].startswith("200^")
    strict(ack)


# item 4 ------------------------------------------------------------------------------------
def omi_ihe(ctrl: str, accession: str, filler: str, study_uid: str) -> str:
    return "\r".join([
        S.msh(ctrl, "OMI^O23^OMI_O23"), "PID|1||PI1^^^ZSDFRMYY^PI||张^伟||19800307|M",
        f"ORC|NW|PL-{filler}|{filler}||SC", "TQ1|||||||20260313090000",
        f"OBR|1|PL-{filler}|{filler}|MRHEAD^头颅MR",
        f"IPC|{accession}|RP1|{study_uid}|SPS1|MR"]) + "\r"


def test_ihe_omi_files_the_exam_under_ipc1(ctx, hl7_server):
    ack = exchange(hl7_server.port, omi_ihe("O1", "ACC-IHE1", "FILL-77", "1.2.826.0.1.99.1"))
    assert ack_code(ack)[0] == "AA", ack
    exam = Exam.get(Exam.study_uid == "1.2.826.0.1.99.1")
    assert exam.accession_number == "ACC-IHE1"
    assert not Exam.select().where(Exam.accession_number == "FILL-77").exists()


def oru_rows(ctrl: str, acc: str, rows: list[str], charset="UNICODE UTF-8",
             version="2.5") -> str:
    return "\r".join([
        S.msh(ctrl, "ORU^R01^ORU_R01", charset).replace("|P|2.5|", f"|P|{version}|"),
        "PID|1||P1001^^^ZSDFRMYY^PI||张^伟||19800307|M",
        f"OBR|1|{acc}|{acc}|USABD^腹部超声|||20260312101500||||||||||||{acc}|||"
        "20260312113000|||F|||||||D001&李&明"] + rows) + "\r"


def test_obx_of_every_value_type(ctx, hl7_server):
    rows = ["OBX|1|ST|FIND^Findings||肝脏大小正常||||||F",
            "OBX|2|NM|LIVER^肝右叶斜径|1|132|mm^毫米|100-140|N|||F",
            "OBX|3|NM|CBD^胆总管内径|1|9|mm|<7|H|||F",
            "OBX|4|FT|FIND2^Findings||第一行\\.br\\第二行||||||F",
            "OBX|5|CE|IMP^Impression||K76.0^脂肪肝^ICD10||||||F",
            "OBX|6|TX|19005-8^Impression^LN||建议复查||||||F",
            "OBX|7|DT|NEXT^Next visit||20260412||||||F"]
    ack = exchange(hl7_server.port, oru_rows("X1", "ACC-X1", rows))
    assert ack_code(ack)[0] == "AA", ack
    r = Report.get(Report.exam == Exam.get(Exam.accession_number == "ACC-X1"))
    assert "肝脏大小正常" in r.findings and "第一行\n第二行" in r.findings
    assert "肝右叶斜径: 132 mm (100-140)" in r.findings
    assert "胆总管内径: 9 mm (<7) H" in r.findings
    assert "20260412" in r.findings
    assert "脂肪肝" in r.impression and "建议复查" in r.impression


def test_every_escape_sequence_is_decoded(ctx, hl7_server):
    text = ("A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F行1\\X0D\\\\X0A\\行2\\.br\\行3\\XE5BCA0\\"
            "\\H\\粗\\N\\")
    ack = exchange(hl7_server.port, oru_rows("X2", "ACC-X2", [f"OBX|1|TX|FIND||{text}||||||F"]))
    assert ack_code(ack)[0] == "AA", ack
    r = Report.get(Report.exam == Exam.get(Exam.accession_number == "ACC-X2"))
    assert r.findings == "A|B^C&D~E\\F行1\n行2\n行3张粗"


def test_hex_escape_uses_the_message_charset(ctx, hl7_server):
    rows = ["OBX|1|TX|FIND||\\XD5C5\\三\\X0D0A\\完||||||F"]      # 张 in GB18030
    ack = exchange(hl7_server.port, oru_rows("X3", "ACC-X3", rows, "GB 18030-2000"), "gb18030")
    assert ack_code(ack)[0] == "AA", ack
    r = Report.get(Report.exam == Exam.get(Exam.accession_number == "ACC-X3"))
    assert r.findings == "张三\n完"


@pytest.mark.parametrize("style", ["split", "padded", "continuation"])
def test_pdf_over_several_obx_rows(ctx, hl7_server, style):
    pdf = S.report_pdf("ACC-PDF")
    if style == "padded":     # each row base64 of its own slice, padding and all
        n = len(pdf) // 3 + 1
        parts = [base64.b64encode(pdf[i:i + n]).decode() for i in range(0, len(pdf), n)]
    else:
        b64 = base64.b64encode(pdf).decode()
        n = len(b64) // 3 + 7
        parts = [b64[i:i + n] for i in range(0, len(b64), n)]
    assert len(parts) == 3
    rows = ["OBX|1|TX|FIND||见附件||||||F"]
    for i, part in enumerate(parts):
        head = "^Application^PDF^Base64^" if i == 0 or style != "continuation" else ""
        rows.append(f"OBX|{i + 2}|ED|PDF^Report PDF|1|{head}{part}||||||F")
    acc = f"ACC-PDF-{style}"
    ack = exchange(hl7_server.port, oru_rows(f"X4{style}", acc, rows))
    assert ack_code(ack)[0] == "AA", ack
    r = Report.get(Report.exam == Exam.get(Exam.accession_number == acc))
    assert ctx.storage.abspath(r.pdf_path).read_bytes() == pdf


def test_pdf_continued_in_add_segments(ctx, hl7_server):
    pdf = S.report_pdf("ACC-ADD")
    b64 = base64.b64encode(pdf).decode()
    n = len(b64) // 3 + 5
    parts = [b64[i:i + n] for i in range(0, len(b64), n)]
    rows = [f"OBX|1|ED|PDF^Report PDF|1|^Application^PDF^Base64^{parts[0]}"] + [
        f"ADD|{p}" for p in parts[1:-1]] + [f"ADD|{parts[-1]}||||||F"]
    ack = exchange(hl7_server.port, oru_rows("X5", "ACC-ADD", rows))
    assert ack_code(ack)[0] == "AA", ack
    r = Report.get(Report.exam == Exam.get(Exam.accession_number == "ACC-ADD"))
    assert ctx.storage.abspath(r.pdf_path).read_bytes() == pdf


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4"])
def test_err1_up_to_2_4(ctx, hl7_server, version):
    ack = exchange(hl7_server.port, adt_with(f"V{version}", "PV1",
                                             version=version).replace("19800307", "x"))
    assert ack_code(ack)[0] == "AE"
    (err,) = segments(ack, "ERR")
    assert err[1] == "PID^1^7^102&Data type error&HL70357" and len(err) == 2
    if version != "2.3":      # hl7apy cannot parse a 2.3 ACK at all (no ACK structure)
        strict(ack)
    ack = exchange(hl7_server.port, adt_with(f"VW{version}", "PV2", PASSPORT, version=version))
    assert ack_code(ack)[0] == "AA" and segments(ack, "ERR")[0][1].startswith("PID^1^19^102&")
    if version != "2.3":
        strict(ack)


@pytest.mark.parametrize("version", ["2.5", "2.5.1", "2.6", "2.7"])
def test_acks_pass_hl7apy_strict_validation(ctx, hl7_server, version):
    ok = exchange(hl7_server.port, adt_with(f"S{version}", "PS1", version=version))
    assert ack_code(ok)[0] == "AA"
    m = strict(ok)
    assert m.msa.msa_1.value == "AA"
    warn = exchange(hl7_server.port, adt_with(f"SW{version}", "PS2", PASSPORT, phone="x",
                                              version=version))
    assert ack_code(warn)[0] == "AA" and len(segments(warn, "ERR")) == 2
    strict(warn)
    bad = exchange(hl7_server.port, adt_with(f"SE{version}", "PS3",
                                             version=version).replace("PID|", "PIX|"))
    assert ack_code(bad)[0] == "AE"
    err = segments(bad, "ERR")[0]
    assert err[3] and err[4] == "E"
    strict(bad)


def test_ack_of_unreadable_message_passes_strict_validation(ctx, hl7_server):
    raw = send_raw(hl7_server.port, b"\x0bMSH|^~\\&|HIS|H|CF|H|20260312||ADT^A01|U1|P|2.5\r"
                   b"P\xffD|1\r\x1c\r")
    ack = raw.strip(b"\x0b\x1c\r").decode("utf-8", errors="replace")
    assert ack_code(ack)[0] == "AE"
    strict(ack)


# item 6 ------------------------------------------------------------------------------------
def test_film_published_oru_is_complete(ctx, loop_thread):
    from adapters.outbox import OutboxSettings, OutboxWorker
    from models.db import write_transaction
    from models.integration import enqueue

    from .test_import_outbox import Receiver
    rec = Receiver(loop_thread)
    with write_transaction():
        enqueue("hl7", f"127.0.0.1:{rec.port}/RIS^ZSDFRMYY", "film:7:abcdef0123456789:x",
                {"kind": "film_published", "accession": "A7", "patient_id": "P7",
                 "study_uid": "1.2.3.7", "report_status": "final", "exam_id": 7})
        enqueue("hl7", f"127.0.0.1:{rec.port}", "film:8:0123456789abcdef:y",
                {"kind": "film_published", "accession": "A8", "patient_id": "P8",
                 "study_uid": "", "report_status": "corrected", "exam_id": 8})
    worker = OutboxWorker(OutboxSettings(base_url="https://film.example.cn", app="CLOUDFILM"))
    loop_thread.run(worker.run_once())
    rec.close()
    assert len(rec.received) == 2
    by_acc = {segments(m, "PID")[0][3]: m for m in rec.received}
    m7, m8 = by_acc["P7"], by_acc["P8"]
    msh7, msh8 = segments(m7, "MSH")[0], segments(m8, "MSH")[0]
    assert msh7[4:6] == ["RIS", "ZSDFRMYY"]
    assert msh8[4] and msh8[5]                          # never empty: the receiver's host
    obx7, obx8 = segments(m7, "OBX"), segments(m8, "OBX")
    for obx in obx7 + obx8:
        assert obx[5].strip("^"), obx                   # OBX-5 never empty
    assert any("https://film.example.cn/film/1.2.3.7" in o[5] for o in obx7)
    assert any("https://film.example.cn/film/exam/8" in o[5] for o in obx8)
    assert not any("STUDYUID" in o[3] for o in obx8)
    for m in (m7, m8):
        strict(m)


# item 8 ------------------------------------------------------------------------------------
def test_import_api_message_id_reuse(api_live):
    from .test_import_outbox import post
    doc = {"message_id": "reuse-1", "patient": {"patient_id": "API9", "name": "赵六",
                                                "phone": "13700000009"}}
    st, first = post(api_live, "patient", doc)
    assert st == 200 and first["ok"]
    st, again = post(api_live, "patient", dict(reversed(list(doc.items()))))  # re-serialised
    assert st == 200 and again.get("duplicate") and again["result"] == first["result"]
    other = {**doc, "patient": {**doc["patient"], "name": "赵七"}}
    st, conflict = post(api_live, "patient", other)
    assert st == 409 and "reuse-1" in conflict["error"] and conflict["conflict"]["first_kind"]
    assert Patient.get(Patient.patient_id == "API9").name == "赵六"
    st, again = post(api_live, "patient", doc)        # the first answer is still there
    assert st == 200 and again.get("duplicate")


def test_import_api_invalid_id_number_is_a_warning(api_live, caplog):
    from .test_import_outbox import post
    caplog.set_level(logging.INFO)   # ours; peewee's DEBUG is the SQL
    st, a = post(api_live, "patient", {"message_id": "pp-1", "patient": {
        "patient_id": "API10", "name": "钱八", "id_number": PASSPORT}})
    assert st == 200 and a["ok"], a
    assert [w["field"] for w in a["warnings"]] == ["id_number"]
    assert PASSPORT not in str(a) and PASSPORT not in caplog.text
    p = Patient.get(Patient.patient_id == "API10")
    assert p.id_number_hash is None and p.id_number_unverified
