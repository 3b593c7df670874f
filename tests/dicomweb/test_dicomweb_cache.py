"""The WADO-RS fast paths of bench/dicomweb.py: frames read from their byte range (layout
cached per stored file), metadata answers cached per version of their set of files."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from adapters.importer import Importer
from tests.dicom_factory import ct_bytes, ct_dataset, to_bytes

pytestmark = pytest.mark.db

STUDY = "1.2.826.0.1.3680043.8.498.16100"
SERIES = STUDY + ".1"
FRAMES_ACCEPT = {"Accept": 'multipart/related; type="application/octet-stream"'}


def _parts(body: bytes, ctype: str) -> list[bytes]:
    boundary = ctype.split("boundary=")[1].strip('"').encode()
    out = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        out.append(chunk.partition(b"\r\n\r\n")[2][:-2])
    return out


def test_frames_from_byte_ranges(live, catalog, tmp_path):
    multi = ct_dataset(study_uid=STUDY, series_uid=SERIES, sop_uid=SERIES + ".1", size=8)
    frames = np.arange(3 * 64, dtype=np.int16).reshape(3, 8, 8)
    multi.NumberOfFrames, multi.PixelData = 3, frames.tobytes()
    implicit = ct_dataset(study_uid=STUDY, series_uid=SERIES, sop_uid=SERIES + ".2", size=8,
                          pixel_value=7)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit.InstanceNumber = 2
    (tmp_path / "m.dcm").write_bytes(to_bytes(multi))
    (tmp_path / "i.dcm").write_bytes(to_bytes(implicit))
    assert Importer(catalog).run([tmp_path]).imported == 2
    base = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/"
    for _ in range(2):                               # the second time from the cached layout
        st, h, body = live.get(base + SERIES + ".1/frames/3,1", FRAMES_ACCEPT)
        assert st == 200
        assert _parts(body, h["Content-Type"]) == [frames[2].tobytes(), frames[0].tobytes()]
        st, h, body = live.get(base + SERIES + ".2/frames/1", FRAMES_ACCEPT)
        assert st == 200 and _parts(body, h["Content-Type"]) == [
            np.full((8, 8), 7, np.int16).tobytes()]
        assert live.get(base + SERIES + ".1/frames/4", FRAMES_ACCEPT)[0] == 404


def test_metadata_answer_follows_the_files(live, catalog, tmp_path):
    """Was (a cache keyed by the series alone would be): an instance stored after the first
    metadata request missing from later answers."""
    (tmp_path / "a.dcm").write_bytes(ct_bytes(study_uid=STUDY, series_uid=SERIES,
                                              sop_uid=SERIES + ".1", name="孙^丽",
                                              charset="ISO_IR 192"))
    assert Importer(catalog).run([tmp_path]).imported == 1
    url = f"/dicomweb/studies/{STUDY}/series/{SERIES}/metadata"
    st, doc = live.json(url)
    assert st == 200 and [d["00080018"]["Value"][0] for d in doc] == [SERIES + ".1"]
    assert doc[0]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "孙^丽"}]}
    assert doc[0]["7FE00010"]["BulkDataURI"].startswith(live.url + "/dicomweb/studies/")
    assert doc[0]["00020010"]["Value"] == ["1.2.840.10008.1.2.1"]
    body = (b"--b1\r\nContent-Type: application/dicom\r\n\r\n"
            + ct_bytes(study_uid=STUDY, series_uid=SERIES, sop_uid=SERIES + ".2")
            + b"\r\n--b1--\r\n")
    st, _, _ = live.request("POST", f"/dicomweb/studies/{STUDY}", body=body, headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'})
    assert st == 200
    st, doc = live.json(url)
    assert sorted(d["00080018"]["Value"][0] for d in doc) == [SERIES + ".1", SERIES + ".2"]


def test_chinese_name_wildcards_with_the_index_range(live, catalog, tmp_path):
    """On SQLite a caseless beginning (王*) also becomes an index range on the name; the
    matches stay those of the LIKE."""
    names = {"1": "王^小明", "2": "王^伟", "3": "汪^洋", "4": "李^王", "5": "Wang^Li",
             "6": "王", "7": "WANG^XIAO", "8": "wangxiao^ming", "9": "WANF^A",
             "10": "Zhang^Xiaoming", "11": "WAN^G"}
    for k, name in names.items():
        (tmp_path / f"{k}.dcm").write_bytes(ct_bytes(
            patient_id=f"IX{k}", name=name, charset="ISO_IR 192", accession=f"IX{k}",
            study_uid=f"{STUDY}.9{k}"))
    assert Importer(catalog).run([tmp_path]).imported == len(names)

    def found(value):
        import json
        from urllib.parse import quote
        st, h, body = live.get("/dicomweb/studies?PatientName=" + quote(value)
                               + "&limit=50")
        if st == 204:
            return []
        assert st == 200, body
        return sorted(d["00100020"]["Value"][0] for d in json.loads(body))

    assert found("王*") == ["IX1", "IX2", "IX6"]
    assert found("王?") == ["IX2"]
    assert found("王小*") == ["IX1"]
    assert found("*王") == ["IX4", "IX6"]
    assert found("汪*") == ["IX3"]
    # pinyin beginnings use a range of upper(name) (migration 0060) and fold ASCII case
    # exactly as the LIKE does
    assert found("wang*") == ["IX5", "IX7", "IX8"]
    assert found("WANG*") == found("Wang*") == ["IX5", "IX7", "IX8"]
    assert found("WANG^XIAO*") == ["IX7"]
    assert found("wan?*") == ["IX11", "IX5", "IX7", "IX8", "IX9"]     # ? is the space
    assert found("ZHANG^XIAO*") == ["IX10"]
    assert found("WAN*") == ["IX11", "IX5", "IX7", "IX8", "IX9"]


def test_metadata_sidecars_made_at_ingest_serve_a_cold_start(live, catalog, tmp_path,
                                                             monkeypatch):
    """WADO-RS metadata after a restart was ~1.1 s for 300 slices (every header parsed
    again). Each instance's DICOM JSON is now kept next to its fast copy at ingest, checked
    against the file's SHA-256, and remade when missing or stale."""
    import adapters.dicomweb as dw
    from models.schema import Instance
    from server.handlers import dicomweb as handlers
    for k in range(3):
        (tmp_path / f"{k}.dcm").write_bytes(ct_bytes(
            study_uid=STUDY, series_uid=SERIES, sop_uid=f"{SERIES}.{k + 1}", name="孙^丽",
            charset="ISO_IR 192"))
    assert Importer(catalog).run([tmp_path]).imported == 3
    st = catalog.storage
    rows = {i.sop_uid: i for i in Instance.select()}
    sides = {sop: st.metadata_of(i.file_path) for sop, i in rows.items()}
    assert all(st.read(p).startswith(f"cfmeta1 {rows[s].sha256}\n".encode())
               for s, p in sides.items())
    url = f"/dicomweb/studies/{STUDY}/series/{SERIES}/metadata"

    def cold_get():                       # what a restart empties
        handlers._meta_cache.data.clear()
        handlers._doc_cache.data.clear()
        st_, doc = live.json(url)
        assert st_ == 200
        return sorted(doc, key=lambda d: d["00080018"]["Value"][0])

    expected = cold_get()
    assert len(expected) == 3 and expected[0]["00100010"]["Value"] == [{"Alphabetic": "孙^丽"}]
    assert expected[0]["7FE00010"]["BulkDataURI"] == (
        f"{live.url}/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.1"
        "/bulkdata/7FE00010")

    def no_parsing(*a, **kw):
        raise AssertionError("a cold metadata request parsed a DICOM header")
    with monkeypatch.context() as m:      # served from the sidecars alone
        m.setattr(dw, "metadata_json_header", no_parsing)
        assert cold_get() == expected
    # a sidecar made from other bytes, a damaged one and a deleted one are made again
    one, two, three = sorted(sides)
    st.remove(sides[one])
    st.put_atomic(sides[one], b"cfmeta1 " + b"0" * 64 + b"\n[]", durable=False)
    st.remove(sides[two])
    st.put_atomic(sides[two], b"\x00garbage", durable=False)
    st.remove(sides[three])
    assert cold_get() == expected
    assert all(st.read(p).startswith(f"cfmeta1 {rows[s].sha256}\n".encode())
               for s, p in sides.items())
    # an intact first line over a damaged body (a flipped byte, a cut-off write) is remade
    # too: not dropped from the answer, not served as broken JSON
    for sop, body in ((one, b"\xff\xfe{"), (two, st.read(sides[two])[:-40])):
        head = f"cfmeta1 {rows[sop].sha256}\n".encode()
        st.remove(sides[sop])
        st.put_atomic(sides[sop], head + (body if sop == one else body[len(head):]),
                      durable=False)
    assert cold_get() == expected
    assert all(st.read(p).endswith(b"}") for p in sides.values())
    # a corrected resend is a new version: its own file, its own sidecar, the new value shown
    (tmp_path / "0.dcm").write_bytes(ct_bytes(
        study_uid=STUDY, series_uid=SERIES, sop_uid=f"{SERIES}.1", name="孙^丽",
        charset="ISO_IR 192", accession="A002"))
    for k in (1, 2):
        (tmp_path / f"{k}.dcm").unlink()
    assert Importer(catalog).run([tmp_path]).versions == 1
    v2 = Instance.get(Instance.sop_uid == f"{SERIES}.1")
    assert v2.file_path != rows[one].file_path
    assert st.read(st.metadata_of(v2.file_path)).startswith(f"cfmeta1 {v2.sha256}".encode())
    assert cold_get()[0]["00080050"]["Value"] == ["A002"]
