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
             "6": "王"}
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
    assert found("wang*") == ["IX5"]
