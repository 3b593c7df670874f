"""docs/hl7-mapping.md's samples, sent in order to the listener: each is answered AA and
applied (a document a HIS integrator copies from must be right)."""
from __future__ import annotations

import re

import pytest

from models.schema import Exam, Patient, Report

from ..conftest import ROOT
from .test_mllp_framing import Peer

pytestmark = pytest.mark.db
DOC = (ROOT / "docs" / "hl7-mapping.md").read_text(encoding="utf-8")


def samples() -> list[str]:
    return ["\r".join(b.strip().splitlines()) + "\r"
            for b in re.findall(r"```hl7\n(.*?)```", DOC, re.S)]


def test_every_sample_is_accepted_and_applied(hl7_server):
    texts = samples()
    assert [t.split("|")[8] for t in texts] == [
        "ADT^A01^ADT_A01", "ORM^O01^ORM_O01", "OMI^O23^OMI_O23", "ORU^R01^ORU_R01",
        "ADT^A40^ADT_A39"]
    p = Peer(hl7_server.port)
    for text in texts:
        p.send(b"\x0b" + text.encode("utf-8") + b"\x1c\r")
        code, ctrl, why = p.ack()
        assert (code, ctrl) == ("AA", text.split("|")[9]), why
    p.close()
    ct = Exam.get(Exam.accession_number == "CT20261130001")
    mr = Exam.get(Exam.accession_number == "MR20261130002")       # IPC-1, not the filler F-77001
    assert mr.study_uid == "1.2.840.113619.2.55.3.20261130.2"
    assert not Exam.select().where(Exam.accession_number == "F-77001").exists()
    report = Report.get(Report.exam == ct)
    assert "双肺纹理清晰" in report.findings and report.status == "final" and report.pdf_path
    survivor = Patient.get(Patient.patient_id == "P1001")
    assert ct.patient_id == mr.patient_id == survivor.id          # moved by the A40 merge
