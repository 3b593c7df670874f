"""Deterministic demo data: five synthetic patients, eleven exams, Chinese reports.

``generate_demo(out_dir)`` writes real DICOM Part 10 files (proper SOP classes,
Chinese names in ISO_IR 192 / GB18030, UIDs under a fixed root) and returns a
:class:`DemoSet` with the file list, the patients' contact data and one signed
report (with its PDF) per exam:

=====  ==========  ========================================================
pt     modality    exam
=====  ==========  ========================================================
A      CT          chest + abdomen, 2026-03-12 (``ct_slices`` × ``size``²)
A      CT          chest + abdomen, 2026-10-20, the lung nodule has grown
B      MR          brain, T2WI and T1WI axial, 24 slices 256×256 uint16
B      US          upper abdomen cine, 32 frames 480×640 JPEG baseline
C      ES          gastroscopy, 4 images 640×480 JPEG baseline
C      SM          gastric biopsy H&E, one 4096×3072 JPEG baseline image
D      CR          chest PA, pixels of pydicom-data's RG1_UNCR.dcm
E      CT          chest + abdomen, at most 48 × 256² (one patient with the
E      US          upper abdomen cine, 16 frames   four kinds of image:
E      ES          gastroscopy, 4 images           radiology, ultrasound,
E      SM          gastric biopsy H&E, 1024×768    endoscopy, pathology)
=====  ==========  ========================================================

Everything is synthetic (names, ID numbers, phone numbers, pictures), for
demonstrations and tests only. The same arguments give the same UIDs, pixels
and PDF bytes on every run.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from adapters.cjk_font import find_cjk_font
from adapters.pdf_report import DEFAULT_HOSPITAL, age_text, make_report_pdf

log = logging.getLogger(__name__)

UID_ROOT = "1.2.826.0.1.3680043.10.1373."
HOSPITAL = DEFAULT_HOSPITAL
CT_LUNG_APEX_Z = -60.0  # patient z (mm) of the lung apices in both CT exams
CT_FOV_MM = 360.0

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
VL_ENDOSCOPIC_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.1"
VL_SLIDE_MICROSCOPIC_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.3"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def demo_uid(*parts: int) -> str:
    """UID under the demo root, e.g. ``demo_uid(3, 1, 2, 17)``; stable across runs."""
    value = UID_ROOT + ".".join(str(int(p)) for p in parts)
    if len(value) > 64:
        raise ValueError(f"UID {value} is longer than 64 characters")
    return value


def gb11643_check_digit(first17: str) -> str:
    """Check character of a mainland resident ID number (GB 11643-1999, ISO 7064 MOD 11-2)."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError(f"need the first 17 digits of an ID number, got {len(first17)} characters")
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights)) % 11]


def national_id(region: str, birth: dt.date, sequence: int, sex: str) -> str:
    """A syntactically valid 18-character resident ID (sequence parity follows sex)."""
    seq = sequence - sequence % 2 + (1 if sex == "M" else 0)
    first17 = f"{region}{birth:%Y%m%d}{seq:03d}"
    return first17 + gb11643_check_digit(first17)


# --------------------------------------------------------------------------- data model
@dataclasses.dataclass
class DemoSet:
    """What :func:`generate_demo` wrote.

    ``files``: every DICOM file; ``reports``: one per exam, keys ``study_uid,
    accession_number, patient_id, findings, impression, author, reviewer,
    signed_at`` (datetime), ``status`` (``"final"``), ``pdf`` (bytes);
    ``patients``: ``patient_id, name, sex, birth_date`` (date), ``phone``,
    ``national_id``; ``exams``: ``study_uid, accession_number, patient_id,
    modality, study_date`` (date), ``study_description, files``.
    """

    files: list[Path] = dataclasses.field(default_factory=list)
    reports: list[dict] = dataclasses.field(default_factory=list)
    patients: list[dict] = dataclasses.field(default_factory=list)
    exams: list[dict] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _Patient:
    patient_id: str
    name: str  # the DICOM PN value
    display_name: str
    sex: str
    birth_date: dt.date
    charset: str
    phone: str
    national_id: str


@dataclasses.dataclass(frozen=True)
class _Exam:
    number: int
    patient: _Patient
    modality: str
    accession: str
    when: dt.datetime
    description: str
    department: str
    referring: str
    body_part: str

    @property
    def study_uid(self) -> str:
        return demo_uid(1, self.number)

    def series_uid(self, series: int) -> str:
        return demo_uid(2, self.number, series)

    def instance_uid(self, series: int, instance: int) -> str:
        return demo_uid(3, self.number, series, instance)

    @property
    def frame_of_reference_uid(self) -> str:
        return demo_uid(4, self.number)


def _patients() -> dict[str, _Patient]:
    def make(key, pid, name, display, sex, born, charset, phone, seq):
        return key, _Patient(pid, name, display, sex, born, charset, phone,
                             national_id("442000", born, seq, sex))

    return dict(
        [
            make("A", "DF100231", "张伟", "张伟", "M", dt.date(1968, 5, 14), "ISO_IR 192", "13902761135", 17),
            make("B", "DF100487", "李秀英", "李秀英", "F", dt.date(1975, 9, 3), "GB18030", "13631178204", 42),
            make("C", "DF100652", "王芳", "王芳", "F", dt.date(1982, 1, 26), "ISO_IR 192", "18927305516", 8),
            # alphabetic=ideographic component groups, as many Chinese modalities send it
            make("D", "DF100918", "Chen^Jianguo=陈^建国", "陈建国", "M", dt.date(1957, 11, 8), "ISO_IR 192",
                 "13725369087", 23),
            make("E", "DF101164", "杨桂芬", "杨桂芬", "F", dt.date(1963, 4, 19), "ISO_IR 192", "13528417960", 36),
        ]
    )


def _exams(p: dict[str, _Patient]) -> list[_Exam]:
    return [
        _Exam(1, p["A"], "CT", "CT2603120015", dt.datetime(2026, 3, 12, 9, 14, 22), "胸部+全腹部CT平扫",
              "呼吸内科", "林海", "CHEST"),
        _Exam(2, p["A"], "CT", "CT2610200042", dt.datetime(2026, 10, 20, 10, 32, 5), "胸部+全腹部CT平扫(复查)",
              "呼吸内科", "林海", "CHEST"),
        _Exam(3, p["B"], "MR", "MR2606080023", dt.datetime(2026, 6, 8, 14, 5, 40), "颅脑MR平扫",
              "神经内科", "赵丽", "HEAD"),
        _Exam(4, p["B"], "US", "US2606090108", dt.datetime(2026, 6, 9, 8, 47, 13), "肝胆胰脾彩超",
              "神经内科", "赵丽", "ABDOMEN"),
        _Exam(5, p["C"], "ES", "ES2607150031", dt.datetime(2026, 7, 15, 9, 2, 51), "电子胃镜检查",
              "消化内科", "梁永健", "STOMACH"),
        _Exam(6, p["C"], "SM", "BL2607150007", dt.datetime(2026, 7, 16, 15, 20, 0), "胃窦黏膜活检病理",
              "消化内科", "梁永健", "STOMACH"),
        _Exam(7, p["D"], "CR", "CR2608030056", dt.datetime(2026, 8, 3, 11, 26, 9), "胸部正位X线摄影",
              "肿瘤科", "罗志明", "CHEST"),
        # one patient with all four kinds of image (radiology, ultrasound, endoscopy, pathology)
        _Exam(8, p["E"], "CT", "CT2609020027", dt.datetime(2026, 9, 2, 15, 41, 7), "胸部+全腹部CT平扫",
              "消化内科", "梁永健", "ABDOMEN"),
        _Exam(9, p["E"], "US", "US2609030066", dt.datetime(2026, 9, 3, 9, 12, 30), "肝胆胰脾彩超",
              "消化内科", "梁永健", "ABDOMEN"),
        _Exam(10, p["E"], "ES", "ES2609040018", dt.datetime(2026, 9, 4, 10, 5, 44), "电子胃镜检查",
              "消化内科", "梁永健", "STOMACH"),
        _Exam(11, p["E"], "SM", "BL2609050004", dt.datetime(2026, 9, 5, 16, 2, 0), "胃体黏膜活检病理",
              "消化内科", "梁永健", "STOMACH"),
    ]


