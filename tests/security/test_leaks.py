"""Small leaks found by the penetration test (issue 14 item 9): an anonymous caller must not
tell an existing Study/Series/SOP UID or exam from a made-up one; the access log must not
carry credentials (share and QR tokens, signed PACS tokens, ?token=) or patient identifiers
(patient IDs, accession numbers); headers built from data (file names with Chinese
accession numbers) must never turn into a 500."""
from __future__ import annotations

import logging
import urllib.parse

import pytest

from models.db import database
from models.schema import Exam
from tests.security import test_attacks as _attacks
from tests.security.routes import World, example_for, known_finding, operations
from tests.security.test_attacks import send

pytestmark = pytest.mark.db
live = _attacks.live            # the fixtures of test_attacks.py: the served app, two patients
world = _attacks.world

MISSING = World("1.2.99.7", "1.2.99.7.1", "1.2.99.7.1.0", "1.2.99.8", "1.2.99.8.1",
                "1.2.99.8.1.0", "PX404", "PY404")
UID_RX = "[0-9][0-9.]{0,63}"
EXAM_ID_RX = "[0-9]{1,12}"
PACS_RX = "[A-Za-z0-9._\\-]{1,200}"       # /pacs/a/{accession}, /pacs/u/{uid}, /pacs/t/{token}


def _uid_routes(app) -> list[dict]:
    """Every operation with a path parameter naming a study, series, instance or exam."""
    return [op for op in operations(app) if not known_finding(op) and any(
        rx.startswith(UID_RX) or rx in (EXAM_ID_RX, PACS_RX) or "patient" in name
        for name, rx in op["path_params"])]


def _fill(op: dict, w: World, exam_id: str, accession: str) -> str:
    """The path with this world's objects: UIDs in order study, series, instance."""
    path, uids = op["path"], iter([w.study_a, w.series_a, w.sop_a])
    for name, rx in op["path_params"]:
        if rx.startswith(UID_RX):
            value = next(uids, w.sop_a)
        elif rx == EXAM_ID_RX and "exam" in path:
            value = exam_id
        elif rx == PACS_RX:
            value = accession if path.startswith("/pacs/a/") else w.study_a
        elif "patient" in name:
            value = w.patient_a
        else:
            value = example_for(name, rx, w)
        path = path.replace("{" + name + "}", urllib.parse.quote(value, safe=""), 1)
    return path


def test_anonymous_answer_is_the_same_for_existing_and_missing_objects(live, world):
    with database.connection_context():
        exam_id = str(Exam.get(Exam.study_uid == world.study_a).id)
    routes = _uid_routes(live.server.request_callback)
    paths = {op["path"] for op in routes}
    assert len(routes) >= 30 and {"/pacs/t/{p1}", "/api/studies/{study_uid}/report.pdf",
                                  "/dicomweb/studies/{p1}/metadata"} <= paths, paths
    differ = []
    for op in routes:
        for method in ([op["method"]] + (["head"] if op["method"] == "get" else [])):
            body = {} if method not in ("get", "head", "delete") else None
            real = send(live, method, _fill(op, world, exam_id, "ACC-A"), body=body)
            fake = send(live, method, _fill(op, MISSING, "999999", "ACC-Z"), body=body)
            if (real[0], real[2]) != (fake[0], fake[2]):
                differ.append(f"{method.upper()} {op['path']}: {real[0]} {real[2][:80]!r} vs "
                              f"{fake[0]} {fake[2][:80]!r}")
    assert not differ, "\n".join(differ)


