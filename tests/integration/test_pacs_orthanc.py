"""Orthanc (Debian) as the hospital PACS: C-FIND lists a patient's exams that CloudFilm does
not hold, opening one retrieves it by C-MOVE to our listener (and by C-GET), with progress.
Everything runs in a network namespace that has only `lo` (Orthanc cannot bind loopback
only)."""
from __future__ import annotations

import json
import os

import pytest
from pydicom.uid import generate_uid

from tests.dicom_factory import ct_bytes

# Orthanc is installed on first use by bench/orthanc_peer.ensure_installed (apt-get, with a
# policy-rc.d so the package never starts a system-wide Orthanc on every interface).
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for ip netns")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    from .pacs_peer import PacsPeer
    with PacsPeer() as peer:
        d = tmp_path_factory.mktemp("pacs-files")
        files = []
        for s, n in ((generate_uid(), 12), (generate_uid(), 6)):
            series = generate_uid()
            for i in range(n):
                p = d / f"{s[-8:]}-{i}.dcm"
                p.write_bytes(ct_bytes(study_uid=s, series_uid=series, z=float(i),
                                       patient_id="PACS01", name="黄^海波",
                                       charset="ISO_IR 192", accession=f"H{n}",
                                       size=64))
                files.append(p)
        out = peer.storescu(files)
        assert out.returncode == 0, out.stderr
        yield peer


@pytest.mark.parametrize("method", ["move", "get"])
def test_history_from_pacs_and_retrieve_on_demand(pacs, tmp_path, method):
    out = pacs.run_python("tests.integration.pacs_scenario", "--tmp", str(tmp_path), "--patient",
                      "PACS01", "--method", method, "--scp-port",
                      str(11112 if method == "move" else 11113))
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["patient_name"] == "黄海波"
    assert sorted(s["num_instances"] for s in r["listed"]) == [6, 12]
    # listed for the doctor and the patient before anything was fetched
    assert len(r["before"]) == 2 and all(s["source"] == "pacs" and s["num_instances"] == 0
                                         for s in r["before"])
    for rt in r["retrieves"]:
        assert rt["progress"]["status"] == "done", rt
        assert rt["progress"]["instances_here"] == rt["progress"]["expected"] > 0
        assert rt["first_image_s"] is not None
    assert sorted(s["num_instances"] for s in r["after"]) == [6, 12]


# storescu's option proposing each file's own (compressed) transfer syntax
PROPOSE = {"1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
           "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.70": "-xs"}


def _compressed_study(src, d, study: str, n: int):
    """Copies of real compressed corpus files, renumbered into one study (pixel data and
    transfer syntax untouched)."""
    import pydicom
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "PACS02"
    out = d / f"{study[-6:]}-{n}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out, str(ds.file_meta.TransferSyntaxUID), ds.SOPInstanceUID


def test_c_get_keeps_compression_and_a_late_arrival_shows_done(pacs, tmp_path):
    """Was: CloudFilm offered every syntax in one presentation context per SOP class;
    Orthanc picked uncompressed and failed the J2K study (it cannot transcode J2K) and sent
    the JPEG study decompressed."""
    from tests.conftest import corpus_dir
    want, studies = {}, []
    for names in (("MR2_J2KR.dcm", "RG1_J2KI.dcm"), ("color3d_jpeg_baseline.dcm",
                                                     "JPEG-LL.dcm")):
        study = generate_uid()
        studies.append(study)
        for n, name in enumerate(names):
            path, ts, sop = _compressed_study(corpus_dir() / name, tmp_path, study, n)
            want[sop] = ts
            out = pacs.storescu([path], extra=(PROPOSE[ts],))
            assert out.returncode == 0 and "Failed" not in out.stderr, out.stderr
    out = pacs.run_python("tests.integration.pacs_get_syntaxes", "--tmp", str(tmp_path),
                          *studies)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert all("error" not in v for v in r["results"].values()), r["results"]
    assert r["syntaxes"] == want
    assert r["later"]["status"] == "done" and r["later"]["arrived_later"] is True
