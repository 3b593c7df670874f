"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS, CORS) against a live server with a real client,
dicomweb-client, authenticated by a staff API token."""
from __future__ import annotations

import shutil

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from adapters.importer import Importer
from models.db import write_transaction
from models.schema import Exam, Patient
from tests.access.conftest import create_share, open_share, people, verify  # noqa: F401
from tests.conftest import corpus_dir
from tests.dicom_factory import ct_bytes, to_bytes, ct_dataset

pytestmark = pytest.mark.db

STUDY_A = "1.2.88.1"
SERIES_A = "1.2.88.1.1"
SOPS_A = ["1.2.88.1.1.1", "1.2.88.1.1.2"]
STUDY_B = "1.2.89.1"
SERIES_B = "1.2.89.1.1"
J2K = "MR2_J2KR.dcm"


@pytest.fixture
def data(catalog, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k, sop in enumerate(SOPS_A):
        ds = ct_dataset(patient_id="PA1", name="张^伟", charset="ISO_IR 192",
                        study_uid=STUDY_A, series_uid=SERIES_A, sop_uid=sop,
                        accession="ACC-A1", z=float(k), size=16, study_date="20260312")
        ds.InstanceNumber = k + 1
        (src / f"a{k}.dcm").write_bytes(to_bytes(ds))
    (src / "b.dcm").write_bytes(ct_bytes(
        patient_id="PB2", name="Wang^Fang", study_uid=STUDY_B, series_uid=SERIES_B,
        sop_uid="1.2.89.1.1.1", accession="ACC-B1", modality="MR", study_date="20250101"))
    shutil.copy(corpus_dir() / J2K, src / J2K)
    summary = Importer(catalog).run([src])
    assert summary.imported == 4
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    return files


def client(live, token=None):
    return DICOMwebClient(url=live.url + "/dicomweb",
                          headers={"Authorization": f"Bearer {token or live.token}"})


def uids(results, tag="0020000D"):
    return sorted(r[tag]["Value"][0] for r in results)


def test_qido_filters(live, data):
    c = client(live)
    j2k = pydicom.dcmread(corpus_dir() / J2K, stop_before_pixels=True)
    assert len(c.search_for_studies()) == 3
    assert uids(c.search_for_studies(search_filters={"PatientID": "PA1"})) == [STUDY_A]
    assert uids(c.search_for_studies(search_filters={"PatientName": "张*"})) == [STUDY_A]
    assert uids(c.search_for_studies(search_filters={"PatientName": "Wa?g*"})) == [STUDY_B]
    assert uids(c.search_for_studies(search_filters={"StudyDate": "20260312"})) == [STUDY_A]
    assert STUDY_B in uids(c.search_for_studies(search_filters={"StudyDate": "20240101-20251231"}))
    assert STUDY_A not in uids(c.search_for_studies(search_filters={"StudyDate": "-20251231"}))
    assert uids(c.search_for_studies(search_filters={"AccessionNumber": "ACC-B1"})) == [STUDY_B]
    assert uids(c.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == sorted(
        [STUDY_B, str(j2k.StudyInstanceUID)])
    assert uids(c.search_for_studies(
        search_filters={"StudyInstanceUID": f"{STUDY_A},{STUDY_B}"})) == [STUDY_A, STUDY_B]
    assert len(c.search_for_studies(limit=2)) == 2
    assert len(c.search_for_studies(limit=2, offset=2)) == 1
    # Chinese name: the Alphabetic group as stored (what viewers show) and the Ideographic
    a = c.search_for_studies(search_filters={"PatientID": "PA1"})[0]
    assert a["00100010"]["Value"][0] == {"Alphabetic": "张伟", "Ideographic": "张伟"}
    b = c.search_for_studies(search_filters={"PatientID": "PB2"})[0]
    assert b["00100010"]["Value"][0]["Alphabetic"].replace(" ", "^") == "Wang^Fang"
    assert "00080080" not in a
    assert "00080080" in c.search_for_studies(search_filters={"PatientID": "PA1"},
                                              fields=["all"])[0]
    # series and instances
    assert uids(c.search_for_series(STUDY_A), "0020000E") == [SERIES_A]
    assert uids(c.search_for_series(search_filters={"Modality": "MR"}), "0020000E") == sorted(
        [SERIES_B, str(j2k.SeriesInstanceUID)])
    assert uids(c.search_for_series(search_filters={"SeriesInstanceUID": SERIES_A}),
                "0020000E") == [SERIES_A]
    assert uids(c.search_for_instances(STUDY_A, SERIES_A), "00080018") == SOPS_A
    assert uids(c.search_for_instances(search_filters={"PatientID": "PA1"}),
                "00080018") == SOPS_A
    assert len(c.search_for_instances()) == 4
    # bad input is a 400, not a 500
    for q in ("StudyDate=2026", "StudyInstanceUID=abc", "limit=0", "limit=x"):
        assert live.get(f"/dicomweb/studies?{q}")[0] == 400, q


def test_wado_retrieve_metadata_frames(live, data):
    c = client(live)
    ds = c.retrieve_instance(STUDY_A, SERIES_A, SOPS_A[0])
    assert ds.SOPInstanceUID == SOPS_A[0]
    # byte-identical with transfer-syntax=*
    status, hdrs, body = live.get(
        f"/dicomweb/studies/{STUDY_A}/series/{SERIES_A}/instances/{SOPS_A[0]}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert status == 200 and data["a0.dcm"] in body
    j2k = pydicom.dcmread(corpus_dir() / J2K, stop_before_pixels=True)
    st, se, sop = (str(j2k.StudyInstanceUID), str(j2k.SeriesInstanceUID),
                   str(j2k.SOPInstanceUID))
    status, hdrs, body = live.get(
        f"/dicomweb/studies/{st}/series/{se}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert status == 200 and data[J2K] in body
    # without transfer-syntax=*: explicit VR little endian, still the same instance
    le = c.retrieve_instance(st, se, sop,
                             media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert le.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert le.SOPInstanceUID == sop
    # metadata with a BulkDataURI for the pixels
    meta = c.retrieve_series_metadata(STUDY_A, SERIES_A)
    assert len(meta) == 2 and "BulkDataURI" in meta[0]["7FE00010"]
    assert "张^伟" in str(meta[0]["00100010"]["Value"][0])       # as stored in the file
    assert len(c.retrieve_study_metadata(STUDY_A)) == 2
    # uncompressed frame
    frames = c.retrieve_instance_frames(STUDY_A, SERIES_A, SOPS_A[0], frame_numbers=[1])
    ref = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data["a0.dcm"]))
    assert frames[0] == ref.PixelData
    # the stored J2K frame, as stored
    frames = c.retrieve_instance_frames(st, se, sop, frame_numbers=[1],
                                        media_types=(("image/jp2", "1.2.840.10008.1.2.4.90"),))
    full = pydicom.dcmread(corpus_dir() / J2K)
    from pydicom.encaps import generate_frames
    assert frames[0] == next(generate_frames(full.PixelData, number_of_frames=1))
    # ... and decoded to octet-stream
    frames = c.retrieve_instance_frames(st, se, sop, frame_numbers=[1])
    assert len(frames[0]) == full.Rows * full.Columns * full.BitsAllocated // 8
    assert live.get(f"/dicomweb/studies/{STUDY_A}/series/{SERIES_A}/instances/"
                    f"{SOPS_A[0]}/frames/5")[0] == 404
    assert live.get(f"/dicomweb/studies/{STUDY_A}/series/{SERIES_A}/instances/9.9")[0] == 404


def test_stow(live, data):
    c = client(live)
    new = ct_bytes(patient_id="PC3", name="Li^Na", study_uid="1.2.90.1",
                   series_uid="1.2.90.1.1", sop_uid="1.2.90.1.1.1", accession="ACC-C1")
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(new))
    resp = c.store_instances([ds])
    assert resp.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.90.1.1.1"
    assert "FailedSOPSequence" not in resp
    assert uids(c.search_for_studies(search_filters={"PatientID": "PC3"})) == ["1.2.90.1"]
    # a study UID in the URL that differs: FailedSOPSequence with a reason
    status, _, body = live.request(
        "POST", "/dicomweb/studies/1.2.3",
        body=b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + new + b"\r\n--b1--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'})
    assert status == 409 and b"00081198" in body
    # a role without exam.import
    from tests.conftest import staff_headers
    admin = DICOMwebClient(url=live.url + "/dicomweb",
                           headers=staff_headers("sys1", ("sysadmin",)))
    with pytest.raises(requests.HTTPError):
        admin.store_instances([ds])


def test_share_visitor_sees_one_study(live, data):
    token, code, _ = create_share(live, STUDY_A, include_images=True)
    s, r = open_share(live, token, code)
    assert r.ok, r.text
    r = s.get(live.url + "/dicomweb/studies", timeout=30)
    assert r.status_code == 200
    assert [d["0020000D"]["Value"][0] for d in r.json()] == [STUDY_A]
    r = s.get(live.url + "/dicomweb/series", timeout=30)
    assert [d["0020000E"]["Value"][0] for d in r.json()] == [SERIES_A]
    r = s.get(live.url + f"/dicomweb/studies/{STUDY_B}/series/{SERIES_B}/instances/"
              "1.2.89.1.1.1/frames/1", timeout=30)
    assert r.status_code == 404
    # anonymous: 401
    assert requests.get(live.url + "/dicomweb/studies", timeout=30).status_code == 401


def test_images_off_hides_frames_from_patient(live, data, catalog):
    with write_transaction():
        exam = Exam.get(Exam.study_uid == STUDY_A)
        exam.images_enabled = False
        exam.save()
    token, code, _ = create_share(live, STUDY_A, include_images=True)
    s, r = open_share(live, token, code)
    assert r.ok
    url = f"{live.url}/dicomweb/studies/{STUDY_A}/series/{SERIES_A}/instances/{SOPS_A[0]}"
    assert s.get(url + "/frames/1", timeout=30).status_code == 403
    assert s.get(live.url + "/dicomweb/series", timeout=30).status_code == 204
    # staff still see them
    assert live.get(url.replace(live.url, "") + "/frames/1")[0] == 200
    assert Patient.select().count() == 3


def test_cors(live, data):
    live.ctx.config.set_base(dicomweb_cors_origins="https://viewer.example")
    r = requests.options(live.url + "/dicomweb/studies", headers={
        "Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"}, timeout=30)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    r = requests.get(live.url + "/dicomweb/studies", timeout=30, headers={
        "Origin": "https://viewer.example", "Authorization": f"Bearer {live.token}"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
    r = requests.options(live.url + "/dicomweb/studies",
                         headers={"Origin": "https://evil.example"}, timeout=30)
    assert "Access-Control-Allow-Origin" not in r.headers
    live.ctx.config.set_base(dicomweb_cors_origins="")
    r = requests.options(live.url + "/dicomweb/studies",
                         headers={"Origin": "https://viewer.example"}, timeout=30)
    assert "Access-Control-Allow-Origin" not in r.headers


def test_bulkdata_pdf(live, data):
    from adapters.pdf_report import make_report_pdf
    from tests.dicom_factory import encapsulated_pdf
    pdf = make_report_pdf({"patient_name": "张伟", "patient_id": "PA1",
                           "accession_number": "ACC-A1", "findings": "未见异常。",
                           "impression": "正常。", "modality": "CT"})
    ds = encapsulated_pdf(STUDY_A, pdf, patient_id="PA1")
    c = client(live)
    try:
        resp = c.store_instances([ds])
    except requests.HTTPError as exc:
        raise AssertionError(exc.response.text) from None
    assert "FailedSOPSequence" not in resp, resp
    sop, series = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
    meta = c.retrieve_instance_metadata(STUDY_A, series, sop)
    uri = meta["00420011"]["BulkDataURI"]
    assert uri.endswith(f"/instances/{sop}/bulkdata/00420011")
    # dicomweb-client 0.61 sends Host without the port (so the URI lacks it): fetch the path
    from urllib.parse import urlparse
    status, hdrs, body = live.get(urlparse(uri).path)
    assert status == 200 and 'type="application/pdf"' in hdrs["Content-Type"]
    assert pdf.rstrip(b"\x00") in body


def test_verified_patient_sees_own_exams_and_images_off_hides_frames(live, people):
    a, b = people
    s, r = verify(live, phone=a.phone, id_number=a.id_number)
    assert r.ok, r.text
    r = s.get(live.url + "/dicomweb/studies", timeout=30)
    assert [d["0020000D"]["Value"][0] for d in r.json()] == [a.study_uid]
    url = f"{live.url}/dicomweb/studies/{a.study_uid}/series/{a.series_uid}/instances/" \
          f"{a.sop_uids[0]}/frames/1"
    assert s.get(url, timeout=30).status_code == 200
    assert s.get(f"{live.url}/dicomweb/studies/{b.study_uid}/series", timeout=30).status_code \
        == 404
    with write_transaction():
        Exam.update(images_enabled=False).where(Exam.study_uid == a.study_uid).execute()
    assert s.get(url, timeout=30).status_code == 403
    assert s.get(live.url + "/dicomweb/series", timeout=30).status_code == 204
    assert s.get(live.url + "/dicomweb/studies", timeout=30).status_code == 200
