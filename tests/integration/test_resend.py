"""Issue 15 item 1, "versions, not conflicts": a SOP Instance UID received again, with real
dcmtk peers (storescu, dcmodify, dcmcjpls) against our DICOM listener and with the importer.

a. the same file in another transfer syntax / file meta → a no-op success;
b. a demographic correction (dcmodify) → a new version, shown and downloaded, old file kept,
   audited, listed for staff;
c. the same file by C-STORE and then by import → a no-op;
d. other pixel data → dicom_conflict_policy: replace (default), keep_first, quarantine.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import zipfile

import pytest
from pydicom.uid import generate_uid

from models.schema import AuditEvent, Exam, Instance, InstanceVersion, Patient, Quarantine
from tests.dicom_factory import ct_bytes

from .conftest import need
from .test_dicom_scp import storescu

pytestmark = pytest.mark.db


@pytest.fixture
def scp(ctx):
    from adapters.dicom_net import DicomScp
    s = DicomScp(ctx.catalog, ae_title="CLOUDFILM", host="127.0.0.1", port=0,
                 allowed_aets=["STORESCU"], max_associations=4, fast_copies=True).start()
    yield s
    s.stop()


def send(scp, path, *extra):
    out = storescu(scp.port, [path], extra=["-v", *extra])
    return out, (out.stdout + out.stderr).lower()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


SERIES = {}


@pytest.fixture
def original(tmp_path):
    study, sop = generate_uid(), generate_uid()
    SERIES[sop] = generate_uid()
    p = tmp_path / "orig.dcm"
    p.write_bytes(ct_bytes(study_uid=study, series_uid=SERIES[sop], sop_uid=sop,
                           patient_id="PRES", name="Zhang^San"))
    return p, study, sop


def only_instance() -> Instance:
    assert Instance.select().count() == 1
    return Instance.get()


def assert_nothing_changed(first_sha: str) -> None:
    inst = only_instance()
    assert inst.sha256 == first_sha
    assert Quarantine.select().count() == 0
    assert InstanceVersion.select().count() == 0


# a. same content, another form ------------------------------------------------------------
@pytest.mark.parametrize("option", ["-xi", "-xb"])
def test_a_other_transfer_syntax_is_a_no_op_success(scp, original, ctx, option):
    path, _study, _sop = original
    out, _ = send(scp, path)
    assert out.returncode == 0, out.stderr
    first = only_instance().sha256
    out, text = send(scp, path, option)          # implicit VR / big endian: other bytes
    assert out.returncode == 0 and "store response (success)" in text, text[-800:]
    assert_nothing_changed(first)


def test_a_lossless_jpeg_ls_of_the_same_file_is_a_no_op(scp, original, tmp_path):
    path, _study, _sop = original
    jls = tmp_path / "lossless.dcm"
    subprocess.run([need("dcmcjpls"), "+el", str(path), str(jls)], check=True, timeout=60)
    assert send(scp, path)[0].returncode == 0
    first = only_instance().sha256
    out, text = send(scp, jls, "-xt")
    assert "store response (success)" in text, text[-800:]
    assert_nothing_changed(first)


def test_a_decompressed_file_after_a_compressed_one_is_a_no_op(scp, original, tmp_path):
    path, _study, _sop = original
    jls = tmp_path / "lossless.dcm"
    subprocess.run([need("dcmcjpls"), "+el", str(path), str(jls)], check=True, timeout=60)
    assert send(scp, jls, "-xt")[0].returncode == 0
    first = only_instance()
    assert first.transfer_syntax == "1.2.840.10008.1.2.4.80"
    out, text = send(scp, path)
    assert "store response (success)" in text, text[-800:]
    assert_nothing_changed(first.sha256)


# b. a demographic correction ------------------------------------------------------------------
def test_b_demographic_correction_is_a_new_version(scp, original, tmp_path, ctx, live):
    path, study, sop = original
    assert send(scp, path)[0].returncode == 0
    first = only_instance()
    first_name = live.json(f"/api/studies/{study}")[1]["patient"]["name"]
    fixed = tmp_path / "fixed.dcm"
    shutil.copy(path, fixed)
    subprocess.run([need("dcmodify"), "-nb", "-m", "(0010,0010)=Li^Si", str(fixed)],
                   check=True, timeout=60)
    out, text = send(scp, fixed)
    assert out.returncode == 0 and "store response (success)" in text, text[-800:]

    inst = only_instance()
    assert inst.sha256 != first.sha256 and inst.file_path.endswith(".v2.dcm")
    assert ctx.storage.sha256(inst.file_path) == inst.sha256
    assert ctx.storage.sha256(first.file_path) == first.sha256       # the old file is kept
    v = InstanceVersion.get()
    assert (v.number, v.change, v.changed_tags) == (1, "attributes", "PatientName")
    assert v.file_path == first.file_path and v.replaced_by_source == "dicom"
    assert "STORESCU" in v.replaced_by_origin
    assert Quarantine.select().count() == 0
    # the correction reaches the patient
    assert Patient.get(Patient.patient_id == "PRES").name == "Li Si"
    # audited, names of attributes only
    ev = AuditEvent.get(AuditEvent.action == "instance.version")
    assert ev.actor_kind == "system" and "STORESCU" in ev.actor_id
    assert ev.object_id == sop and "PatientName" in ev.detail and "Li" not in ev.detail

    series = inst.series.series_uid
    # the study as a viewer gets it: the corrected name (masked as staff see it)
    status, doc = live.json(f"/api/studies/{study}")
    assert status == 200 and doc["patient"]["name"] in ("Li Si", "L*", "L**", "L* Si")
    assert doc["patient"]["name"] != first_name
    # download serves the new version
    status, _h, body = live.get(f"/api/download/studies/{study}/series/{series}"
                                f"/instances/{sop}.zip")
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        hashes = {sha(z.read(n)) for n in z.namelist()}
    assert inst.sha256 in hashes and first.sha256 not in hashes
    # staff see the versions (a doctor may read the exam)
    status, doc = live.json(f"/api/staff/studies/{study}/versions")
    assert status == 200, doc
    [one] = doc["instances"]
    assert one["sop_uid"] == sop
    cur, old = one["versions"]
    assert cur["current"] and cur["number"] == 2 and cur["changed"] == ["PatientName"]
    assert cur["source"] == "dicom" and not old["current"] and old["file_kept"]
    assert "Li" not in json.dumps(doc)
    status, doc = live.json(f"/api/staff/studies/{study}/versions?sop={generate_uid()}")
    assert status == 200 and doc["instances"] == []
    status, _doc = live.json(f"/api/staff/studies/{study}/versions", auth=False)
    assert status == 401


def test_b_second_correction_keeps_the_chain(scp, original, tmp_path):
    path, study, sop = original
    assert send(scp, path)[0].returncode == 0
    for i, (tag, value) in enumerate([("(0008,1030)", "CT chest corrected"),
                                      ("(0010,0040)", "F")]):
        f = tmp_path / f"fix{i}.dcm"
        shutil.copy(path if i == 0 else tmp_path / "fix0.dcm", f)
        subprocess.run([need("dcmodify"), "-nb", "-m", f"{tag}={value}", str(f)], check=True,
                       timeout=60)
        assert "store response (success)" in send(scp, f)[1]
    assert [v.changed_tags for v in InstanceVersion.select().order_by(InstanceVersion.number)] \
        == ["StudyDescription", "PatientSex"]
    assert only_instance().file_path.endswith(".v3.dcm")
    exam = Exam.get(Exam.study_uid == study)
    assert exam.description == "CT chest corrected" and exam.patient.sex == "F"
    # the same corrected file again: a no-op
    assert "store response (success)" in send(scp, tmp_path / "fix1.dcm")[1]
    assert InstanceVersion.select().count() == 2


def test_b_patient_id_change_is_not_applied(scp, original, tmp_path):
    path, _study, sop = original
    assert send(scp, path)[0].returncode == 0
    f = tmp_path / "moved.dcm"
    shutil.copy(path, f)
    subprocess.run([need("dcmodify"), "-nb", "-m", "(0010,0020)=OTHER", str(f)], check=True,
                   timeout=60)
    out, text = send(scp, f)
    assert "error" in text and "store response (success)" not in text
    assert Quarantine.select().where(Quarantine.reason.contains("PatientID")).exists()
    assert InstanceVersion.select().count() == 0


# c. C-STORE, then import --------------------------------------------------------------------
def test_c_cstore_then_import_is_a_no_op(scp, original, ctx):
    from adapters.importer import Importer
    path, _study, _sop = original
    assert send(scp, path)[0].returncode == 0
    stored = only_instance()
    assert ctx.storage.read(stored.file_path) != path.read_bytes()   # file meta differs
    summary = Importer(ctx.catalog).run([path])
    assert (summary.imported, summary.already_present, summary.rejected) == (0, 1, [])
    assert_nothing_changed(stored.sha256)


def test_c_import_of_a_corrected_file_is_a_version(scp, original, ctx, tmp_path):
    from adapters.importer import Importer
    path, _study, _sop = original
    assert send(scp, path)[0].returncode == 0
    f = tmp_path / "fixed.dcm"
    shutil.copy(path, f)
    subprocess.run([need("dcmodify"), "-nb", "-m", "(0010,0010)=Wang^Wu", str(f)],
                   check=True, timeout=60)
    summary = Importer(ctx.catalog).run([f])
    assert (summary.imported, summary.versions) == (1, 1)
    v = InstanceVersion.get()
    assert v.replaced_by_source == "import" and v.replaced_by_origin == "fixed.dcm"


# d. other pixel data -------------------------------------------------------------------------
def pixels_changed(tmp_path, study, sop, value=7):
    """The same instance with edited pixels (every attribute as in `original`)."""
    p = tmp_path / f"pixels{value}.dcm"
    p.write_bytes(ct_bytes(study_uid=study, series_uid=SERIES[sop], sop_uid=sop,
                           patient_id="PRES", name="Zhang^San", pixel_value=value))
    return p


def render(live, inst: Instance) -> bytes:
    s = inst.series
    status, _h, body = live.get(f"/dicomweb/studies/{s.exam.study_uid}/series/{s.series_uid}"
                                f"/instances/{inst.sop_uid}/rendered?format=png"
                                f"&window=0,4000")
    assert status == 200, body[:200]
    return body


def test_d_other_pixels_replace_by_default(scp, original, tmp_path, ctx, live):
    path, study, sop = original
    assert ctx.config.dicom_conflict_policy == "replace"
    assert send(scp, path)[0].returncode == 0
    first = only_instance()
    before = render(live, first)
    p = pixels_changed(tmp_path, study, sop)
    out, text = send(scp, p)
    assert "store response (success)" in text, text[-800:]
    inst = only_instance()
    assert inst.sha256 != first.sha256 and inst.file_path.endswith(".v2.dcm")
    v = InstanceVersion.get()
    assert v.change == "pixels" and ctx.storage.sha256(v.file_path) == first.sha256
    after = render(live, inst)                   # no cache serves the old pixels
    assert after != before


def test_d_lossy_recompression_is_other_pixels(scp, original, tmp_path, ctx):
    path, _study, _sop = original
    # near-lossless JPEG-LS needs unsigned pixels: the original says so (the same values)
    subprocess.run([need("dcmodify"), "-nb", "-m", "(0028,0103)=0", "-m", "(0028,1052)=0",
                    str(path)], check=True, timeout=60)
    lossy = tmp_path / "lossy.dcm"
    subprocess.run([need("dcmcjpls"), "+en", "+md", "8", "+un", str(path), str(lossy)],
                   check=True, timeout=60)
    assert send(scp, path)[0].returncode == 0
    out, text = send(scp, lossy, "-xu")
    assert "store response (success)" in text, text[-800:]
    v = InstanceVersion.get()
    assert v.change == "pixels"
    assert only_instance().transfer_syntax == "1.2.840.10008.1.2.4.81"


def test_d_keep_first_answers_a_warning_and_keeps_the_first(scp, original, tmp_path, ctx):
    path, study, sop = original
    ctx.config.set_base(dicom_conflict_policy="keep_first")
    assert send(scp, path)[0].returncode == 0
    first = only_instance()
    p = pixels_changed(tmp_path, study, sop)
    out, text = send(scp, p)
    assert out.returncode == 0 and "store response (warning" in text, text[-800:]
    assert only_instance().sha256 == first.sha256
    assert InstanceVersion.select().count() == 0
    q = Quarantine.get()
    assert "keep_first" in q.reason and sop in q.reason
    ev = AuditEvent.get(AuditEvent.action == "instance.resend_refused")
    assert ev.actor_kind == "system" and ev.outcome == "refused" and ev.object_id == sop


def test_d_quarantine_policy_is_todays_refusal(scp, original, tmp_path, ctx):
    path, study, sop = original
    ctx.config.set_base(dicom_conflict_policy="quarantine")
    assert send(scp, path)[0].returncode == 0
    first = only_instance()
    out, text = send(scp, pixels_changed(tmp_path, study, sop))
    assert "store response (error" in text, text[-800:]        # 0xC002 (dcmtk: "error")
    assert only_instance().sha256 == first.sha256
    assert Quarantine.select().where(Quarantine.reason.contains(sop)).exists()
    assert InstanceVersion.select().count() == 0


# retention, migration ---------------------------------------------------------------------------
def test_prune_removes_old_files_only_after_retention(scp, original, tmp_path, ctx):
    import datetime as dt

    from models.schema import utcnow
    from models.versions import prune_versions
    from server.maintenance import prune_versions_once
    path, _study, _sop = original
    assert send(scp, path)[0].returncode == 0
    f = tmp_path / "fixed.dcm"
    shutil.copy(path, f)
    subprocess.run([need("dcmodify"), "-nb", "-m", "(0010,0010)=Li^Si", str(f)], check=True,
                   timeout=60)
    send(scp, f)
    v = InstanceVersion.get()
    assert prune_versions_once(ctx) == 0                       # 365 days: kept
    assert prune_versions(ctx.storage, 0, now=utcnow() + dt.timedelta(days=9999)) == 0
    assert prune_versions(ctx.storage, 30, now=utcnow() + dt.timedelta(days=31)) == 1
    assert not ctx.storage.exists(v.file_path)
    assert InstanceVersion.get().file_removed_at is not None
    assert ctx.storage.exists(only_instance().file_path)       # the current file stays


def test_migration_0052_down_and_up_again(ctx):
    from models.db import database
    from models.migrations import migrate, rollback
    assert database.table_exists("instance_version")
    rollback(51)
    assert not database.table_exists("instance_version")
    from models.migrations import m0052_instance_versions as m
    assert migrate() == ["m0052_instance_versions"] or database.table_exists("instance_version")
    m.up(database)                                           # idempotent
    assert database.table_exists("instance_version")
