"""Synthetic CT series generated in code (never downloaded): a plausible HU phantom.

``make_series(out_dir, n, compressed)`` writes n 512x512 slices (int16, rescale -1024,
window 40/400) either Explicit VR Little Endian or JPEG 2000 lossless (pylibjpeg/openjpeg).
UIDs are deterministic (same seed -> same files), so a data folder can be reused across runs.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless,
                         generate_uid)

SIZE = 512
DATA_VERSION = 2


def uid(*parts) -> str:
    return generate_uid(entropy_srcs=["cloudfilm-bench", str(DATA_VERSION), *map(str, parts)])


def phantom_hu(k: int, n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """One axial slice in HU: air, body ellipse (fat rim, soft tissue), lungs, spine, aorta,
    a few lesions; sizes change smoothly with z; Gaussian noise (sigma 12 HU)."""
    t = k / max(n - 1, 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size / 2, size / 2 + 10
    s = size / 512
    img = np.full((size, size), -1000.0, np.float32)

    def ell(x0, y0, a, b):
        return ((xx - x0) / a) ** 2 + ((yy - y0) / b) ** 2 <= 1.0

    a_body, b_body = (200 - 15 * np.sin(np.pi * t)) * s, (150 - 10 * np.sin(np.pi * t)) * s
    img[ell(cx, cy, a_body, b_body)] = -100.0                       # fat
    img[ell(cx, cy, a_body - 12 * s, b_body - 12 * s)] = 40.0        # soft tissue
    lung_a, lung_b = (58 + 12 * np.sin(np.pi * t)) * s, (88 + 12 * np.sin(np.pi * t)) * s
    for side in (-1, 1):
        img[ell(cx + side * 100 * s, cy - 10 * s, lung_a, lung_b)] = -850.0
    img[ell(cx, cy + 95 * s, 22 * s, 20 * s)] = 700.0                # vertebral body
    img[ell(cx, cy + 95 * s, 12 * s, 10 * s)] = 250.0                # cancellous
    img[ell(cx + 25 * s, cy + 40 * s, 14 * s, 14 * s)] = 180.0       # contrast aorta
    img[ell(cx - 15 * s, cy - 60 * s, 30 * s, 25 * s)] = 55.0        # heart
    for i, (dx, dy, r) in enumerate(((-90, -30, 8), (70, 10, 6), (-60, 30, 5))):
        if abs(t - (0.3 + 0.2 * i)) < 0.08:
            img[ell(cx + dx * s, cy + dy * s, r * s, r * s)] = -20.0   # nodules
    rng = np.random.default_rng(seed * 100003 + k)
    img += rng.normal(0.0, 12.0, img.shape).astype(np.float32)
    return np.clip(np.round(img), -1024, 3071)


def _dataset(k: int, n: int, *, study: str, series: str, series_number: int,
             patient_id: str, description: str, seed: int) -> Dataset:
    sop = uid(study, series, k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.PatientID = patient_id
    ds.PatientName = "Bench^Phantom"
    ds.PatientSex = "O"
    ds.PatientBirthDate = "19700101"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = uid(study, "for")
    ds.AccessionNumber = f"BENCH{series_number}"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyDescription = description
    ds.SeriesDescription = description
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [-179.2, -179.2, -float(k) * 1.25]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.25
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    stored = (phantom_hu(k, n, seed=seed) + 1024).astype(np.int16)
    ds.PixelData = stored.tobytes()
    return ds


def _write_one(args) -> str:
    k, n, out_dir, compressed, kw = args
    ds = _dataset(k, n, **kw)
    if compressed:
        arr = np.frombuffer(ds.PixelData, np.int16).reshape(SIZE, SIZE)
        ds.compress(JPEG2000Lossless, arr, encoding_plugin="pylibjpeg",
                    generate_instance_uid=False)   # lossless: same instance
    path = Path(out_dir) / f"slice{k:04d}.dcm"
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return str(path), str(ds.SOPInstanceUID)


def make_series(out_dir: Path, n: int, *, compressed: bool, name: str, series_number: int,
                workers: int = 2) -> dict:
    """Write (or reuse) a series; returns its manifest (uids, files in slice order)."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        if m.get("n") == n and m.get("version") == DATA_VERSION and all(
                Path(f).exists() for f in m["files"]):
            return m
    out_dir.mkdir(parents=True, exist_ok=True)
    study = uid(name, "study")
    series = uid(name, "series")
    kw = dict(study=study, series=series, series_number=series_number,
              patient_id=f"BENCH-{name}", description=f"bench {name}", seed=series_number)
    jobs = [(k, n, str(out_dir), compressed, kw) for k in range(n)]
    with ProcessPoolExecutor(workers) as ex:
        written = list(ex.map(_write_one, jobs, chunksize=8))
    files = [w[0] for w in written]
    m = {"version": DATA_VERSION, "n": n, "name": name, "compressed": compressed,
         "transfer_syntax": str(JPEG2000Lossless if compressed else ExplicitVRLittleEndian),
         "study_uid": study, "series_uid": series,
         "sop_uids": [w[1] for w in written], "files": files,
         "bytes": sum(Path(f).stat().st_size for f in files)}
    manifest_path.write_text(json.dumps(m, indent=1))
    return m
