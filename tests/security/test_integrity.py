"""Integrity of stored originals: a changed or missing file is refused on read, found by the
scrub, recorded once, audited and shown to admins; never served silently."""
import pytest

from models.db import database
from models.schema import AuditEvent, Instance
from models.security import IntegrityFinding
from server.maintenance import scrub_once
from tests.conftest import staff_headers
from tests.dicom_factory import ct_bytes

pytestmark = pytest.mark.db

STUDY, SERIES = "1.2.77.1", "1.2.77.2"


def _import(catalog, tmp_path, n=3):
    from adapters.importer import Importer
    for i in range(n):
        (tmp_path / f"{i}.dcm").write_bytes(ct_bytes(study_uid=STUDY, series_uid=SERIES,
                                                     sop_uid=f"1.2.77.3.{i}"))
    Importer(catalog).run([tmp_path])


def _frame(i):
    return (f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/1.2.77.3.{i}/frames/1/"
            "rendered")


def test_tampered_original_is_refused_and_reported(live, ctx, catalog, tmp_path):
    _import(catalog, tmp_path)
    assert live.get(_frame(0))[0] == 200
    with database.connection_context():
        rows = {r.sop_uid: r for r in Instance.select()}
    # flip one byte in the pixel data of instance 1, delete instance 2
    p1 = ctx.storage.abspath(rows["1.2.77.3.1"].file_path)
    data = bytearray(p1.read_bytes())
    data[-10] ^= 0xFF
    p1.write_bytes(bytes(data))
    ctx.storage.abspath(rows["1.2.77.3.2"].file_path).unlink()

    st, _, body = live.get(_frame(1))
    assert st == 503 and b"integrity" in body and b"Traceback" not in body
    assert live.get(_frame(2))[0] == 503
    assert live.get(_frame(0))[0] == 200            # untouched files still served
    with database.connection_context():
        found = {f.object_id: f for f in IntegrityFinding.select()}
    assert set(found) == {"1.2.77.3.1", "1.2.77.3.2"}
    assert found["1.2.77.3.2"].actual_sha256 == "" and found["1.2.77.3.1"].source == "read"

    # the scrub finds the same two (and records nothing twice)
    res = scrub_once(ctx)
    assert res == {**res, "checked": 3, "mismatches": 2}
    with database.connection_context():
        assert IntegrityFinding.select().count() == 2
        audits = AuditEvent.select().where(AuditEvent.action == "integrity.mismatch").count()
    assert audits == 2

    # admins see the findings; a doctor does not
    admin = staff_headers("sys1", ("sysadmin",))        # admins sign in; no API token
    st, _, body = live.get("/api/security/integrity", headers=admin, auth=False)
    import json
    findings = json.loads(body)["findings"]
    assert st == 200 and {f["object_id"] for f in findings} == {"1.2.77.3.1", "1.2.77.3.2"}
    assert live.get("/api/security/integrity")[0] == 403
    fid = findings[0]["id"]
    st, _, _ = live.request("POST", f"/api/security/integrity/{fid}/resolve",
                            headers=admin, auth=False)
    assert st == 200
    st, _, body = live.get("/api/security/integrity", headers=admin, auth=False)
    assert len(json.loads(body)["findings"]) == 1


def test_scrub_checks_report_pdfs(ctx, catalog, tmp_path):
    _import(catalog, tmp_path, n=1)
    from models.schema import Exam, Report
    with database.connection_context():
        exam = Exam.get(Exam.study_uid == STUDY)
    catalog.store_report(exam, findings="f", impression="i", pdf=b"%PDF-1.4 test\n%%EOF\n")
    assert scrub_once(ctx)["mismatches"] == 0
    with database.connection_context():
        rep = Report.get(Report.exam == exam)
    ctx.storage.abspath(rep.pdf_path).write_bytes(b"%PDF-1.4 forged\n%%EOF\n")
    assert scrub_once(ctx)["mismatches"] == 1
    with database.connection_context():
        f = IntegrityFinding.get()
    assert f.kind == "report" and f.source == "scrub"


