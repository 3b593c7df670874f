"""Our DICOM listener with dcmtk's echoscu and storescu: every storage class, compressed
syntaxes as sent, allow-listed calling AE titles, broken files answered with a failure and
kept, several associations at once, encapsulated PDF as the exam's report."""
from __future__ import annotations

import hashlib
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydicom.uid import generate_uid

from models.schema import Exam, Instance, Quarantine, Report
from tests.conftest import corpus_files
from tests.dicom_factory import ct_bytes, ct_dataset, encapsulated_pdf, to_bytes

from .conftest import need

pytestmark = pytest.mark.db


@pytest.fixture
def scp(ctx):
    from adapters.dicom_net import DicomScp
    s = DicomScp(ctx.catalog, ae_title="CLOUDFILM", host="127.0.0.1", port=0,
                 allowed_aets=["STORESCU", "ECHOSCU", "MODALITY1", "ORTHANC"],
                 max_associations=8, fast_copies=False).start()
    yield s
    s.stop()


def storescu(port, files, aet="STORESCU", extra=()):
    return subprocess.run([need("storescu"), "-aet", aet, "-aec", "CLOUDFILM", "-nh", *extra,
                           "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def test_echoscu(scp):
    out = subprocess.run([need("echoscu"), "-aet", "ECHOSCU", "-aec", "CLOUDFILM",
                          "127.0.0.1", str(scp.port)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr


def test_unknown_calling_ae_is_refused_and_logged(scp):
    out = subprocess.run([need("echoscu"), "-aet", "INTRUDER", "-aec", "CLOUDFILM",
                          "127.0.0.1", str(scp.port)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode != 0
    import time

    from models.integration import IntegrationEvent
    for _ in range(50):      # recorded by the association thread as it ends
        ev = IntegrationEvent.get_or_none(IntegrationEvent.channel == "dicom")
        if ev is not None:
            break
        time.sleep(0.1)
    assert ev.outcome == "rejected" and "INTRUDER" in ev.peer
    # and the listener still answers
    assert subprocess.run([need("echoscu"), "-aet", "ECHOSCU", "-aec", "CLOUDFILM",
                           "127.0.0.1", str(scp.port)], timeout=30).returncode == 0


PROPOSE = {"1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
           "1.2.840.10008.1.2.4.57": "-xs", "1.2.840.10008.1.2.4.70": "-xs",
           "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
           "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
           "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.1.99": "-xd",
           "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2": "-xi",
           "1.2.840.10008.1.2.2": "-xb"}


def test_storescu_real_corpus_compressed_as_sent(scp, tmp_path):
    """pydicom-data's files (JPEG, JPEG-LS, JPEG 2000, RLE, deflate, big endian; CT, MR,
    US, RF, SC …) sent with storescu proposing each file's own transfer syntax: they are
    kept as sent, never transcoded."""
    import pydicom
    groups, expected = {}, {}
    for f in corpus_files():
        try:
            ds = pydicom.dcmread(f)
        except Exception:
            continue
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if ts not in PROPOSE or "PixelData" not in ds or not ds.get("PatientID") \
                or not ds.get("StudyInstanceUID") or not ds.get("SOPInstanceUID"):
            continue
        uid = str(ds.SOPInstanceUID)
        if uid in expected or "too_short" in f.name:
            continue
        expected[uid] = ts
        groups.setdefault(ts, []).append(f)
    for ts, files in groups.items():
        storescu(scp.port, files, extra=["-R", PROPOSE[ts]])
    stored = {i.sop_uid: i.transfer_syntax for i in Instance.select()}
    compressed = {ts for ts in stored.values() if ts not in ("1.2.840.10008.1.2",
                                                              "1.2.840.10008.1.2.1",
                                                              "1.2.840.10008.1.2.2")}
    assert len(stored) >= 20
    assert len(compressed) >= 4, compressed
    for uid, ts in stored.items():
        assert ts == expected[uid]          # kept as sent, not transcoded


def test_success_only_when_stored_and_sha_matches(scp, tmp_path, ctx):
    study = generate_uid()
    paths = []
    for i in range(5):
        p = tmp_path / f"ct{i}.dcm"
        p.write_bytes(ct_bytes(study_uid=study, z=float(i), patient_id="PSCP",
                               name="王^小明", charset="ISO_IR 192"))
        paths.append(p)
    out = storescu(scp.port, paths)
    assert out.returncode == 0, out.stderr
    exam = Exam.get(Exam.study_uid == study)
    assert exam.num_instances == 5 and exam.patient.name == "王小明"
    for inst in Instance.select():
        data = ctx.storage.abspath(inst.file_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == inst.sha256
    # sending again is a no-op answered with success
    assert storescu(scp.port, paths).returncode == 0
    assert Instance.select().count() == 5


def test_broken_file_answers_failure_and_is_quarantined(scp, tmp_path):
    ds = ct_dataset(patient_id="PBAD")
    ds.PixelData = ds.PixelData[:100]          # truncated pixel data
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(to_bytes(ds))
    ds2 = ct_dataset(patient_id="")            # no Patient ID
    nopid = tmp_path / "nopid.dcm"
    nopid.write_bytes(to_bytes(ds2))
    good = tmp_path / "good.dcm"
    good.write_bytes(ct_bytes(patient_id="PGOOD"))
    out = storescu(scp.port, [bad, nopid, good], extra=["-v"])
    text = (out.stdout + out.stderr).lower()
    assert text.count("store response (error: cannotunderstand)") == 2, text
    reasons = [q.reason for q in Quarantine.select()]
    assert any("truncated" in r for r in reasons), reasons
    assert any("Patient ID" in r for r in reasons), reasons
    assert Instance.select().count() == 1      # the good one, on the same association


def test_conflicting_content_for_same_uid_is_refused(scp, tmp_path, ctx):
    """Under dicom_conflict_policy = quarantine (the other policies: test_resend.py)."""
    ctx.config.set_base(dicom_conflict_policy="quarantine")
    uid = generate_uid()
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    a.write_bytes(ct_bytes(sop_uid=uid, pixel_value=1))
    b.write_bytes(ct_bytes(sop_uid=uid, pixel_value=2))
    assert storescu(scp.port, [a]).returncode == 0
    storescu(scp.port, [b])
    assert Instance.select().count() == 1
    assert Quarantine.select().where(Quarantine.reason.contains(uid)).exists()


def test_several_associations_at_once(scp, tmp_path):
    study = generate_uid()
    groups = []
    for g in range(4):
        d = tmp_path / f"g{g}"
        d.mkdir()
        for i in range(10):
            (d / f"{i}.dcm").write_bytes(ct_bytes(study_uid=study, z=float(g * 10 + i)))
        groups.append(sorted(d.iterdir()))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda fs: storescu(scp.port, fs, aet="MODALITY1"), groups))
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    exam = Exam.get(Exam.study_uid == study)
    assert exam.num_instances == 40 and Instance.select().count() == 40


def test_encapsulated_pdf_becomes_the_report(scp, tmp_path, ctx):
    from tests.integration.hl7_samples import report_pdf
    study = generate_uid()
    img = tmp_path / "img.dcm"
    img.write_bytes(ct_bytes(study_uid=study, patient_id="PPDF"))
    pdf = report_pdf("A001")
    ds = encapsulated_pdf(study, pdf, patient_id="PPDF")
    doc = tmp_path / "report.dcm"
    doc.write_bytes(to_bytes(ds))
    out = storescu(scp.port, [img, doc])
    assert out.returncode == 0, out.stderr
    r = Report.get(Report.exam == Exam.get(Exam.study_uid == study))
    assert ctx.storage.abspath(r.pdf_path).read_bytes() == pdf