# the access log ------------------------------------------------------------------------------
def test_access_log_carries_no_token_code_patient_id_or_accession(live, world, ctx, caplog):
    """A real sequence of requests (share link and code, signed and unsigned PACS QR codes,
    a patient QR code, a doctor's patient search and history, refused ones): the captured
    log of everything (access log, handler lines) holds none of the secrets or identifiers."""
    import datetime as dt

    import requests

    from models import shares as svc
    from models.schema import Patient
    from server.handlers.shares import pacs_key
    auth = {"Authorization": f"Bearer {live.token}"}
    caplog.set_level(logging.INFO)        # log_level's default (DEBUG adds peewee's SQL)
    r = requests.post(live.url + "/api/shares", json={"study_uid": world.study_a},
                      headers=auth, timeout=30)
    assert r.status_code == 201, r.text
    token, code = r.json()["url"].rsplit("/", 1)[1], r.json()["code"]
    with database.connection_context():
        signed = svc.sign_pacs_token(pacs_key(ctx), "ACC-A",
                                     dt.datetime.utcnow() + dt.timedelta(days=1))
        pa = Patient.get(Patient.patient_id == world.patient_a)
        qr = svc.create_patient_qr(pa.id, key=ctx.secret_key, auditor=ctx.auditor).token
    s = requests.Session()
    assert s.get(f"{live.url}/s/{token}", timeout=30).status_code == 200
    assert s.post(live.url + "/api/share/status", json={"token": token},
                  timeout=30).status_code == 200
    s.get(f"{live.url}/api/share/status?token={token}&code={code}", timeout=30)   # 405
    assert s.post(live.url + "/api/share/open", json={"token": token, "code": code},
                  timeout=30).status_code == 200
    assert requests.get(f"{live.url}/s/{token[:-2]}xx", timeout=30).status_code == 200
    assert s.get(f"{live.url}/p/{qr}", timeout=30).status_code == 200
    r = requests.get(f"{live.url}/pacs/t/{signed}", allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text
    assert requests.get(f"{live.url}/pacs/t/{signed}x", allow_redirects=False,
                        timeout=30).status_code >= 400            # refused: logged too
    assert requests.get(f"{live.url}/pacs/a/ACC-A", allow_redirects=False,
                        timeout=30).status_code == 302
    for path in (f"/api/staff/patients/{world.patient_a}/exams",
                 f"/api/staff/patients?q={world.patient_a}", "/api/staff/patients?q=ACC-A",
                 f"/api/pacs/patients/{world.patient_a}/studies"):
        requests.get(live.url + path, headers=auth, timeout=30)
        requests.get(live.url + path, timeout=30)                 # anonymous: 401, logged
    text = "\n".join(f"{rec.name} {rec.getMessage()} {rec.exc_text or ''}"
                     for rec in caplog.records)
    assert "GET /s/***" in text and "GET /pacs/t/***" in text and "/patients/***" in text, text
    for secret in (token, code, signed, signed.split(".")[-1], qr, world.patient_a, "ACC-A"):
        assert secret not in text, (secret, [ln for ln in text.splitlines() if secret in ln])


# headers built from data ---------------------------------------------------------------------
def test_chinese_accession_number_downloads_over_http(live, ctx, tmp_path):
    """A HIS numbering exams 超声2026-001 (with a quote and a semicolon for good measure): the
    ZIPs of the exam, a series and an instance and the report PDF download with 200 (the
    header was a 500 before RFC 6266 filename*), each named in full."""
    from urllib.parse import unquote

    import requests

    from adapters.importer import Importer
    from tests.dicom_factory import ct_bytes
    acc = '超声2026-001;"x"'
    src = tmp_path / "zh"
    src.mkdir()
    (src / "1.dcm").write_bytes(ct_bytes(patient_id="PZH1", accession=acc, charset="ISO_IR 192",
                                         study_uid="1.2.98.1", series_uid="1.2.98.1.1",
                                         sop_uid="1.2.98.1.1.0"))
    assert Importer(ctx.catalog).run([src]).imported == 1
    with database.connection_context():
        exam = Exam.get(Exam.study_uid == "1.2.98.1")
        assert exam.accession_number == acc
        ctx.catalog.store_report(exam, findings="所见", impression="印象",
                                 pdf=b"%PDF-1.4 x\n%%EOF\n")
    doctor = {"Authorization": f"Bearer {live.token}"}
    base = "/api/download/studies/1.2.98.1"
    for path in (f"{base}.zip", f"{base}/series/1.2.98.1.1.zip",
                 f"{base}/series/1.2.98.1.1/instances/1.2.98.1.1.0.zip",
                 "/api/studies/1.2.98.1/report.pdf?download=1", "/api/studies/1.2.98.1/report.pdf"):
        for method in ("GET", "HEAD") if path.endswith(".zip") else ("GET",):
            r = requests.request(method, live.url + path, headers=doctor, timeout=60)
            assert r.status_code == 200, (method, path, r.status_code, r.text[:200])
            header = r.headers["Content-Disposition"]
            header.encode("ascii")
            star = header.split("filename*=UTF-8''", 1)[1]
            # (the ZIP layout drops quotes from file names; the PDF name keeps them)
            assert "超声2026-001;" in unquote(star), (path, header)
