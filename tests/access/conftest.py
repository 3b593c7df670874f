"""Two patients with one CT exam each (phones, national IDs, reports), a live server, and
helpers to open shares and verify identities as a phone would."""
from __future__ import annotations

import http.server
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from adapters.importer import Importer
from models.catalog import id_number_check_digit
from models.db import write_transaction
from models.schema import Exam, Patient
from tests.dicom_factory import ct_bytes


def nid(first17: str) -> str:
    return first17 + id_number_check_digit(first17)


@dataclass
class Person:
    patient_id: str
    phone: str
    id_number: str
    study_uid: str
    series_uid: str
    sop_uids: list
    accession: str


A = Person("PA1", "13800138001", nid("44200019800101123"), "1.2.77.1", "1.2.77.1.1",
           [f"1.2.77.1.1.{i}" for i in range(1, 5)], "ACC-A1")
B = Person("PB2", "13900139002", nid("44200019900202234"), "1.2.78.1", "1.2.78.1.1",
           [f"1.2.78.1.1.{i}" for i in range(1, 4)], "ACC-B1")


_PDF: dict[str, bytes] = {}


@pytest.fixture
def people(catalog, tmp_path):
    from adapters.pdf_report import make_report_pdf
    src = tmp_path / "in"
    src.mkdir()
    for person in (A, B):
        for k, sop in enumerate(person.sop_uids):
            (src / f"{sop}.dcm").write_bytes(ct_bytes(
                patient_id=person.patient_id, name="Test^Person", study_uid=person.study_uid,
                series_uid=person.series_uid, sop_uid=sop, accession=person.accession,
                z=float(k), size=32))
    summary = Importer(catalog).run([src])
    assert summary.imported == len(A.sop_uids) + len(B.sop_uids)
    with write_transaction():
        for person in (A, B):
            p = Patient.get(Patient.patient_id == person.patient_id)
            p.phone = person.phone
            catalog.set_patient_id_number(p, person.id_number)
            p.save()
            exam = Exam.get(Exam.study_uid == person.study_uid)
            pdf = _PDF.get(person.patient_id)
            if pdf is None:
                pdf = _PDF[person.patient_id] = make_report_pdf(
                    {"patient_name": "测试", "patient_id": person.patient_id,
                     "accession_number": person.accession, "findings": "未见异常。",
                     "impression": "正常。", "modality": "CT"})
            catalog.store_report(exam, findings="未见异常。", impression="正常。", pdf=pdf)
    return A, B


def staff(live, roles=("frontdesk",), name="desk"):
    from tests.conftest import staff_headers, staff_token
    if {"sysadmin", "secadmin", "auditadmin"} & set(roles):
        return staff_headers(name, roles)          # admins sign in: they hold no API token
    return {"Authorization": f"Bearer {staff_token(name, roles)}"}


def create_share(live, study_uid, headers=None, **opts):
    body = {"study_uid": study_uid, **opts}
    if headers is None and opts.get("allow_download"):
        # the front desk may not download, so it cannot grant downloads: a doctor does
        headers = staff(live, ("doctor",), "share_doc")
    r = requests.post(live.url + "/api/shares", json=body,
                      headers=headers or staff(live), timeout=30)
    assert r.status_code == 201, r.text
    d = r.json()
    return d["url"].rsplit("/", 1)[1], d["code"], d


def open_share(live, token, code, session=None):
    s = session or requests.Session()
    r = s.post(live.url + "/api/share/open", json={"token": token, "code": code}, timeout=30)
    if r.ok:
        s.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return s, r


class FakeSmsPlatform:
    """The hospital's SMS platform, faked on 127.0.0.1: records every JSON request."""

    def __init__(self, fail=False):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.fail = fail
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                outer.requests.append(json.loads(self.rfile.read(n)))
                outer.headers.append(dict(self.headers))
                self.send_response(500 if outer.fail else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_port}/sms/send"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def code_for(self, phone):
        import re
        for r in reversed(self.requests):
            if r["phone"] == phone:
                return re.search(r"([0-9]{6})", r["message"]).group(1)
        return None

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sms(ctx, tmp_path):
    from adapters.sms import HttpGateway
    fake = FakeSmsPlatform()
    tok = tmp_path / "sms.token"
    tok.write_text("sms-secret")
    ctx.sms_gateway = HttpGateway(fake.url, "sms-secret", 5)
    yield fake
    fake.close()


def verify(live, session=None, **factors):
    s = session or requests.Session()
    r = s.post(live.url + "/api/verify", json=factors, timeout=30)
    if r.ok:
        s.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return s, r


ROOT = Path(__file__).resolve().parents[2]