def test_download_refuses_tampered_original(live, ctx, catalog, tmp_path):
    _import(catalog, tmp_path)
    with database.connection_context():
        row = Instance.get(Instance.sop_uid == "1.2.77.3.1")
    p = ctx.storage.abspath(row.file_path)
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    st, _, body = live.get(f"/api/download/studies/{STUDY}/series/{SERIES}/instances/"
                           "1.2.77.3.1.zip")
    assert st == 503 and bytes(data) not in body, st


def test_a_byte_flipped_after_the_first_view_is_caught_and_the_exam_zip_leaves_it_out(
        live, ctx, catalog, tmp_path):
    """Was (issue 17): the original was hashed once per process, so a byte flipped after the
    first view was still delivered by the single-image ZIP; and one bad file made the whole
    exam's ZIP a 503."""
    import io
    import zipfile
    _import(catalog, tmp_path)
    one = f"/api/download/studies/{STUDY}/series/{SERIES}/instances/1.2.77.3.1.zip"
    assert live.get(_frame(1))[0] == 200 and live.get(one)[0] == 200      # checked once
    with database.connection_context():
        row = Instance.get(Instance.sop_uid == "1.2.77.3.1")
    p = ctx.storage.abspath(row.file_path)
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    with open(p, "r+b") as fh:                     # in place: same inode, same size
        fh.write(bytes(data))
    st, _, body = live.get(one)
    assert st == 503 and bytes(data) not in body
    assert live.get(_frame(1))[0] in (200, 503)   # a frame rendered before may be cached
    st, hdrs, body = live.get(f"/api/download/studies/{STUDY}.zip")
    assert st == 200
    z = zipfile.ZipFile(io.BytesIO(body))
    assert z.testzip() is None
    names = z.namelist()
    note = z.read("MISSING.TXT").decode("utf-8-sig")
    assert "1.2.77.3.1" in note and "已损坏或缺失" in note
    dicoms = [n for n in names if n not in ("DICOMDIR", "MISSING.TXT")]
    assert len(dicoms) == 2 and bytes(data) not in body
    with database.connection_context():
        assert {f.object_id for f in IntegrityFinding.select()} == {"1.2.77.3.1"}
    # the series archive as well; and once repaired, the file is back
    data[-10] ^= 0xFF
    with open(p, "r+b") as fh:
        fh.write(bytes(data))
    st, _, body = live.get(f"/api/download/studies/{STUDY}.zip")
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert st == 200 and "MISSING.TXT" not in names and len(names) == 4


def test_scrub_is_throttled_and_due_after_the_last_pass_not_after_every_start(ctx, catalog,
                                                                             tmp_path):
    """Was (issue 17): every start began a pass 600 s later, at full speed, in a request
    pool's database thread."""
    import datetime as dt

    from models.clock import utcnow
    from server.maintenance import FIRST_SCRUB_DELAY_S, next_scrub_in
    _import(catalog, tmp_path)
    assert next_scrub_in(24) == FIRST_SCRUB_DELAY_S          # never ran anywhere
    with database.connection_context():
        total = sum(r.file_size for r in Instance.select())
    rate = total / 0.6                                         # the three files in >= 0.6 s
    t0 = __import__("time").monotonic()
    assert scrub_once(ctx, bytes_per_s=rate)["checked"] == 3
    assert __import__("time").monotonic() - t0 >= 0.5
    # the next pass is due a day after this one, wherever and however often nodes restart
    assert 24 * 3600 - 60 < next_scrub_in(24) <= 24 * 3600
    later = utcnow() + dt.timedelta(hours=30)                  # overdue: soon after start
    assert next_scrub_in(24, now=later) == FIRST_SCRUB_DELAY_S
    with database.connection_context():
        rec = AuditEvent.select().where(AuditEvent.action == "integrity.scrub").get()
    assert rec.detail.startswith("3 files checked, 0 problems")
