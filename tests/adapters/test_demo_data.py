"""generate_demo: real, decodable, deterministic DICOM with Chinese names and reports."""
from __future__ import annotations

import datetime as dt
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pypdfium2 as pdfium
import pytest

from adapters.demo_data import CT_LUNG_APEX_Z, DemoSet, gb11643_check_digit, generate_demo

CATEGORY = {"CT": "radiology", "MR": "radiology", "DX": "radiology", "CR": "radiology",
            "US": "ultrasound", "ES": "endoscopy", "SM": "pathology"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, DemoSet]:
    out = tmp_path_factory.mktemp("demo")
    return out, generate_demo(out, ct_slices=12, size=128)


@pytest.fixture(scope="module")
def datasets(demo) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in demo[1].files]


def _by_accession(datasets) -> dict[str, list[pydicom.Dataset]]:
    groups = defaultdict(list)
    for ds in datasets:
        groups[ds.AccessionNumber].append(ds)
    for v in groups.values():
        v.sort(key=lambda d: int(d.InstanceNumber))
    return groups


def test_every_file_reads_back_and_decodes(demo, datasets):
    out, result = demo
    assert len(result.files) == len(set(result.files)) > 0
    on_disk = sorted(p for p in out.rglob("*.dcm"))
    assert on_disk == sorted(result.files)
    for ds in datasets:
        arr = ds.pixel_array
        frames = int(ds.get("NumberOfFrames", 1))
        expected = (ds.Rows, ds.Columns) if frames == 1 else (frames, ds.Rows, ds.Columns)
        if ds.SamplesPerPixel == 3:
            expected += (3,)
        assert arr.shape == expected, ds.AccessionNumber
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.1373.")


def test_sop_classes_and_modalities(datasets):
    expected = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
                "US": "1.2.840.10008.5.1.4.1.1.3.1", "ES": "1.2.840.10008.5.1.4.1.1.77.1.1",
                "SM": "1.2.840.10008.5.1.4.1.1.77.1.3", "CR": "1.2.840.10008.5.1.4.1.1.1"}
    seen = set()
    for ds in datasets:
        assert ds.SOPClassUID == expected[ds.Modality]
        seen.add(ds.Modality)
    assert {CATEGORY[m] for m in seen} == {"radiology", "ultrasound", "endoscopy", "pathology"}


def test_chinese_names_decode_with_their_character_sets(datasets):
    names = {}
    for ds in datasets:
        names[ds.PatientID] = (str(ds.PatientName), ds.SpecificCharacterSet)
        assert ds.InstitutionName == "中山市东凤人民医院"
        assert re.search(r"[\u4e00-\u9fff]", ds.StudyDescription)
        assert re.search(r"[\u4e00-\u9fff]", ds.SeriesDescription)
    assert names["DF100231"] == ("张伟", "ISO_IR 192")
    assert names["DF100487"] == ("李秀英", "GB18030")
    assert names["DF100652"] == ("王芳", "ISO_IR 192")
    assert names["DF100918"][0] == "Chen^Jianguo=陈^建国"
    # raw bytes really are in the declared encoding
    gb = next(ds for ds in datasets if ds.PatientID == "DF100487")
    raw = pydicom.dcmread(gb.filename, defer_size=None)
    assert raw.get_item((0x0010, 0x0010)).value == "李秀英".encode("gb18030")


def test_uids_are_stable_across_runs(demo, tmp_path):
    _, first = demo
    second = generate_demo(tmp_path, ct_slices=12, size=128)
    uids = lambda files: [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files]  # noqa: E731
    assert uids(first.files) == uids(second.files)
    assert [r["study_uid"] for r in first.reports] == [r["study_uid"] for r in second.reports]
    # pixels too
    a, b = first.files[5], second.files[5]
    assert np.array_equal(pydicom.dcmread(a).pixel_array, pydicom.dcmread(b).pixel_array)


def test_ct_geometry_and_hounsfield_units(datasets):
    groups = _by_accession(datasets)
    for accession in ("CT2603120015", "CT2610200042"):
        series = groups[accession]
        assert len(series) == 12
        z = [float(ds.ImagePositionPatient[2]) for ds in series]
        assert all(b > a for a, b in zip(z, z[1:])), "z must increase with InstanceNumber"
        step = float(series[0].SliceThickness)
        assert np.allclose(np.diff(z), step, atol=1e-3)
        first = series[0]
        assert first.pixel_array.dtype == np.int16
        assert (float(first.RescaleIntercept), float(first.RescaleSlope)) == (-1024.0, 1.0)
        assert list(map(float, first.ImageOrientationPatient)) == [1, 0, 0, 0, 1, 0]
        assert len({ds.FrameOfReferenceUID for ds in series}) == 1
        assert len({ds.SeriesInstanceUID for ds in series}) == 1

        # mid-chest slice: lung apex z minus ~120 mm
        chest = min(series, key=lambda ds: abs(float(ds.ImagePositionPatient[2]) - (CT_LUNG_APEX_Z - 120)))
        hu = chest.pixel_array.astype(np.float32) * float(chest.RescaleSlope) + float(chest.RescaleIntercept)
        ps = float(chest.PixelSpacing[0])
        x0, y0 = float(chest.ImagePositionPatient[0]), float(chest.ImagePositionPatient[1])

        def at(x_mm: float, y_mm: float, r: int = 2) -> np.ndarray:
            c, row = int(round((x_mm - x0) / ps)), int(round((y_mm - y0) / ps))
            return hu[row - r: row + r + 1, c - r: c + r + 1]

        assert abs(hu[:8, :8].mean() + 1000) < 15, "air outside the body"
        assert np.median(at(-95.0, 30.0)) < -500, "right lung"
        assert np.median(at(95.0, 30.0)) < -500, "left lung"
        yb = 110 - 50  # vertebral body centre in the chest
        assert at(0.0, yb, r=int(20 / ps)).max() > 500, "spine"
        assert 0 < np.median(at(14.0, -22.0)) < 80, "heart"


