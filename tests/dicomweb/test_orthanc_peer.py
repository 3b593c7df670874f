"""Orthanc (Debian orthanc + orthanc-dicomweb) as a DICOMweb peer of CloudFilm: its config
lists CloudFilm as a remote DICOMweb server with a staff API token, and everything below goes
through Orthanc's REST API, so the HTTP requests CloudFilm answers are Orthanc's own (QIDO
with its Accept headers, WADO-RS retrieve with its multipart parser, STOW with its bodies).

Orthanc runs in this host's network namespace on a free port with RemoteAccessAllowed false
and its DICOM server off (the test's CloudFilm listens on 127.0.0.1 of this namespace)."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from adapters.importer import Importer
from tests.dicom_factory import ct_bytes, ct_dataset, to_bytes

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
pytestmark = [pytest.mark.db, pytest.mark.skipif(
    not shutil.which("Orthanc") or not PLUGIN.exists(),
    reason="needs the Debian packages orthanc and orthanc-dicomweb")]

STUDY = "1.2.826.0.1.3680043.8.498.16001"
SERIES = STUDY + ".1"
SOPS = [f"{SERIES}.{k}" for k in range(1, 4)]
OTHER = "1.2.826.0.1.3680043.8.498.16002"


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """A private Orthanc (own config, storage and free port) knowing CloudFilm as 'cloudfilm'."""

    def __init__(self, cloudfilm_url: str, token: str):
        self.dir = Path(tempfile.mkdtemp(prefix="cf-orthanc-dw-"))
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cfg = {
            "Name": "cf-dicomweb-peer", "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"), "StorageCompression": False,
            "HttpServerEnabled": True, "HttpPort": self.port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomServerEnabled": False,
            "DicomPort": _free_port(), "Plugins": [str(PLUGIN)], "SaveJobs": False,
            "HttpDescribeErrors": True, "DefaultEncoding": "Utf8",
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {
                "cloudfilm": {"Url": cloudfilm_url + "/dicomweb/",
                              "HttpHeaders": {"Authorization": f"Bearer {token}"}}}},
        }
        (self.dir / "config.json").write_text(json.dumps(cfg))
        self.log = open(self.dir / "orthanc.log", "ab")
        self.proc = subprocess.Popen(["Orthanc", str(self.dir / "config.json")],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                self.call("GET", "/system")
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not start: " + self.tail())

    def tail(self) -> str:
        try:
            return (self.dir / "orthanc.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def call(self, method: str, path: str, body=None, raw: bool = False):
        data = None if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=120) as r:
            out = r.read()
        return out if raw else json.loads(out or b"null")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def originals(catalog, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    files = {}
    for k, sop in enumerate(SOPS):
        ds = ct_dataset(patient_id="OP1", name="王^小明", charset="ISO_IR 192",
                        study_uid=STUDY, series_uid=SERIES, sop_uid=sop, accession="ACC-OP1",
                        z=float(k), size=32)
        ds.InstanceNumber = k + 1
        files[sop] = to_bytes(ds)
        (src / f"{k}.dcm").write_bytes(files[sop])
    (src / "o.dcm").write_bytes(ct_bytes(patient_id="OP2", name="Li^Lei", study_uid=OTHER,
                                         sop_uid=OTHER + ".1.1", accession="ACC-OP2"))
    assert Importer(catalog).run([src]).imported == 4
    return files


@pytest.fixture
def orthanc(live):
    try:
        o = Orthanc(live.url, live.token)
    except (OSError, RuntimeError) as exc:
        pytest.fail(f"Orthanc: {exc}")
    yield o
    o.stop()


def _studies_via_orthanc(orthanc, uri: str, **args) -> list:
    try:
        return orthanc.call("POST", "/dicom-web/servers/cloudfilm/get",
                            {"Uri": uri, "Arguments": args})
    except urllib.error.HTTPError as e:
        pytest.fail(f"Orthanc GET {uri} via CloudFilm: {e.code} {e.read()[:500]!r}\n"
                    + orthanc.tail())


def test_qido_through_orthanc_keeps_chinese_names(live, originals, orthanc):
    found = _studies_via_orthanc(orthanc, "/studies", PatientName="王*",
                                 includefield="all")
    assert [s["0020000D"]["Value"][0] for s in found] == [STUDY]
    assert found[0]["00100010"]["Value"][0] == {"Alphabetic": "王小明", "Ideographic": "王小明"}, found[0]["00100010"]
    assert found[0]["00080005"]["Value"] == ["ISO_IR 192"]
    every = _studies_via_orthanc(orthanc, "/studies")
    assert sorted(s["0020000D"]["Value"][0] for s in every) == sorted([STUDY, OTHER])
    series = _studies_via_orthanc(orthanc, f"/studies/{STUDY}/series")
    assert [s["0020000E"]["Value"][0] for s in series] == [SERIES]


def test_retrieve_into_orthanc_is_identical(live, originals, orthanc):
    try:
        orthanc.call("POST", "/dicom-web/servers/cloudfilm/retrieve",
                     {"Resources": [{"Study": STUDY}], "Synchronous": True})
    except urllib.error.HTTPError as e:
        pytest.fail(f"retrieve: {e.code} {e.read()[:500]!r}\n{orthanc.tail()}")
    ids = orthanc.call("GET", "/instances")
    assert len(ids) == len(SOPS)
    got = {}
    for i in ids:
        data = orthanc.call("GET", f"/instances/{i}/file", raw=True)
        ds = pydicom.dcmread(DicomBytesIO(data))
        got[str(ds.SOPInstanceUID)] = (ds, data)
    assert sorted(got) == sorted(SOPS)
    for sop, (ds, data) in got.items():
        # stored explicit VR little endian: sent as stored, and Orthanc keeps what it got
        assert data == originals[sop]
        orig = pydicom.dcmread(DicomBytesIO(originals[sop]))
        assert ds.PixelData == orig.PixelData
        assert str(ds.PatientName) == "王^小明"
        assert str(ds.file_meta.TransferSyntaxUID) == str(orig.file_meta.TransferSyntaxUID)


def test_orthanc_stows_into_cloudfilm(live, originals, orthanc):
    sop = generate_uid()
    new = ct_bytes(patient_id="OP3", name="赵^六", charset="ISO_IR 192", study_uid=STUDY[:-1]
                   + "9", sop_uid=sop, accession="ACC-OP3")
    oid = orthanc.call("POST", "/instances", new)["ID"]
    try:
        orthanc.call("POST", "/dicom-web/servers/cloudfilm/stow",
                     {"Resources": [oid], "Synchronous": True})
    except urllib.error.HTTPError as e:
        pytest.fail(f"stow: {e.code} {e.read()[:500]!r}\n{orthanc.tail()}")
    status, _, body = live.get(f"/dicomweb/studies/{STUDY[:-1] + '9'}/series/"
                               f"{pydicom.dcmread(DicomBytesIO(new)).SeriesInstanceUID}/"
                               f"instances/{sop}",
                               headers={"Accept": 'multipart/related; type="application/dicom";'
                                                  ' transfer-syntax=*'})
    assert status == 200 and new in body


def test_compressed_study_arrives_byte_identical(live, catalog, tmp_path, orthanc):
    """Orthanc asks for transfer-syntax=*: a JPEG 2000 file is sent and stored as it is."""
    from tests.conftest import corpus_dir
    src = tmp_path / "j2k"
    src.mkdir()
    shutil.copy(corpus_dir() / "MR2_J2KR.dcm", src / "j.dcm")
    assert Importer(catalog).run([src]).imported == 1
    original = (src / "j.dcm").read_bytes()
    study = str(pydicom.dcmread(src / "j.dcm", stop_before_pixels=True).StudyInstanceUID)
    orthanc.call("POST", "/dicom-web/servers/cloudfilm/retrieve",
                 {"Resources": [{"Study": study}], "Synchronous": True})
    ids = orthanc.call("GET", "/instances")
    assert len(ids) == 1
    assert orthanc.call("GET", f"/instances/{ids[0]}/file", raw=True) == original
