"""Verified download: streamed ZIP of the originals with a DICOMDIR, exact length, Range
resume, the download log; and IDOR: a share or patient session never reaches another exam."""
import hashlib
import io
import zipfile

import pydicom
import pytest
import requests

from models.schema import DownloadLog, Instance, Session, utcnow
from tests.access.conftest import create_share, open_share, staff, verify

pytestmark = pytest.mark.db


def originals(live, person):
    out = {}
    for i in Instance.select().where(Instance.sop_uid.in_(person.sop_uids)):
        data = live.ctx.storage.abspath(i.file_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == i.sha256
        out[i.sop_uid] = i.sha256
    return out


def test_patient_downloads_exam_zip_with_dicomdir(live, people, tmp_path):
    a, _ = people
    s, _ = verify(live, phone=a.phone, id_number=a.id_number)
    url = live.url + f"/api/download/studies/{a.study_uid}.zip"
    head = s.head(url)
    assert head.status_code == 200
    size = int(head.headers["Content-Length"])
    r = s.get(url, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    assert int(r.headers["Content-Length"]) == size       # known before the first byte
    assert r.headers["Accept-Ranges"] == "bytes"
    body = r.raw.read()
    assert len(body) == size
    zf = zipfile.ZipFile(io.BytesIO(body))
    assert zf.testzip() is None
    assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    want = originals(live, a)
    got = {hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist() if n != "DICOMDIR"}
    assert got == set(want.values())
    # the DICOMDIR reads back and names every file of the archive
    zf.extractall(tmp_path / "x")
    dd = pydicom.dcmread(tmp_path / "x" / "DICOMDIR")
    fs = pydicom.fileset.FileSet(dd)
    assert sorted(inst.SOPInstanceUID for inst in fs) == sorted(a.sop_uids)
    for inst in fs:
        ds = inst.load()
        assert ds.StudyInstanceUID == a.study_uid
    # logged, visible to the patient and to admins
    rows = s.get(live.url + "/api/patient/downloads").json()["downloads"]
    assert rows[0]["completed"] is True and rows[0]["bytes_sent"] == size
    assert rows[0]["scope"] == "exam"
    adm = requests.get(live.url + f"/api/downloads?study_uid={a.study_uid}",
                       headers=staff(live, ("auditadmin",), "aud"))
    d = adm.json()["downloads"][0]
    assert d["actor_kind"] == "patient" and d["ip"] == "127.0.0.1" and d["user_agent"]
    assert requests.get(live.url + "/api/downloads", headers=staff(live, ("doctor",), "doc9")
                        ).status_code == 403


def test_range_resume_gives_identical_bytes(live, people):
    a, _ = people
    s, _ = verify(live, phone=a.phone, id_number=a.id_number)
    url = live.url + f"/api/download/studies/{a.study_uid}.zip"
    full = s.get(url).content
    etag = s.head(url).headers["ETag"]
    cut = len(full) // 3 + 7                 # in the middle of a file
    r = s.get(url, headers={"Range": f"bytes={cut}-", "If-Range": etag})
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes {cut}-{len(full) - 1}/{len(full)}"
    assert int(r.headers["Content-Length"]) == len(full) - cut
    assert full[:cut] + r.content == full
    r = s.get(url, headers={"Range": "bytes=10-99"})
    assert r.status_code == 206 and r.content == full[10:100]
    r = s.get(url, headers={"Range": "bytes=-22"})
    assert r.content == full[-22:]
    r = s.get(url, headers={"Range": f"bytes={len(full)}-"})
    assert r.status_code == 416
    r = s.get(url, headers={"Range": "bytes=5-", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == full


def test_aborted_download_is_logged(live, people, tmp_path):
    import socket
    import time

    from adapters.importer import Importer
    from tests.dicom_factory import ct_bytes
    a, _ = people
    src = tmp_path / "big"
    src.mkdir()
    for k in range(16):                      # 16 x 512 KiB: more than the socket buffers
        (src / f"{k}.dcm").write_bytes(ct_bytes(
            patient_id=a.patient_id, study_uid="1.2.77.9", series_uid="1.2.77.9.1",
            sop_uid=f"1.2.77.9.1.{k}", accession="ACC-A9", z=float(k), size=512))
    Importer(live.ctx.catalog).run([src])
    s, _ = verify(live, phone=a.phone, id_number=a.id_number)
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", live.port))
    sock.sendall(f"GET /api/download/studies/1.2.77.9.zip HTTP/1.1\r\nHost: x\r\n"
                 f"Cookie: {cookie}\r\n\r\n".encode())
    assert b"200 OK" in sock.recv(4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    row = None
    for _ in range(100):
        row = DownloadLog.select().order_by(DownloadLog.id.desc()).first()
        if row is not None and row.bytes_sent:
            break
        time.sleep(0.1)
    assert row.scope == "exam" and row.completed is False
    assert 0 < row.bytes_sent < row.bytes_total
    rows = s.get(live.url + "/api/patient/downloads").json()["downloads"]
    assert rows[0]["completed"] is False


def test_single_image_download(live, people):
    a, _ = people
    s, _ = verify(live, phone=a.phone, id_number=a.id_number)
    r = s.get(live.url + f"/api/download/studies/{a.study_uid}/series/{a.series_uid}/"
                         f"instances/{a.sop_uids[1]}.zip")
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert len(zf.namelist()) == 2
    want = originals(live, a)[a.sop_uids[1]]
    assert {hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist()} >= {want}


def test_download_needs_fresh_verification(live, people):
    import datetime as dt
    a, _ = people
    s, _ = verify(live, phone=a.phone, id_number=a.id_number)
    Session.update(verified_at=utcnow() - dt.timedelta(minutes=11)).execute()
    live.ctx.principals.clear()
    url = live.url + f"/api/download/studies/{a.study_uid}.zip"
    r = s.get(url)
    assert r.status_code == 403 and "重新验证" in r.json()["error"]
    assert s.get(live.url + f"/api/studies/{a.study_uid}").status_code == 200  # still viewing
    verify(live, session=s, phone=a.phone, id_number=a.id_number)
    assert s.get(url).status_code == 200


def test_share_download_rules(live, people):
    import datetime as dt
    a, _ = people
    token, code, _ = create_share(live, a.study_uid)                # download not allowed
    s, _ = open_share(live, token, code)
    url = live.url + f"/api/download/studies/{a.study_uid}.zip"
    assert s.get(url).status_code == 403
    token, code, _ = create_share(live, a.study_uid, allow_download=True)
    s, _ = open_share(live, token, code)
    assert s.get(url).status_code == 200
    Session.update(verified_at=utcnow() - dt.timedelta(minutes=11)).execute()
    live.ctx.principals.clear()
    assert s.get(url).status_code == 403
    wrong = "000000" if code != "000000" else "111111"
    assert s.post(live.url + "/api/share/reverify", json={"code": wrong}).status_code == 403
    assert s.post(live.url + "/api/share/reverify", json={"code": code}).status_code == 200
    assert s.get(url).status_code == 200


def idor_urls(own, other):
    """Every exam URL, with the other exam's UIDs (and mixes of own and other)."""
    o = other
    inst = f"/dicomweb/studies/{o.study_uid}/series/{o.series_uid}/instances/{o.sop_uids[0]}"
    mixed = f"/dicomweb/studies/{own.study_uid}/series/{o.series_uid}/instances/{o.sop_uids[0]}"
    rs = f"/api/render/studies/{o.study_uid}/series/{o.series_uid}"
    return [
        f"/api/studies/{o.study_uid}", f"/api/studies/{o.study_uid}/report.pdf",
        f"/api/studies/{o.study_uid}/report/pages", f"/api/studies/{o.study_uid}/report/pages/1",
        f"{inst}/frames/1/rendered", f"{inst}/rendered", f"{inst}/thumbnail",
        f"/dicomweb/studies/{o.study_uid}/series/{o.series_uid}/thumbnail",
        f"/dicomweb/studies/{o.study_uid}/thumbnail", f"{inst}/frames/1/tiles/0/0/0",
        f"{rs}/instances/{o.sop_uids[0]}/info", f"{rs}/mpr/sagittal", f"{rs}/mpr/coronal",
        f"{rs}/mpr/sagittal/geometry", f"{rs}/mip", f"{rs}/volume",
        f"/api/download/studies/{o.study_uid}.zip",
        f"/api/download/studies/{o.study_uid}/series/{o.series_uid}.zip",
        f"/api/download/studies/{o.study_uid}/series/{o.series_uid}/instances/"
        f"{o.sop_uids[0]}.zip",
        f"/api/download/studies/{own.study_uid}/series/{o.series_uid}.zip",
        f"{mixed}/frames/1/rendered",
        f"/api/shares?study_uid={o.study_uid}", "/api/studies", "/api/downloads",
    ]


def test_idor_share_and_patient_sessions_never_reach_another_exam(live, people):
    a, b = people
    token, code, _ = create_share(live, a.study_uid, allow_download=True)
    share_s, _ = open_share(live, token, code)
    patient_s, _ = verify(live, phone=a.phone, id_number=a.id_number)
    for name, s in (("share", share_s), ("patient", patient_s)):
        # sanity: the own exam works on the same URLs
        assert s.get(live.url + f"/api/studies/{a.study_uid}").status_code == 200
        assert s.get(live.url + f"/dicomweb/studies/{a.study_uid}/thumbnail").status_code == 200
        for path in idor_urls(a, b):
            r = s.get(live.url + path)
            assert r.status_code in (403, 404), (name, path, r.status_code)
            assert b.patient_id.encode() not in r.content, (name, path)
            if path.startswith(("/api/studies/", "/dicomweb/", "/api/render/",
                                "/api/download/")):
                assert r.status_code == 404, (name, path, r.status_code)
        # state-changing URLs of staff
        assert s.post(live.url + f"/api/exams/{b.study_uid}/images",
                      json={"enabled": False}).status_code == 403
        assert s.post(live.url + "/api/shares", json={"study_uid": b.study_uid}
                      ).status_code == 403
        assert s.post(live.url + "/api/patient/shares", json={"study_uid": b.study_uid}
                      ).status_code in (403, 404)