def test_two_ct_exams_for_patient_a_on_different_dates(datasets):
    studies = {(ds.StudyInstanceUID, ds.StudyDate) for ds in datasets if ds.PatientID == "DF100231"}
    assert len(studies) == 2
    assert {d for _, d in studies} == {"20260312", "20261020"}


def test_one_patient_has_all_four_kinds_of_image(demo, datasets):
    """R2.5: patient E (杨桂芬) has a CT, an ultrasound, a gastroscopy and a biopsy, small ones."""
    _, result = demo
    exams = [e for e in result.exams if e["patient_id"] == "DF101164"]
    assert sorted(e["modality"] for e in exams) == ["CT", "ES", "SM", "US"]
    assert {CATEGORY[e["modality"]] for e in exams} == {"radiology", "ultrasound", "endoscopy", "pathology"}
    mine = [ds for ds in datasets if ds.PatientID == "DF101164"]
    assert {str(ds.PatientName) for ds in mine} == {"杨桂芬"}
    assert len({ds.StudyInstanceUID for ds in mine}) == 4
    ct = [ds for ds in mine if ds.Modality == "CT"]
    assert len(ct) == 12 and ct[0].Rows == 128           # follows ct_slices / size, capped at 48 × 256
    (sm,) = [ds for ds in mine if ds.Modality == "SM"]
    assert (sm.Rows, sm.Columns) == (768, 1024) and sm.ContainerIdentifier == "B2026-09004-1"
    (us,) = [ds for ds in mine if ds.Modality == "US"]
    assert int(us.NumberOfFrames) == 16


def test_other_exams_have_the_promised_shape(datasets):
    groups = _by_accession(datasets)
    mr = groups["MR2606080023"]
    assert len({ds.SeriesInstanceUID for ds in mr}) == 2 and len(mr) == 48
    assert mr[0].Rows == 256 and mr[0].pixel_array.dtype == np.uint16
    (us,) = groups["US2606090108"]
    assert int(us.NumberOfFrames) >= 30 and (us.Rows, us.Columns) == (480, 640)
    assert us.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert float(us.FrameTime) > 0 and int(us.CineRate) > 0
    es = groups["ES2607150031"]
    assert len(es) >= 4 and all((d.Rows, d.Columns, d.SamplesPerPixel) == (480, 640, 3) for d in es)
    rgb = es[0].pixel_array.reshape(-1, 3)[::97].astype(int)
    lit = rgb[rgb.sum(axis=1) > 150]
    assert (lit[:, 0] > lit[:, 2]).mean() > 0.9, "mucosa should be reddish"
    (sm,) = groups["BL2607150007"]
    assert (sm.Rows, sm.Columns, sm.SamplesPerPixel) == (3072, 4096, 3)
    (cr,) = groups["CR2608030056"]
    assert cr.PhotometricInterpretation == "MONOCHROME1" and cr.pixel_array.shape == (1955, 1841)
    assert "OtherPatientIDs" not in cr and cr.PatientID == "DF100918"


def test_patients_have_valid_ids_and_phones(demo):
    _, result = demo
    assert len(result.patients) == 5
    for p in result.patients:
        nid = p["national_id"]
        assert len(nid) == 18 and nid[-1] == gb11643_check_digit(nid[:17])
        assert nid[6:14] == p["birth_date"].strftime("%Y%m%d")
        assert int(nid[16]) % 2 == (1 if p["sex"] == "M" else 0)
        assert re.fullmatch(r"1[3-9]\d{9}", p["phone"])
        assert re.search(r"[\u4e00-\u9fff]", p["name"])


def test_gb11643_known_value():
    # the example from GB 11643-1999 Annex A
    assert gb11643_check_digit("11010519491231002") == "X"


def test_one_valid_report_per_exam(demo, datasets):
    _, result = demo
    studies = {ds.StudyInstanceUID: ds for ds in datasets}
    assert {r["study_uid"] for r in result.reports} == set(studies)
    assert len(result.reports) == len(studies) == len(result.exams) == 11
    for r in result.reports:
        ds = studies[r["study_uid"]]
        assert r["accession_number"] == ds.AccessionNumber and r["patient_id"] == ds.PatientID
        assert r["status"] == "final" and isinstance(r["signed_at"], dt.datetime)
        assert r["author"] and r["reviewer"] and r["findings"] and r["impression"]
        doc = pdfium.PdfDocument(r["pdf"])
        assert 1 <= len(doc) <= 2
        text = re.sub(r"\s+", "", doc[0].get_textpage().get_text_range())
        assert r["accession_number"] in text and "本报告仅供临床参考" in text
        assert re.sub(r"\s+", "", r["impression"])[:10] in re.sub(r"\s+", "", "".join(
            doc[i].get_textpage().get_text_range() for i in range(len(doc))))


def test_full_default_demo(tmp_path):
    """The defaults (2 × 220 × 512²): ~10 s and ~240 MB on 2 cores, so it stays in the default run."""
    start = time.perf_counter()
    result = generate_demo(tmp_path)
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in result.files)
    ct = [p for p in result.files if "CT26" in str(p) and "DF100231" in str(p)]
    assert len(ct) == 440
    last = pydicom.dcmread(ct[-1])
    assert (last.Rows, last.Columns) == (512, 512)
    assert elapsed < 60, f"full demo took {elapsed:.1f} s"
    assert size > 200e6
    shutil.rmtree(tmp_path, ignore_errors=True)
