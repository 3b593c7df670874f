import threading

import pytest

from adapters.dicom_meta import extract_meta
from models.catalog import (ALREADY_PRESENT, CONFLICT, REJECTED, STORED, CatalogError,
                            mask_id_number, mask_phone, validate_id_number)
from models.schema import Exam, Instance, Patient, Quarantine, Series
from tests.dicom_factory import ct_bytes

pytestmark = pytest.mark.db


def store(catalog, data):
    meta, _ = extract_meta(data)
    return catalog.store_instance(meta, data)


def test_store_then_same_again_is_a_noop(catalog):
    data = ct_bytes()
    r1 = store(catalog, data)
    assert r1.outcome == STORED
    inst = Instance.get(Instance.sop_uid == r1.sop_uid)
    assert catalog.storage.abspath(inst.file_path).read_bytes() == data
    import hashlib
    assert inst.sha256 == hashlib.sha256(data).hexdigest()
    assert store(catalog, data).outcome == ALREADY_PRESENT
    assert Instance.select().count() == 1
    exam = Exam.get()
    assert exam.num_instances == 1 and exam.num_series == 1 and exam.category == "radiology"


def test_different_bytes_same_sop_uid_is_quarantined_not_overwritten(catalog):
    """dicom_conflict_policy = quarantine (replace and keep_first: test_resend.py)."""
    catalog.config.set_base(dicom_conflict_policy="quarantine")
    uids = dict(sop_uid="1.2.3.4.5", study_uid="1.2.3.4", series_uid="1.2.3.4.1")
    a = ct_bytes(pixel_value=1, **uids)
    b = ct_bytes(pixel_value=2, **uids)
    assert store(catalog, a).outcome == STORED
    r = store(catalog, b)
    assert r.outcome == CONFLICT and "different pixel data" in r.reason
    inst = Instance.get()
    assert catalog.storage.abspath(inst.file_path).read_bytes() == a
    q = Quarantine.get()
    assert catalog.storage.abspath(q.file_path).read_bytes() == b


def test_missing_patient_id_is_rejected_and_kept(catalog):
    r = store(catalog, ct_bytes(patient_id=""))
    assert r.outcome == REJECTED and "Patient ID" in r.reason
    assert Instance.select().count() == 0 and Quarantine.select().count() == 1


def test_failed_index_leaves_no_orphan_file(catalog, monkeypatch):
    data = ct_bytes()
    meta, _ = extract_meta(data)

    def boom(*a, **k):
        raise RuntimeError("database went away")
    monkeypatch.setattr(catalog, "_index_instance", boom)
    with pytest.raises(RuntimeError):
        catalog.store_instance(meta, data)
    files = list((catalog.storage.root / "dicom").rglob("*.dcm"))
    assert files == [] and Instance.select().count() == 0


def test_concurrent_stores_of_one_series(catalog):
    study, series = "1.2.9.1", "1.2.9.2"
    blobs = [ct_bytes(study_uid=study, series_uid=series, sop_uid=f"1.2.9.3.{i}", z=i)
             for i in range(12)]
    errors = []

    def worker(chunk):
        from models.db import database
        try:
            with database.connection_context():
                for d in chunk:
                    store(catalog, d)
                    store(catalog, d)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(blobs[i::3],)) for i in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert Instance.select().count() == 12
    assert Series.get().num_instances == 12
    assert Exam.get().num_instances == 12 and Exam.get().num_series == 1
    assert Patient.select().count() == 1


def test_find_studies_filters(catalog):
    store(catalog, ct_bytes(patient_id="P1", name="张^伟", charset="ISO_IR 192",
                            accession="ACC1", study_date="20260312"))
    store(catalog, ct_bytes(patient_id="P1", name="张^伟", charset="ISO_IR 192",
                            accession="ACC2", study_date="20261020"))
    store(catalog, ct_bytes(patient_id="P2", name="李^秀英", charset="ISO_IR 192",
                            accession="ACC3", study_date="20260601", modality="US"))
    r = catalog.find_studies()
    assert r["total"] == 3
    assert [s["exam_date"] for s in r["studies"]] == ["2026-10-20", "2026-06-01", "2026-03-12"]
    assert catalog.find_studies(patient_id="P1")["total"] == 2
    assert catalog.find_studies(accession="ACC3")["studies"][0]["category"] == "ultrasound"
    assert catalog.find_studies(name="秀")["total"] == 1
    assert catalog.find_studies(name="%")["total"] == 0
    assert catalog.find_studies(date_from="2026-06-01")["total"] == 2
    assert catalog.find_studies(date_from="2026-01-01", date_to="2026-06-30")["total"] == 2
    assert catalog.find_studies(category="ultrasound")["total"] == 1
    assert catalog.find_studies(per_page=1, page=2)["studies"][0]["exam_date"] == "2026-06-01"
    for bad in (dict(category="x"), dict(date_from="yesterday"), dict(page=0),
                dict(per_page=10000), dict(date_from="2026-02-01", date_to="2026-01-01")):
        with pytest.raises(CatalogError):
            catalog.find_studies(**bad)


def test_get_study_lists_series_instances_and_report(catalog):
    study = "1.2.7.1"
    for i in range(3):
        store(catalog, ct_bytes(study_uid=study, series_uid="1.2.7.2", sop_uid=f"1.2.7.3.{i}",
                                z=float(i)))
    exam = Exam.get()
    pdf = b"%PDF-1.4\n%test\n%%EOF\n"
    catalog.store_report(exam, findings="双肺纹理清晰", impression="未见异常", pdf=pdf,
                         author="王医生")
    s = catalog.get_study(study)
    assert s["series"][0]["num_instances"] == 3
    assert s["series"][0]["instances"][0]["image_position"] == [0.0, 0.0, 0.0]
    assert s["report"]["findings"] == "双肺纹理清晰" and s["report"]["has_pdf"]
    assert s["status"] == "reported"
    with pytest.raises(CatalogError):
        catalog.store_report(exam, pdf=b"<html>not a pdf")


def test_id_number_rules(catalog):
    assert validate_id_number("11010519491231002x") == "11010519491231002X"
    with pytest.raises(CatalogError):
        validate_id_number("110105194912310021")     # wrong check digit
    with pytest.raises(CatalogError):
        validate_id_number("12345")
    assert mask_id_number("44200019900101123X") == "4420**********123X"
    assert mask_phone("13812341234") == "138****1234"
    h1 = catalog.id_number_hash("11010519491231002X")
    assert len(h1) == 64 and "1101" not in h1
    assert h1 == catalog.id_number_hash("11010519491231002x")


def test_migrations_roll_back_and_forward(ctx):
    from models.db import database
    from models.migrations import current_version, migrate, rollback
    assert current_version() >= 2
    rollback(0)
    assert not database.table_exists("exam")
    migrate()
    assert database.table_exists("exam") and current_version() >= 2
    migrate()   # idempotent
