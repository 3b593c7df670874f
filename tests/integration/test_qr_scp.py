"""Our Query/Retrieve SCP with dcmtk's findscu, movescu and getscu: Patient Root and Study
Root C-FIND at every level (a Chinese name in ISO_IR 192), C-MOVE to a storescp peer and
C-GET, the files arriving as stored; a move to an unknown AE and a stranger refused."""
from __future__ import annotations

import socket
import subprocess
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import corpus_files
from tests.dicom_factory import ct_bytes

from .conftest import need
from .test_dicom_scp import storescu

pytestmark = pytest.mark.db

J2K = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def peer_port():
    return _free_port()


@pytest.fixture
def qr(ctx, peer_port):
    from adapters.dicom_net import DicomScp
    s = DicomScp(ctx.catalog, ae_title="CLOUDFILM", host="127.0.0.1", port=0,
                 allowed_aets=["STORESCU", "FINDSCU", "MOVESCU", "GETSCU"],
                 peers={"STORESCP": ("127.0.0.1", peer_port)},
                 max_associations=8, fast_copies=False).start()
    yield s
    s.stop()


@pytest.fixture
def stored(qr, tmp_path):
    """Two CT slices of a Chinese-named patient (ISO_IR 192) and one JPEG 2000 corpus file,
    stored with storescu; returns {sop_uid: path of the original}."""
    src = tmp_path / "src"
    src.mkdir()
    study, series = generate_uid(), generate_uid()
    files = {}
    for z in range(2):
        sop = generate_uid()
        p = src / f"ct{z}.dcm"
        p.write_bytes(ct_bytes(patient_id="QR001", name="张^伟", charset="ISO_IR 192",
                               study_uid=study, series_uid=series, sop_uid=sop,
                               accession="ACC-QR1", z=float(z), study_date="20260312"))
        files[sop] = p
    j2k = next(f for f in corpus_files()
               if str(pydicom.dcmread(f, stop_before_pixels=True).file_meta
                      .TransferSyntaxUID) in J2K)
    files[str(pydicom.dcmread(j2k, stop_before_pixels=True).SOPInstanceUID)] = j2k
    out = storescu(qr.port, [files[k] for k in list(files)[:2]])
    assert out.returncode == 0, out.stderr
    out = storescu(qr.port, [j2k], extra=("-xw" if "4.91" in str(
        pydicom.dcmread(j2k, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        else "-xv",))
    assert out.returncode == 0, out.stderr
    return {"study": study, "series": series, "files": files, "j2k": j2k}


def findscu(port, model, keys, cwd, aet="FINDSCU"):
    for old in cwd.glob("rsp*.dcm"):
        old.unlink()
    out = subprocess.run([need("findscu"), "-aet", aet, "-aec", "CLOUDFILM", model, "-X",
                          "127.0.0.1", str(port), *sum((["-k", k] for k in keys), [])],
                         capture_output=True, text=True, timeout=60, cwd=cwd)
    return out, [pydicom.dcmread(f) for f in sorted(cwd.glob("rsp*.dcm"))]


def test_find_every_level(qr, stored, tmp_path):
    cwd = tmp_path / "find"
    cwd.mkdir()
    out, rsp = findscu(qr.port, "-P", ["QueryRetrieveLevel=PATIENT", "PatientID=QR001",
                                       "PatientName", "NumberOfPatientRelatedStudies"], cwd)
    assert out.returncode == 0, out.stderr
    assert len(rsp) == 1 and rsp[0].PatientID == "QR001"
    assert rsp[0].SpecificCharacterSet == "ISO_IR 192" and "张" in str(rsp[0].PatientName)
    # wildcard on the Chinese name, study level, patient root
    out, rsp = findscu(qr.port, "-P", ["SpecificCharacterSet=ISO_IR 192",
                                       "QueryRetrieveLevel=STUDY", "PatientID=QR001",
                                       "PatientName=张*", "StudyInstanceUID",
                                       "AccessionNumber", "ModalitiesInStudy",
                                       "NumberOfStudyRelatedInstances"], cwd)
    assert out.returncode == 0, out.stderr
    assert [r.StudyInstanceUID for r in rsp] == [stored["study"]]
    assert rsp[0].AccessionNumber == "ACC-QR1"
    assert "CT" in rsp[0].ModalitiesInStudy and rsp[0].NumberOfStudyRelatedInstances == 2
    # study root: date ranges, modality, accession
    for keys, n in ((["StudyDate=20260301-20260331"], 1), (["StudyDate=-20260101"], 0),
                    (["ModalitiesInStudy=CT"], 1), (["ModalitiesInStudy=MR"], 0),
                    (["AccessionNumber=ACC-QR1"], 1), (["AccessionNumber=ACC-*"], 1),
                    (["AccessionNumber=ACC?QR1"], 1), (["AccessionNumber=ACC_QR1"], 0),
                    (["ModalitiesInStudy=MR\\CT"], 1),
                    (["PatientName=李*"], 0)):
        out, rsp = findscu(qr.port, "-S", ["SpecificCharacterSet=ISO_IR 192",
                                           "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                           "PatientID=QR001", *keys], cwd)
        assert out.returncode == 0, out.stderr
        assert len(rsp) == n, keys
    out, rsp = findscu(qr.port, "-S", ["QueryRetrieveLevel=SERIES",
                                       f"StudyInstanceUID={stored['study']}",
                                       "SeriesInstanceUID", "Modality=CT",
                                       "NumberOfSeriesRelatedInstances"], cwd)
    assert [r.SeriesInstanceUID for r in rsp] == [stored["series"]]
    assert rsp[0].NumberOfSeriesRelatedInstances == 2
    out, rsp = findscu(qr.port, "-S", ["QueryRetrieveLevel=IMAGE",
                                       f"StudyInstanceUID={stored['study']}",
                                       f"SeriesInstanceUID={stored['series']}",
                                       "SOPInstanceUID", "SOPClassUID"], cwd)
    ct_sops = {k for k, v in stored["files"].items() if v != stored["j2k"]}
    assert {r.SOPInstanceUID for r in rsp} == ct_sops


def _same(received, original):
    a, b = pydicom.dcmread(received), pydicom.dcmread(original)
    assert str(a.file_meta.TransferSyntaxUID) == str(b.file_meta.TransferSyntaxUID)
    assert a.PixelData == b.PixelData
    for elem in b:
        if elem.tag != 0x7FE00010 and elem.tag.element != 0:    # group lengths may go
            assert a[elem.tag].value == elem.value, elem.keyword


def _wait_files(d, n, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end and len(list(d.glob("*"))) < n:
        time.sleep(0.1)
    return sorted(d.glob("*"))


def test_move_to_peer_as_stored(qr, stored, tmp_path, peer_port):
    recv = tmp_path / "recv"
    recv.mkdir()
    peer = subprocess.Popen([need("storescp"), "-aet", "STORESCP", "+xa", "-od", str(recv),
                             "-uf", str(peer_port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        for sop, orig in stored["files"].items():
            study = pydicom.dcmread(orig, stop_before_pixels=True).StudyInstanceUID
            out = subprocess.run([need("movescu"), "-aet", "MOVESCU", "-aec", "CLOUDFILM",
                                  "-aem", "STORESCP", "-S", "-k", "QueryRetrieveLevel=IMAGE",
                                  "-k", f"StudyInstanceUID={study}", "-k",
                                  f"SeriesInstanceUID={pydicom.dcmread(orig).SeriesInstanceUID}",
                                  "-k", f"SOPInstanceUID={sop}", "127.0.0.1", str(qr.port)],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
        got = _wait_files(recv, len(stored["files"]))
        assert len(got) == len(stored["files"])
        by_sop = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
                  for f in got}
        for sop, orig in stored["files"].items():
            _same(by_sop[sop], orig)
    finally:
        peer.terminate()
        peer.wait(10)


def test_get_as_stored(qr, stored, tmp_path):
    recv = tmp_path / "get"
    recv.mkdir()
    j2k_ts = str(pydicom.dcmread(stored["j2k"], stop_before_pixels=True)
                 .file_meta.TransferSyntaxUID)
    for sop, orig in stored["files"].items():
        ds = pydicom.dcmread(orig, stop_before_pixels=True)
        extra = ["+xw" if j2k_ts.endswith("4.91") else "+xv"] if orig == stored["j2k"] else []
        out = subprocess.run([need("getscu"), "-aet", "GETSCU", "-aec", "CLOUDFILM", "-S",
                              *extra, "-od", str(recv), "-k", "QueryRetrieveLevel=IMAGE",
                              "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                              "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}",
                              "-k", f"SOPInstanceUID={sop}", "127.0.0.1", str(qr.port)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    got = sorted(recv.glob("*"))
    by_sop = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in got}
    assert set(by_sop) == set(stored["files"])
    for sop, orig in stored["files"].items():
        _same(by_sop[sop], orig)


def test_get_converts_when_stored_syntax_not_accepted(qr, stored, tmp_path):
    """getscu proposing only uncompressed syntaxes: the JPEG 2000 instance comes back
    decompressed to explicit VR little endian, the same pixels."""
    import numpy as np
    recv = tmp_path / "get2"
    recv.mkdir()
    ds = pydicom.dcmread(stored["j2k"])
    out = subprocess.run([need("getscu"), "-aet", "GETSCU", "-aec", "CLOUDFILM", "-S",
                          "-od", str(recv), "-k", "QueryRetrieveLevel=IMAGE",
                          "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                          "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}",
                          "-k", f"SOPInstanceUID={ds.SOPInstanceUID}", "127.0.0.1",
                          str(qr.port)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = sorted(recv.glob("*"))
    assert len(got) == 1
    back = pydicom.dcmread(got[0])
    assert str(back.file_meta.TransferSyntaxUID) in ("1.2.840.10008.1.2.1",
                                                      "1.2.840.10008.1.2")
    assert np.array_equal(back.pixel_array, ds.pixel_array)


def test_move_to_unknown_ae_refused(qr, stored, tmp_path):
    out = subprocess.run([need("movescu"), "-v", "-aet", "MOVESCU", "-aec", "CLOUDFILM",
                          "-aem", "NOBODY", "-S", "-k", "QueryRetrieveLevel=STUDY",
                          "-k", f"StudyInstanceUID={stored['study']}", "127.0.0.1",
                          str(qr.port)], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert "MoveDestinationUnknown" in text, text


def test_stranger_refused(qr, stored, tmp_path):
    cwd = tmp_path / "f"
    cwd.mkdir()
    out, rsp = findscu(qr.port, "-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], cwd,
                       aet="INTRUDER")
    assert out.returncode != 0 and rsp == []