# --------------------------------------------------------------------------- DICOM helpers
def _base_dataset(exam: _Exam, sop_class: str, series: int, series_description: str,
                  when: dt.datetime | None = None) -> Dataset:
    """Patient, study, series and equipment attributes shared by every instance of a series."""
    when = when or exam.when
    ds = Dataset()
    ds.SpecificCharacterSet = exam.patient.charset
    ds.SOPClassUID = sop_class
    ds.StudyDate = f"{exam.when:%Y%m%d}"
    ds.StudyTime = f"{exam.when:%H%M%S}"
    ds.SeriesDate = ds.ContentDate = f"{when:%Y%m%d}"
    ds.SeriesTime = ds.ContentTime = f"{when:%H%M%S}"
    ds.AccessionNumber = exam.accession
    ds.Modality = exam.modality
    ds.Manufacturer = "CloudFilm Demo"
    ds.ManufacturerModelName = f"Synthetic {exam.modality}"
    ds.InstitutionName = HOSPITAL
    ds.InstitutionalDepartmentName = {"CT": "放射科", "MR": "放射科", "CR": "放射科", "US": "超声科",
                                      "ES": "内镜中心", "SM": "病理科"}[exam.modality]
    ds.ReferringPhysicianName = exam.referring
    ds.StudyDescription = exam.description
    ds.SeriesDescription = series_description
    ds.PatientName = exam.patient.name
    ds.PatientID = exam.patient.patient_id
    ds.IssuerOfPatientID = "DFRMYY"
    ds.PatientBirthDate = f"{exam.patient.birth_date:%Y%m%d}"
    ds.PatientSex = exam.patient.sex
    ds.PatientAge = _dicom_age(exam.patient.birth_date, exam.when.date())
    ds.BodyPartExamined = exam.body_part
    ds.StudyInstanceUID = exam.study_uid
    ds.SeriesInstanceUID = exam.series_uid(series)
    ds.StudyID = str(exam.number)
    ds.SeriesNumber = series
    ds.DeviceSerialNumber = "DEMO0001"
    ds.SoftwareVersions = "cloudfilm-demo 1"
    return ds


def _dicom_age(born: dt.date, on: dt.date) -> str:
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return f"{years:03d}Y"


def _write(path: Path, ds: Dataset, transfer_syntax: str, instance_uid: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = demo_uid(0, 1)
    meta.ImplementationVersionName = "CLOUDFILM_DEMO"
    ds.file_meta = meta
    ds.SOPInstanceUID = instance_uid
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _set_color_jpeg(ds: Dataset, jpeg_frames: list[bytes], rows: int, cols: int,
                    raw_bytes: int) -> None:
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.LossyImageCompressionRatio = f"{raw_bytes / sum(len(f) for f in jpeg_frames):.2f}"[:16]
    ds.PixelData = encapsulate(jpeg_frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    # subsampling=1 is 4:2:2, which is what YBR_FULL_422 declares
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling=1, optimize=False)
    return buf.getvalue()


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise in [0, 1] with features about ``cell`` pixels wide (cheap: bicubic upscale)."""
    small = rng.random((h // cell + 3, w // cell + 3)).astype(np.float32)
    img = Image.fromarray(small).resize((w + 3 * cell, h + 3 * cell), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)[cell: cell + h, cell: cell + w]


# --------------------------------------------------------------------------- CT phantom
class _Slice:
    """One axial slice of the CT phantom in Hounsfield units, painted shape by shape."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray, fill: float) -> None:
        self.xs, self.ys = xs, ys
        self.img = np.full((ys.size, xs.size), fill, dtype=np.float32)

    def _window(self, cx: float, cy: float, ax: float, ay: float):
        c0, c1 = np.searchsorted(self.xs, [cx - ax, cx + ax])
        r0, r1 = np.searchsorted(self.ys, [cy - ay, cy + ay])
        if c1 <= c0 or r1 <= r0:
            return None
        dx = ((self.xs[c0:c1] - cx) / ax)[None, :]
        dy = ((self.ys[r0:r1] - cy) / ay)[:, None]
        return (slice(r0, r1), slice(c0, c1)), dx, dy

    def ellipse(self, cx: float, cy: float, ax: float, ay: float, value: float,
                only: float | None = None) -> None:
        """Fill an axis-aligned ellipse (optionally only over pixels currently == ``only``)."""
        if ax <= 0 or ay <= 0:
            return
        win = self._window(cx, cy, ax, ay)
        if win is None:
            return
        sl, dx, dy = win
        mask = dx * dx + dy * dy <= 1.0
        sub = self.img[sl]
        if only is not None:
            mask &= sub == only
        sub[mask] = value


def _profile(s: float, knots: list[tuple[float, float]]) -> float:
    xs, ys = zip(*knots)
    return float(np.interp(s, xs, ys))


def _bump(s: float, start: float, end: float) -> float:
    """0 outside [start, end], a smooth half-sine inside (organ size along z)."""
    if s <= start or s >= end:
        return 0.0
    return math.sin(math.pi * (s - start) / (end - start)) ** 0.5


class _CTPhantom:
    """Chest + abdomen phantom; anatomy in patient mm, ``s`` = mm below the lung apex."""

    def __init__(self, size: int, rng: np.random.Generator, nodule_radius: float,
                 shift_xy: tuple[float, float]) -> None:
        self.size = size
        self.ps = CT_FOV_MM / size
        self.x0 = -(size - 1) / 2 * self.ps + shift_xy[0]
        self.y0 = -(size - 1) / 2 * self.ps + shift_xy[1]
        self.xs = (self.x0 + np.arange(size) * self.ps).astype(np.float32)
        self.ys = (self.y0 + np.arange(size) * self.ps).astype(np.float32)
        self.nodule_radius = nodule_radius
        X, Y = np.meshgrid(self.xs, self.ys)
        self.theta = np.arctan2(Y, X).astype(np.float32)
        self.X, self.Y = X, Y
        # noise pool: windows of a larger field, different for every slice
        self.noise = rng.standard_normal((2 * size, 2 * size), dtype=np.float32) * 12.0
        self.rng = rng
        # lung vessels: straight segments radiating from each hilum (x, y, s, direction, length, radius)
        vessels = []
        for side in (-1, 1):
            for _ in range(110):
                d = rng.normal(size=3) * (1.0, 1.0, 1.4)
                d[0] = side * abs(d[0]) + side * 0.4
                d /= np.linalg.norm(d)
                if abs(d[2]) < 0.25:
                    d[2] = math.copysign(0.25, d[2] if d[2] else 1.0)
                    d /= np.linalg.norm(d)
                vessels.append((side * 42.0, 2.0, 130.0, d, rng.uniform(60, 170), rng.uniform(1.6, 3.6)))
        self.vessels = vessels
        # bowel loops: tubes meandering along z (x, y, radius, phase, gas)
        self.bowel = [(rng.uniform(-105, 105), rng.uniform(-75, 45), rng.uniform(9, 16),
                       rng.uniform(0, 2 * math.pi), rng.random() < 0.45) for _ in range(44)]

    def slice_hu(self, s: float, k: int) -> np.ndarray:
        a = _profile(s, [(-40, 150), (0, 160), (120, 168), (250, 160), (380, 150), (480, 162), (560, 168)])
        b = _profile(s, [(-40, 95), (0, 102), (120, 110), (250, 112), (380, 115), (480, 105), (560, 105)])
        sl = _Slice(self.xs, self.ys, -1000.0)
        # patient table (carbon fibre) under the body
        sl.ellipse(0.0, b + 10 + 400, 200.0, 402.0, 150.0)
        sl.ellipse(0.0, b + 10 + 400, 198.0, 398.0, -1000.0)
        # body: skin/subcutaneous fat, muscle wall, cavity
        sl.ellipse(0.0, 0.0, a, b, -100.0)
        sl.ellipse(0.0, 3.0, a - 13, b - 12, 45.0)
        chest = s < 250
        cav_a, cav_b = a - 26, b - 24
        sl.ellipse(0.0, 0.0, cav_a, cav_b, -90.0)  # mediastinal / mesenteric fat

        # spine: vertebral body (cortex + cancellous, discs every 30 mm), posterior elements
        yb = b - 50
        disc = (s % 30.0) < 5.0
        sl.ellipse(0.0, yb, 18.0, 16.0, 80.0 if disc else 1100.0)
        if not disc:
            sl.ellipse(0.0, yb, 14.5, 12.5, 320.0)
        sl.ellipse(0.0, yb + 21, 7.0, 5.0, -90.0)  # spinal canal (CSF ~ fat here, simple)
        sl.ellipse(0.0, yb + 21, 6.0, 4.5, 10.0)
        sl.ellipse(-14.0, yb + 25, 9.0, 5.0, 900.0)  # laminae
        sl.ellipse(14.0, yb + 25, 9.0, 5.0, 900.0)
        sl.ellipse(0.0, yb + 40, 4.5, 12.0, 850.0)  # spinous process
        if not chest:
            sl.ellipse(-38.0, yb + 8, 16.0, 10.0, 50.0, only=-90.0)  # psoas / crura
            sl.ellipse(38.0, yb + 8, 16.0, 10.0, 50.0, only=-90.0)
            sl.ellipse(-55.0, yb + 38, 28.0, 18.0, 50.0)  # paraspinal muscles
            sl.ellipse(55.0, yb + 38, 28.0, 18.0, 50.0)

        if chest:
            self._chest(sl, s, a, b, cav_a, cav_b, yb, k)
        if 45 <= s < 440:  # descending aorta
            sl.ellipse(20.0, yb - 30.0, 11.5, 11.5, 42.0)
        elif 440 <= s < 520:  # common iliac arteries
            off = 20.0 + (s - 440) * 0.45
            sl.ellipse(20.0 - off, yb - 30.0, 7.0, 7.0, 42.0)
            sl.ellipse(20.0 + off * 0.6, yb - 30.0, 7.0, 7.0, 42.0)
        if s > 200:
            self._abdomen(sl, s, a, b, yb, k)
        if s > 450:  # iliac wings
            w = _bump(s, 450, 620)
            for side in (-1, 1):
                sl.ellipse(side * 82.0, yb - 5, 42.0 * w, 11.0, 1000.0)
                sl.ellipse(side * 82.0, yb - 5, 38.0 * w, 7.0, 300.0)
        img = sl.img
        # partial volume: a [1 2 1]/4 blur in both directions
        img[1:-1, :] = 0.5 * img[1:-1, :] + 0.25 * (img[:-2, :] + img[2:, :])
        img[:, 1:-1] = 0.5 * img[:, 1:-1] + 0.25 * (img[:, :-2] + img[:, 2:])
        oy, ox = (k * 37) % self.size, (k * 61) % self.size
        img += self.noise[oy: oy + self.size, ox: ox + self.size]
        return img

    def _chest(self, sl: _Slice, s: float, a: float, b: float, cav_a: float, cav_b: float,
               yb: float, k: int) -> None:
        # lungs: grow from the apex, right base lower than the left (liver dome)
        for side, end in ((-1, 232.0), (1, 248.0)):
            f = _profile(s, [(-5, 0.0), (0, 0.25), (60, 0.92), (150, 1.0), (end - 40, 0.95), (end, 0.35),
                             (end + 0.1, 0.0)])
            if f > 0:
                sl.ellipse(side * 68.0, 8.0, 58.0 * f, min(cav_b - 4, 86.0 * f), -850.0)
        # lung vessels, tapering away from the hilum
        for hx, hy, hs, d, length, r0 in self.vessels:
            t = (s - hs) / d[2]
            if 0 < t < length:
                r = r0 * (1 - 0.7 * t / length)
                sl.ellipse(hx + d[0] * t, hy + d[1] * t, r / max(abs(d[2]), 0.5), r, -60.0, only=-850.0)
        # trachea / main bronchi
        if s < 110:
            sl.ellipse(0.0, -20.0, 11.0, 10.0, 40.0)
            sl.ellipse(0.0, -20.0, 8.5, 7.5, -1000.0)
            sl.ellipse(0.0, 8.0, 7.0, 6.0, 35.0)  # oesophagus
        elif s < 135:
            for side in (-1, 1):
                sl.ellipse(side * 18.0, -12.0, 7.0, 6.5, 40.0)
                sl.ellipse(side * 18.0, -12.0, 5.0, 4.5, -1000.0)
        # aortic arch, ascending + descending aorta, heart
        if 35 <= s < 58:
            sl.ellipse(6.0, -8.0, 15.0, 38.0, 42.0)
        elif 58 <= s < 200:
            sl.ellipse(-8.0, -25.0, 15.0, 15.0, 42.0)  # ascending aorta
        h = _bump(s, 100, 235)
        if h > 0:
            sl.ellipse(14.0, -22.0, 62.0 * h, 50.0 * h, 40.0)
            sl.ellipse(16.0, -18.0, 44.0 * h, 34.0 * h, 35.0)
        # sternum
        if 15 < s < 200:
            sl.ellipse(0.0, -(b - 15), 15.0, 6.5, 700.0)
            sl.ellipse(0.0, -(b - 15), 12.0, 3.5, 250.0)
        # ribs: short oblique bone segments around the cavity, phase drifting with s
        if s < 260:
            bx, by = cav_a + 8, cav_b + 7
            rr = np.sqrt((self.X / bx) ** 2 + (self.Y / by) ** 2)
            band = np.abs(rr - 1.0) < 0.045
            ribs = band & (np.cos(11.0 * self.theta + s * 0.21) > 0.45) & (np.abs(self.X) > 28.0)
            sl.img[ribs] = 850.0
        # pulmonary nodule, right upper lobe (grows between the two exams)
        r = self.nodule_radius
        ds = s - 85.0
        if abs(ds) < r:
            rc = math.sqrt(r * r - ds * ds)
            sl.ellipse(-78.0, -22.0, rc, rc, 35.0)

    def _abdomen(self, sl: _Slice, s: float, a: float, b: float, yb: float, k: int) -> None:
        if s > 240:
            sl.ellipse(-22.0, yb - 28.0, 12.0, 10.0, 38.0)  # IVC
        liver = _bump(s, 212, 395)
        if liver > 0:
            sl.ellipse(-58.0, 2.0, 82.0 * liver, 88.0 * liver, 60.0, only=-90.0)
            left = _bump(s, 228, 305)
            if left > 0:
                sl.ellipse(5.0, -52.0, 55.0 * left, 26.0 * left, 60.0, only=-90.0)
            if 288 < s < 302:  # small liver cyst
                sl.ellipse(-72.0, 8.0, 6.0, 6.0, 8.0)
        gb = _bump(s, 300, 352)
        if gb > 0:
            sl.ellipse(-38.0, -44.0, 14.0 * gb, 19.0 * gb, 10.0)
        st = _bump(s, 232, 322)
        if st > 0:
            sl.ellipse(52.0, -32.0, 40.0 * st, 34.0 * st, 42.0, only=-90.0)
            sl.ellipse(52.0, -30.0, 34.0 * st, 28.0 * st, 15.0)
            sl.ellipse(52.0, -44.0, 28.0 * st, 12.0 * st, -1000.0)  # gas above the fluid level
        sp = _bump(s, 238, 332)
        if sp > 0:
            sl.ellipse(82.0, 38.0, 28.0 * sp, 44.0 * sp, 50.0, only=-90.0)
        pa = _bump(s, 298, 332)
        if pa > 0:
            sl.ellipse(12.0, 8.0, 55.0 * pa, 10.0 * pa, 45.0, only=-90.0)
        for side, start, end in ((-1, 326.0, 436.0), (1, 312.0, 422.0)):
            kd = _bump(s, start, end)
            if kd > 0:
                sl.ellipse(side * 64.0, yb - 2, 26.0 * kd, 34.0 * kd, 32.0)
                sl.ellipse(side * 56.0, yb - 8, 8.0 * kd, 12.0 * kd, -60.0)
        if s > 325:  # bowel loops meander through the remaining mesenteric fat
            for x, y, r, phase, gas in self.bowel:
                bx = x + 14.0 * math.sin(s / 37.0 + phase)
                by = min(y + 10.0 * math.cos(s / 29.0 + phase), yb - 30.0)
                sl.ellipse(bx, by, r, r * 0.85, 30.0, only=-90.0)
                if gas and math.sin(s / 23.0 + 2 * phase) > 0.2:
                    sl.ellipse(bx, by - r * 0.25, r * 0.5, r * 0.4, -1000.0)


def _write_ct(exam: _Exam, out: Path, *, n: int, size: int, rng: np.random.Generator,
              nodule_radius: float, start_offset: float, shift_xy: tuple[float, float]) -> list[Path]:
    phantom = _CTPhantom(size, rng, nodule_radius, shift_xy)
    coverage = 550.0
    spacing = round(coverage / n, 3)
    s_top = -20.0 + start_offset
    base = _base_dataset(exam, CT_IMAGE_STORAGE, 2, "胸腹部 平扫 1.25mm 标准算法" if spacing < 2 else
                         f"胸腹部 平扫 {spacing:g}mm 标准算法")
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.ProtocolName = "Chest-Abdomen routine"
    base.KVP = "120"
    base.XRayTubeCurrent = 220
    base.ExposureTime = 600
    base.ConvolutionKernel = "STANDARD"
    base.PatientPosition = "HFS"
    base.SliceThickness = f"{spacing:g}"
    base.SpacingBetweenSlices = f"{spacing:g}"
    base.PixelSpacing = [f"{phantom.ps:.6g}", f"{phantom.ps:.6g}"]
    base.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    base.FrameOfReferenceUID = exam.frame_of_reference_uid
    base.PositionReferenceIndicator = ""
    base.AcquisitionNumber = 1
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows = base.Columns = size
    base.BitsAllocated, base.BitsStored, base.HighBit, base.PixelRepresentation = 16, 16, 15, 1
    base.RescaleIntercept, base.RescaleSlope, base.RescaleType = "-1024", "1", "HU"
    base.WindowCenter, base.WindowWidth = "40", "400"
    base.WindowCenterWidthExplanation = "MEDIASTINUM"
    files = []
    folder = out / exam.patient.patient_id / exam.accession / "S2"
    for i in range(1, n + 1):  # instance 1 is the most caudal slice: z increases with InstanceNumber
        s = s_top + (n - i) * spacing
        z = CT_LUNG_APEX_Z - s
        hu = phantom.slice_hu(s, i)
        stored = np.clip(np.rint(hu) + 1024.0, 0, 4095).astype(np.int16)
        ds = base.copy()
        ds.InstanceNumber = i
        ds.ImagePositionPatient = [f"{phantom.x0:.4f}", f"{phantom.y0:.4f}", f"{z:.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        files.append(_write(folder / f"I{i:04d}.dcm", ds, ExplicitVRLittleEndian, exam.instance_uid(2, i)))
    log.info("CT %s: %d slices %dx%d written", exam.accession, n, size, size)
    return files


# --------------------------------------------------------------------------- MR brain
def _mr_labels(size: int, zn: float, ps: float) -> np.ndarray:
    """Tissue labels of one axial brain slice; zn = 0 skull base .. 1 vertex.

    0 air, 1 scalp fat, 2 skull, 3 CSF, 4 grey matter, 5 white matter, 6 lesion, 7 eye/vitreous.
    """
    c = (np.arange(size) - (size - 1) / 2) * ps
    X, Y = np.meshgrid(c, c)
    R = math.sqrt(max(0.0, 1 - ((zn - 0.3) / 0.78) ** 2))
    a, b = 72 * R + 2, 92 * R + 2
    lab = np.zeros((size, size), np.uint8)
    rr = np.sqrt((X / a) ** 2 + (Y / b) ** 2)
    lab[rr <= 1] = 1
    lab[rr <= (1 - 6 / a)] = 2
    lab[rr <= (1 - 12 / a)] = 3
    inner = rr <= (1 - 15 / a)
    lab[inner] = 4
    wm = rr <= (1 - 22 / a)
    lab[wm] = 5
    theta = np.arctan2(Y, X)
    sulci = inner & ~wm & (np.cos(23 * theta + 6 * rr) > 0.86)
    lab[sulci] = 3
    if 0.35 < zn < 0.75:  # lateral ventricles
        v = math.sin(math.pi * (zn - 0.35) / 0.4)
        for side in (-1, 1):
            m = ((X - side * 11) / (5 + 4 * v)) ** 2 + ((Y + 2) / (30 * v + 1)) ** 2 <= 1
            lab[m] = 3
        m = (X / 16) ** 2 + ((Y - 4) / 10) ** 2 <= 1
        lab[m & (lab == 5) & (np.abs(X) > 10)] = 4  # basal ganglia / thalami
    if zn < 0.25:  # orbits / eyes
        for side in (-1, 1):
            m = ((X - side * 30) ** 2 + (Y + b - 20) ** 2) <= 12 ** 2
            lab[m] = 7
    if 0.42 < zn < 0.5:  # lacunar infarct, left basal ganglia (patient left = +x)
        m = ((X - 20) ** 2 + (Y - 6) ** 2) <= 3.2 ** 2
        lab[m] = 6
    return lab


def _write_mr(exam: _Exam, out: Path, rng: np.random.Generator) -> list[Path]:
    size, n, spacing, thick = 256, 24, 6.0, 5.0
    ps = 230.0 / size
    contrast = {  # label -> signal: air, fat, bone, CSF, GM, WM, lesion, vitreous
        3: ("T2WI TSE 轴位", np.array([0, 900, 60, 1900, 1050, 780, 1700, 2000], np.float32), 4200, 102, "SE", "SK"),
        4: ("T1WI SE 轴位", np.array([0, 1500, 60, 300, 700, 950, 420, 280], np.float32), 520, 11, "SE", "NONE"),
    }
    files = []
    x0 = -(size - 1) / 2 * ps
    for series, (desc, lut, tr, te, seq, variant) in contrast.items():
        base = _base_dataset(exam, MR_IMAGE_STORAGE, series, desc,
                             exam.when + dt.timedelta(minutes=4 * (series - 2)))
        base.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        base.ScanningSequence = seq
        base.SequenceVariant = variant
        base.ScanOptions = ""
        base.MRAcquisitionType = "2D"
        base.RepetitionTime = str(tr)
        base.EchoTime = str(te)
        base.EchoTrainLength = 16 if series == 3 else 1
        base.MagneticFieldStrength = "1.5"
        base.ImagingFrequency = "63.87"
        base.ImagedNucleus = "1H"
        base.PatientPosition = "HFS"
        base.SliceThickness = f"{thick:g}"
        base.SpacingBetweenSlices = f"{spacing:g}"
        base.PixelSpacing = [f"{ps:.6g}", f"{ps:.6g}"]
        base.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        base.FrameOfReferenceUID = exam.frame_of_reference_uid
        base.PositionReferenceIndicator = ""
        base.SamplesPerPixel = 1
        base.PhotometricInterpretation = "MONOCHROME2"
        base.Rows = base.Columns = size
        base.BitsAllocated, base.BitsStored, base.HighBit, base.PixelRepresentation = 16, 12, 11, 0
        base.WindowCenter, base.WindowWidth = ("1000", "2000") if series == 3 else ("750", "1500")
        folder = out / exam.patient.patient_id / exam.accession / f"S{series}"
        for i in range(1, n + 1):
            zn = (i - 0.5) / n
            z = -20.0 + (i - 1) * spacing
            lab = _mr_labels(size, zn, ps)
            sig = lut[lab]
            # Rician noise (magnitude of complex Gaussian), smooth bias field
            n1 = rng.standard_normal(sig.shape, dtype=np.float32) * 18
            n2 = rng.standard_normal(sig.shape, dtype=np.float32) * 18
            img = np.sqrt((sig + n1) ** 2 + n2 ** 2)
            img = np.clip(img, 0, 4095).astype(np.uint16)
            ds = base.copy()
            ds.InstanceNumber = i
            ds.ImagePositionPatient = [f"{x0:.4f}", f"{x0:.4f}", f"{z:.4f}"]
            ds.SliceLocation = f"{z:.4f}"
            ds.PixelData = img.tobytes()
            ds["PixelData"].VR = "OW"
            files.append(_write(folder / f"I{i:04d}.dcm", ds, ExplicitVRLittleEndian,
                                exam.instance_uid(series, i)))
    log.info("MR %s: %d files written", exam.accession, len(files))
    return files


# --------------------------------------------------------------------------- ultrasound cine
def _label_font(size: int) -> ImageFont.ImageFont:
    path, index = find_cjk_font()
    return ImageFont.truetype(str(path), size, index=index)


def _write_us(exam: _Exam, out: Path, rng: np.random.Generator, n_frames: int = 32) -> list[Path]:
    rows, cols, fps = 480, 640, 25
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    ax, ay = 330.0, 40.0  # probe apex (curved array)
    r = np.hypot(xx - ax, yy - ay + 60)
    th = np.degrees(np.arctan2(xx - ax, yy - ay + 60))
    sector = (np.abs(th) < 34) & (r > 62) & (r < 455)
    depth = np.clip((r - 62) / 393, 0, 1)
    speckle_big = rng.rayleigh(1.0, (rows + 80, cols)).astype(np.float32)
    speckle_big = (speckle_big + np.roll(speckle_big, 1, axis=1) + np.roll(speckle_big, -1, axis=1)) / 3
    font = _label_font(16)
    frames = []
    for f in range(n_frames):
        breath = 14.0 * math.sin(2 * math.pi * f / n_frames)
        oy = int(40 + breath)
        sp = 0.7 * speckle_big[oy: oy + rows] + 0.3 * rng.rayleigh(1.0, (rows, cols)).astype(np.float32)
        tissue = 95.0 + 25.0 * np.sin(xx / 53.0 + yy / 71.0)  # liver echotexture variations
        y = yy - breath
        gall = ((xx - 300) / 70) ** 2 + ((y - 250) / 42) ** 2 <= 1
        polyp = ((xx - 318) / 6) ** 2 + ((y - 286) / 5) ** 2 <= 1
        vessel = (np.abs((y - 175) - 0.35 * (xx - 300)) < 9) & (xx > 330) & (xx < 520)
        diaphragm = np.abs(np.hypot(xx - 330, y + 300) - 690) < 6
        amp = tissue.copy()
        amp[gall | vessel] = 4.0
        amp[polyp] = 150.0
        amp[diaphragm] = 230.0
        shadow_free = np.where(gall, 1.25, 1.0)  # posterior acoustic enhancement behind fluid
        val = amp * sp * (1.0 - 0.35 * depth) * shadow_free
        img = np.where(sector, np.clip(val, 0, 255), 0).astype(np.uint8)
        rgb = np.repeat(img[:, :, None], 3, axis=2)
        pic = Image.fromarray(rgb)
        draw = ImageDraw.Draw(pic)
        draw.text((10, 8), HOSPITAL, fill=(230, 230, 230), font=font)
        draw.text((10, 30), "C5-2  腹部  16cm  25Hz", fill=(230, 230, 230), font=font)
        draw.text((540, 8), "G 62  DR 70", fill=(230, 230, 230), font=font)
        for cm in range(0, 17, 2):  # depth scale
            yt = 40 + 60 + cm * (393 / 16)
            draw.line([(618, yt), (628, yt)], fill=(200, 200, 120))
        for g in range(128):  # grey bar
            draw.line([(14, 300 - g), (24, 300 - g)], fill=(2 * g, 2 * g, 2 * g))
        frames.append(_jpeg(np.asarray(pic), quality=88))
    ds = _base_dataset(exam, US_MULTIFRAME_STORAGE, 1, "腹部 B型 动态")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.NumberOfFrames = n_frames
    ds.FrameTime = f"{1000 / fps:.1f}"
    ds.CineRate = fps
    ds.RecommendedDisplayFrameRate = fps
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.BurnedInAnnotation = "NO"
    _set_color_jpeg(ds, frames, rows, cols, rows * cols * 3 * n_frames)
    path = out / exam.patient.patient_id / exam.accession / "S1" / "I0001.dcm"
    log.info("US %s: %d frames written", exam.accession, n_frames)
    return [_write(path, ds, JPEGBaseline8Bit, exam.instance_uid(1, 1))]


# --------------------------------------------------------------------------- endoscopy
def _endoscopy_picture(rng: np.random.Generator, lumen: tuple[float, float], kind: str) -> np.ndarray:
    rows, cols = 480, 640
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    lx, ly = lumen
    d = np.hypot(xx - lx, yy - ly)
    th = np.arctan2(yy - ly, xx - lx)
    warp = _smooth_noise(rng, rows, cols, 48)
    if kind == "oesophagus":
        folds = 0.5 + 0.5 * np.cos(7 * th + 3 * warp)
    elif kind == "body":
        folds = 0.5 + 0.5 * np.cos(11 * th + 6 * warp + d / 60)
    else:
        folds = 0.5 + 0.5 * np.cos(d / 22 + 5 * warp)
    light = np.clip(d / 260.0, 0, 1) ** 0.8  # walls near the tip are bright, the lumen dark
    tex = _smooth_noise(rng, rows, cols, 6)
    shade = light * (0.72 + 0.2 * folds + 0.08 * tex)
    base = np.array([236, 128, 112] if kind != "oesophagus" else [232, 160, 146], np.float32)
    rgb = shade[:, :, None] * base[None, None, :]
    # vessels: zero crossings of band-pass noise, visible through thin mucosa
    vn = _smooth_noise(rng, rows, cols, 18) - _smooth_noise(rng, rows, cols, 40)
    vessel = (np.abs(vn) < 0.012) & (light > 0.35)
    strength = 0.55 if kind == "oesophagus" else 0.2
    rgb[vessel] = rgb[vessel] * (1 - strength) + strength * np.array([150, 40, 60], np.float32) * shade[vessel][:, None]
    if kind == "antrum":  # erosion: white fibrin centre with a red halo
        ex, ey = lx + 150, ly + 90
        e = np.hypot((xx - ex) / 1.3, yy - ey)
        halo = e < 26
        rgb[halo] = rgb[halo] * 0.6 + np.array([200, 40, 40], np.float32) * 0.4
        rgb[e < 11] = np.array([236, 226, 200], np.float32)
    # specular highlights on the crests of folds
    spec = (_smooth_noise(rng, rows, cols, 5) > 0.965) & (folds > 0.7) & (light > 0.6)
    rgb[spec] = 255.0
    # the scope's octagonal field of view on black
    view = (np.abs(xx - 340) < 270) & (np.abs(yy - 240) < 228) & (np.abs(xx - 340) + np.abs(yy - 240) < 420)
    rgb[~view] = 0
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _write_es(exam: _Exam, out: Path, rng: np.random.Generator) -> tuple[list[Path], list[bytes]]:
    shots = [("食管中段", (330.0, 250.0), "oesophagus"), ("胃体", (380.0, 200.0), "body"),
             ("胃角", (300.0, 150.0), "body"), ("胃窦", (260.0, 190.0), "antrum")]
    files, jpegs = [], []
    for i, (site, lumen, kind) in enumerate(shots, start=1):
        rgb = _endoscopy_picture(rng, lumen, kind)
        jpeg = _jpeg(rgb, quality=92)
        jpegs.append(jpeg)
        when = exam.when + dt.timedelta(minutes=1, seconds=40 * i)
        ds = _base_dataset(exam, VL_ENDOSCOPIC_STORAGE, 1, "电子胃镜 采图", exam.when)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.InstanceNumber = i
        ds.ContentDate, ds.ContentTime = f"{when:%Y%m%d}", f"{when:%H%M%S}"
        ds.AcquisitionDateTime = f"{when:%Y%m%d%H%M%S}"
        ds.PatientOrientation = ""
        ds.ImageComments = site
        ds.BurnedInAnnotation = "NO"
        anat = Dataset()
        anat.CodeValue, anat.CodingSchemeDesignator, anat.CodeMeaning = "69695003", "SCT", "Stomach"
        ds.AnatomicRegionSequence = [anat]
        _set_color_jpeg(ds, [jpeg], 480, 640, 480 * 640 * 3)
        path = out / exam.patient.patient_id / exam.accession / "S1" / f"I{i:04d}.dcm"
        files.append(_write(path, ds, JPEGBaseline8Bit, exam.instance_uid(1, i)))
    log.info("ES %s: %d images written", exam.accession, len(files))
    return files, jpegs


# --------------------------------------------------------------------------- pathology
def _he_slide(rng: np.random.Generator, rows: int = 3072, cols: int = 4096) -> np.ndarray:
    """H&E-like gastric mucosa: pink stroma, glands with purple nuclei, inflammatory cells."""
    shape = _smooth_noise(rng, rows, cols, 600)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    blob = ((xx - cols * 0.5) / (cols * 0.43)) ** 2 + ((yy - rows * 0.52) / (rows * 0.38)) ** 2
    tissue = (blob + 0.9 * (shape - 0.5)) < 0.85
    del yy, xx, blob, shape
    fib = _smooth_noise(rng, rows, cols, 7)
    pink = np.empty((rows, cols, 3), np.float32)
    pink[..., 0] = 236 - 20 * fib
    pink[..., 1] = 150 + 40 * fib
    pink[..., 2] = 196 + 18 * fib
    img = np.where(tissue[:, :, None], pink, np.float32(243)).astype(np.uint8)
    del pink, fib
    pic = Image.fromarray(img)
    draw = ImageDraw.Draw(pic)
    ys, xs = np.nonzero(tissue[::64, ::64])
    order = rng.permutation(len(ys))
    placed: list[tuple[float, float, float]] = []
    for j in order[:260]:
        cy, cx = ys[j] * 64 + 32, xs[j] * 64 + 32
        ra, rb = rng.uniform(45, 95), rng.uniform(30, 60)
        if any((cx - px) ** 2 + (cy - py) ** 2 < (ra + pr + 25) ** 2 for px, py, pr in placed):
            continue
        placed.append((cx, cy, ra))
        draw.ellipse([cx - ra - 22, cy - rb - 22, cx + ra + 22, cy + rb + 22], fill=(226, 170, 214))  # epithelium
        draw.ellipse([cx - ra, cy - rb, cx + ra, cy + rb], fill=(246, 238, 244))  # lumen
        n_nuc = int(2 * math.pi * math.sqrt((ra * ra + rb * rb) / 2) / 11)
        for t in np.linspace(0, 2 * math.pi, n_nuc, endpoint=False):
            nx = cx + (ra + 15) * math.cos(t)
            ny = cy + (rb + 15) * math.sin(t)
            c = rng.integers(60, 100)
            draw.ellipse([nx - 5, ny - 5, nx + 5, ny + 5], fill=(int(c), int(c * 0.55), int(c + 70)))
    # lymphocytes and plasma cells in the lamina propria (chronic inflammation)
    n_cells = 26000 * rows * cols // (3072 * 4096)
    cy = rng.integers(0, rows, n_cells)
    cx = rng.integers(0, cols, n_cells)
    lumen = np.all(np.asarray(pic)[cy, cx] == (246, 238, 244), axis=1)
    keep = tissue[cy, cx] & ~lumen  # no cells floating in gland lumens
    shades = rng.integers(50, 95, n_cells)
    for y, x, c in zip(cy[keep], cx[keep], shades[keep]):
        rad = 3 + (c % 3)
        draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=(int(c), int(c * 0.5), int(c + 75)))
    pic = pic.filter(ImageFilter.GaussianBlur(1.1))
    return np.asarray(pic)


def _write_sm(exam: _Exam, out: Path, rng: np.random.Generator, rows: int = 3072, cols: int = 4096,
              specimen: str = "B2026-07007") -> tuple[list[Path], bytes]:
    rgb = _he_slide(rng, rows, cols)
    jpeg = _jpeg(rgb, quality=88)
    ds = _base_dataset(exam, VL_SLIDE_MICROSCOPIC_STORAGE, 1, "HE染色 20x", exam.when)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.AcquisitionDateTime = f"{exam.when:%Y%m%d%H%M%S}"
    ds.ContainerIdentifier = f"{specimen}-1"
    ds.IssuerOfTheContainerIdentifierSequence = []
    ds.ContainerTypeCodeSequence = []
    spec = Dataset()
    spec.SpecimenIdentifier = f"{specimen}-A1"
    spec.SpecimenUID = demo_uid(5, exam.number, 1)
    spec.IssuerOfTheSpecimenIdentifierSequence = []
    spec.SpecimenShortDescription = "胃窦黏膜活检 HE"
    spec.SpecimenPreparationSequence = []
    ds.SpecimenDescriptionSequence = [spec]
    center = Dataset()
    center.XOffsetInSlideCoordinateSystem = "20.0"
    center.YOffsetInSlideCoordinateSystem = "40.0"
    center.ZOffsetInSlideCoordinateSystem = "0.0"
    ds.ImageCenterPointCoordinatesSequence = [center]
    ds.PixelSpacing = ["0.0005", "0.0005"]  # 0.5 µm per pixel (20x)
    ds.BurnedInAnnotation = "NO"
    _set_color_jpeg(ds, [jpeg], rows, cols, rows * cols * 3)
    path = out / exam.patient.patient_id / exam.accession / "S1" / "I0001.dcm"
    log.info("SM %s: %dx%d slide written (%d bytes JPEG)", exam.accession, cols, rows, len(jpeg))
    thumb = io.BytesIO()
    r3, c3 = rows // 3, cols // 3  # the middle ninth (1024:2048, 1365:2731 of the full slide)
    Image.fromarray(rgb[r3:2 * r3, c3:2 * c3 + 1]).resize((800, 600)).save(thumb, "JPEG", quality=85)
    return [_write(path, ds, JPEGBaseline8Bit, exam.instance_uid(1, 1))], thumb.getvalue()


# --------------------------------------------------------------------------- radiograph
_CR_PIXEL_KEYWORDS = ("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
                      "BitsStored", "HighBit", "PixelRepresentation", "WindowCenter", "WindowWidth",
                      "PixelData")


def _source_radiograph() -> Path:
    import data_store  # pydicom-data's corpus

    path = Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: install the pinned 'pydicom-data' package (requirements.txt)")
    return path


def _write_cr(exam: _Exam, out: Path) -> list[Path]:
    src = dcmread(_source_radiograph())
    ds = _base_dataset(exam, CR_IMAGE_STORAGE, 1, "胸部 后前位")
    for keyword in _CR_PIXEL_KEYWORDS:  # copy pixels only: no header field of the source survives
        if keyword in src:
            ds[keyword] = src[keyword]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = ["0.2", "0.2"]
    ds.PixelSpacing = ["0.2", "0.2"]
    ds.KVP = "125"
    ds.BurnedInAnnotation = "NO"
    path = out / exam.patient.patient_id / exam.accession / "S1" / "I0001.dcm"
    log.info("CR %s: radiograph written", exam.accession)
    return [_write(path, ds, ExplicitVRLittleEndian, exam.instance_uid(1, 1))]


# --------------------------------------------------------------------------- reports
_RADIOLOGY = ("陈志强", "刘卫东")
_ULTRASOUND = ("周敏", "郑红霞")
_ENDOSCOPY = ("黄俊杰", "吴静")
_PATHOLOGY = ("孙立新", "何雪梅")


def _report_texts(nodule_mm: tuple[float, float]) -> dict[int, dict[str, Any]]:
    small, large = nodule_mm
    return {
        1: dict(
            doctors=_RADIOLOGY, delay=dt.timedelta(hours=2, minutes=18),
            findings=(
                "胸廓对称，气管居中。右肺上叶前段见一实性小结节，直径约{s:.1f}mm，边缘光整，"
                "CT值约35HU。双肺纹理清晰，余肺野未见明确实变及肿块影。双侧肺门不大，纵隔内未见明确肿大淋巴结。"
                "心影大小形态正常，主动脉未见增宽。双侧胸腔未见积液。\n"
                "肝脏大小形态正常，肝右叶见一类圆形低密度灶，直径约12mm，边界清，CT值约8HU。"
                "胆囊不大，壁不厚，腔内未见高密度影。胰腺、脾脏大小形态未见异常。双肾形态大小正常，"
                "未见结石及积水。腹膜后未见明确肿大淋巴结。腹腔内未见积液。所示骨质未见明确破坏。"
            ).format(s=small),
            impression=(
                "1. 右肺上叶前段实性小结节(约{s:.1f}mm)，Lung-RADS 2类，建议6～12个月后复查胸部CT。\n"
                "2. 肝右叶小囊肿。\n3. 余胸腹部CT平扫未见明显异常。"
            ).format(s=small),
        ),
        2: dict(
            doctors=_RADIOLOGY, delay=dt.timedelta(hours=3, minutes=5),
            findings=(
                "与2026-03-12旧片对比：右肺上叶前段实性结节较前增大，现大小约{l:.1f}mm×{l2:.1f}mm"
                "(前片约{s:.1f}mm)，边缘见浅分叶，CT值约36HU，邻近胸膜未见牵拉。"
                "余双肺未见新发结节及实变影。气管、支气管通畅。双侧肺门及纵隔未见肿大淋巴结。"
                "心影不大。双侧胸腔未见积液。\n"
                "肝右叶低密度灶同前，直径约12mm，边界清。胆囊、胰腺、脾脏、双肾未见明显异常。"
                "腹膜后未见肿大淋巴结。所示骨质未见明确破坏。"
            ).format(l=large, l2=large * 0.88, s=small),
            impression=(
                "1. 右肺上叶前段实性结节，较2026-03-12明显增大(约{s:.1f}mm→{l:.1f}mm)，"
                "Lung-RADS 4A类，建议胸外科会诊，必要时行增强CT或穿刺活检。\n"
                "2. 肝右叶小囊肿，同前。"
            ).format(l=large, s=small),
        ),
        3: dict(
            doctors=_RADIOLOGY, delay=dt.timedelta(hours=5, minutes=40),
            findings=(
                "左侧基底节区见一小圆形异常信号灶，直径约6mm，T1WI呈低信号，T2WI呈高信号，边界清。"
                "余脑实质内未见明确异常信号。脑室系统大小形态正常，中线结构居中。脑沟、脑池未见增宽。"
                "双侧小脑半球及脑干未见异常信号。双侧眼眶及所示副鼻窦未见明显异常。"
            ),
            impression="1. 左侧基底节区腔隙性脑梗死(陈旧性可能)。\n2. 余颅脑MR平扫未见明显异常。",
        ),
        4: dict(
            doctors=_ULTRASOUND, delay=dt.timedelta(minutes=25),
            findings=(
                "肝脏：形态大小正常，包膜光滑，实质回声细密、分布均匀，肝内血管走行清晰，门静脉内径约11mm。\n"
                "胆囊：大小约68mm×28mm，壁光滑，腔内见一个中等偏高回声附着于胆囊壁，大小约5mm×4mm，"
                "后方无声影，不随体位改变而移动。胆总管未见扩张。\n"
                "胰腺：形态大小正常，回声均匀，主胰管未见扩张。\n"
                "脾脏：厚约32mm，实质回声均匀。CDFI：未见异常血流信号。"
            ),
            impression="1. 胆囊息肉样病变(约5mm)，建议定期复查。\n2. 肝、胰、脾未见明显异常。",
        ),
        5: dict(
            doctors=_ENDOSCOPY, delay=dt.timedelta(minutes=35),
            findings=(
                "食管：黏膜光滑，血管纹理清晰，齿状线清晰，距门齿约39cm。\n"
                "贲门：开闭良好，黏膜未见异常。\n"
                "胃底、胃体：黏液湖清，黏膜充血，皱襞走行正常。\n"
                "胃角：弧度存在，黏膜光滑。\n"
                "胃窦：黏膜红白相间，以红为主，见散在点片状糜烂，大者约5mm，覆白苔；"
                "于胃窦大弯侧取活检2块送病理，质软，弹性好。幽门：圆，开闭好。\n"
                "十二指肠球部及降部：未见异常。"
            ),
            impression="慢性非萎缩性胃炎伴糜烂(胃窦为主)，已取活检，待病理。建议行C13呼气试验检测HP。",
        ),
        6: dict(
            doctors=_PATHOLOGY, delay=dt.timedelta(days=2, hours=1),
            findings=(
                "送检：(胃窦)活检组织2块，灰白色，直径0.2～0.3cm，全埋制片。\n"
                "镜下：胃窦黏膜组织，腺体排列尚规则，无明显减少；固有层内较多淋巴细胞、浆细胞浸润，"
                "散在少量中性粒细胞，局灶表面上皮糜烂。未见肠上皮化生及异型增生。"
            ),
            impression="(胃窦)慢性非萎缩性胃炎，活动期，伴糜烂。HP(+)。",
            findings_heading="大体及镜下所见：", impression_heading="病理诊断：",
        ),
        7: dict(
            doctors=_RADIOLOGY, delay=dt.timedelta(hours=1, minutes=12),
            findings=(
                "胸廓对称。双肺野内见多发大小不等类圆形结节及肿块影，边界清楚，以中下肺野为著，"
                "最大者位于左下肺野，直径约35mm。双肺门影增浓。气管居中，纵隔不宽。"
                "心影大小形态未见明显异常。双侧膈面光整，肋膈角锐利。所示骨质未见明确破坏。"
            ),
            impression="双肺多发结节及肿块影，考虑转移瘤可能大，建议胸部增强CT进一步检查。",
        ),
        # patient E: upper abdominal pain worked up by CT, ultrasound, gastroscopy and biopsy
        8: dict(
            doctors=_RADIOLOGY, delay=dt.timedelta(hours=2, minutes=45),
            findings=(
                "胸廓对称，气管居中。右肺上叶前段见一微小实性结节，直径约3mm，边缘光整。余双肺未见实变及肿块影。"
                "纵隔内未见肿大淋巴结。心影不大。双侧胸腔未见积液。\n"
                "胃充盈欠佳，胃窦及胃体壁未见明确增厚。肝脏大小形态正常，实质密度均匀。胆囊、胰腺、脾脏、"
                "双肾未见明显异常。腹膜后及腹腔内未见肿大淋巴结，未见积液。所示骨质未见明确破坏。"
            ),
            impression="1. 右肺上叶前段微小实性结节(约3mm)，建议12个月后复查胸部CT。\n"
                       "2. 腹部CT平扫未见明显异常，胃部病变请结合胃镜检查。",
        ),
        9: dict(
            doctors=_ULTRASOUND, delay=dt.timedelta(minutes=20),
            findings=(
                "肝脏：形态大小正常，包膜光滑，实质回声均匀，肝内胆管未见扩张。\n"
                "胆囊：大小约62mm×25mm，壁光滑，腔内透声好，未见异常回声。胆总管内径约4mm。\n"
                "胰腺：显示部分形态大小正常，回声均匀。\n"
                "脾脏：厚约30mm，实质回声均匀。CDFI：未见异常血流信号。"
            ),
            impression="肝、胆、胰、脾未见明显异常。",
        ),
        10: dict(
            doctors=_ENDOSCOPY, delay=dt.timedelta(minutes=30),
            findings=(
                "食管：黏膜光滑，血管纹理清晰，齿状线清晰。\n"
                "贲门：开闭良好。\n"
                "胃体：小弯侧见一约8mm浅溃疡，底覆薄白苔，周边黏膜充血水肿，于溃疡边缘取活检3块送病理。\n"
                "胃角、胃窦：黏膜红白相间，以红为主。幽门：圆，开闭好。\n"
                "十二指肠球部及降部：未见异常。"
            ),
            impression="胃体小弯溃疡(A1期)，已取活检，待病理；慢性非萎缩性胃炎。",
        ),
        11: dict(
            doctors=_PATHOLOGY, delay=dt.timedelta(days=2, hours=3),
            findings=(
                "送检：(胃体小弯)活检组织3块，灰白色，直径0.2～0.3cm，全埋制片。\n"
                "镜下：胃体黏膜组织，局灶表面上皮缺失，见炎性渗出及肉芽组织；固有层内较多淋巴细胞、"
                "浆细胞及中性粒细胞浸润。腺体未见异型增生，未见恶性证据。"
            ),
            impression="(胃体小弯)溃疡边缘黏膜慢性活动性炎，未见异型增生及恶性证据。HP(+)。",
            findings_heading="大体及镜下所见：", impression_heading="病理诊断：",
        ),
    }


def _report(exam: _Exam, text: dict[str, Any], images: list[bytes] | None = None) -> dict:
    author, reviewer = text["doctors"]
    signed_at = exam.when + text["delay"]
    signed_at = signed_at.replace(second=0)
    pdf = make_report_pdf(
        {
            "hospital": HOSPITAL,
            "patient_name": exam.patient.display_name,
            "sex": exam.patient.sex,
            "age": age_text(exam.patient.birth_date, exam.when.date()),
            "patient_id": exam.patient.patient_id,
            "accession_number": exam.accession,
            "exam_date": exam.when.date(),
            "modality": exam.modality,
            "exam_item": exam.description,
            "department": exam.department,
            "referring_physician": exam.referring,
            "findings": text["findings"],
            "impression": text["impression"],
            "findings_heading": text.get("findings_heading"),
            "impression_heading": text.get("impression_heading"),
            "author": author,
            "reviewer": reviewer,
            "signed_at": signed_at,
            "images": images or [],
        }
    )
    return {
        "study_uid": exam.study_uid,
        "accession_number": exam.accession,
        "patient_id": exam.patient.patient_id,
        "findings": text["findings"],
        "impression": text["impression"],
        "author": author,
        "reviewer": reviewer,
        "signed_at": signed_at,
        "status": "final",
        "pdf": pdf,
    }


# --------------------------------------------------------------------------- entry point
def generate_demo(out_dir: Path, *, ct_slices: int = 220, size: int = 512, seed: int = 7) -> DemoSet:
    """Write the demo DICOM files under ``out_dir`` and return what was written.

    ``ct_slices`` and ``size`` shape patient A's two CT exams (the slices always
    cover lung apex to pelvis, so fewer slices means thicker ones); patient E's
    CT takes at most 48 slices of 256²; other series have fixed sizes. The same
    arguments give identical files.
    """
    if ct_slices < 2 or size < 32:
        raise ValueError(f"need ct_slices >= 2 and size >= 32, got ct_slices={ct_slices}, size={size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pts = _patients()
    exams = _exams(pts)
    by_no = {e.number: e for e in exams}
    nodule_mm = (4.6, 7.8)
    texts = _report_texts(nodule_mm)
    demo = DemoSet()

    def rng(exam_no: int) -> np.random.Generator:
        return np.random.default_rng([seed, exam_no])

    written: dict[int, list[Path]] = {}
    images: dict[int, list[bytes]] = {}
    written[1] = _write_ct(by_no[1], out, n=ct_slices, size=size, rng=rng(1),
                           nodule_radius=nodule_mm[0] / 2, start_offset=0.0, shift_xy=(0.0, 0.0))
    written[2] = _write_ct(by_no[2], out, n=ct_slices, size=size, rng=rng(2),
                           nodule_radius=nodule_mm[1] / 2, start_offset=1.6, shift_xy=(2.4, -3.1))
    written[3] = _write_mr(by_no[3], out, rng(3))
    written[4] = _write_us(by_no[4], out, rng(4))
    written[5], images[5] = _write_es(by_no[5], out, rng(5))
    written[6], thumb = _write_sm(by_no[6], out, rng(6))
    images[6] = [thumb]
    written[7] = _write_cr(by_no[7], out)
    # patient E's four kinds of image, small: they show side by side, not detail
    written[8] = _write_ct(by_no[8], out, n=min(ct_slices, 48), size=min(size, 256), rng=rng(8),
                           nodule_radius=1.5, start_offset=0.8, shift_xy=(-1.5, 2.0))
    written[9] = _write_us(by_no[9], out, rng(9), n_frames=16)
    written[10], images[10] = _write_es(by_no[10], out, rng(10))
    written[11], thumb = _write_sm(by_no[11], out, rng(11), rows=768, cols=1024, specimen="B2026-09004")
    images[11] = [thumb]

    for exam in exams:
        files = written[exam.number]
        demo.files.extend(files)
        demo.exams.append({
            "study_uid": exam.study_uid,
            "accession_number": exam.accession,
            "patient_id": exam.patient.patient_id,
            "modality": exam.modality,
            "study_date": exam.when.date(),
            "study_description": exam.description,
            "files": list(files),
        })
        demo.reports.append(_report(exam, texts[exam.number], images.get(exam.number)))
    for p in pts.values():
        demo.patients.append({
            "patient_id": p.patient_id,
            "name": p.display_name,
            "sex": p.sex,
            "birth_date": p.birth_date,
            "phone": p.phone,
            "national_id": p.national_id,
        })
    log.info("demo written to %s: %d files, %d exams", out, len(demo.files), len(exams))
    return demo
