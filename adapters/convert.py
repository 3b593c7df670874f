"""Format conversion (R2.11): JPEG / PNG / TIFF pictures from endoscopy and pathology
workstations become proper DICOM objects, so every image lives in one model and downloads
as DICOM.

- endoscopy (ES)          → VL Endoscopic Image Storage
- pathology (SM, GM, PAT) → VL Photographic Image Storage (VL Microscopic needs a slide
                            description these workstations do not give)
- anything else           → Secondary Capture Image Storage

A baseline JPEG is kept as it is (encapsulated, JPEG Baseline transfer syntax: no second
lossy step); PNG and TIFF are stored uncompressed (Explicit VR Little Endian). UIDs are
generated; the exam's Study Instance UID is reused when it is known so the pictures join
the exam. Specific Character Set is ISO_IR 192 (UTF-8), so Chinese names survive.
"""
from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (ExplicitVRLittleEndian, JPEGBaseline8Bit, PYDICOM_IMPLEMENTATION_UID,
                         SecondaryCaptureImageStorage, VLEndoscopicImageStorage,
                         VLPhotographicImageStorage, generate_uid)

Image.MAX_IMAGE_PIXELS = 400_000_000   # big pathology pictures, but not decompression bombs

PATHOLOGY = {"SM", "GM", "PAT", "PATH", "XC_PATH"}
ENDOSCOPY = {"ES", "ENDO"}
FORMATS = {"JPEG": "jpeg", "PNG": "png", "TIFF": "tiff", "MPO": "jpeg"}


class ConversionError(Exception):
    """The picture or its metadata cannot become a DICOM object; the message says why."""


@dataclass
class PictureMeta:
    patient_id: str
    patient_name: str = ""
    patient_sex: str = ""
    patient_birth_date: str = ""       # YYYYMMDD or YYYY-MM-DD
    accession_number: str = ""
    study_uid: str = ""
    series_uid: str = ""
    modality: str = "XC"
    study_date: str = ""
    study_description: str = ""
    series_description: str = ""
    instance_number: int = 1
    institution: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> "PictureMeta":
        if not isinstance(d, dict):
            raise ConversionError("picture metadata must be a JSON object")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if not str(known.get("patient_id") or "").strip():
            raise ConversionError("picture metadata needs patient_id")
        for k, v in list(known.items()):
            if k == "instance_number":
                try:
                    known[k] = int(v)
                except (TypeError, ValueError):
                    raise ConversionError("instance_number must be a whole number") from None
            elif v is not None and not isinstance(v, str):
                raise ConversionError(f"{k} must be text")
            elif v is None:
                known[k] = ""
        return cls(**known)


def _da(s: str) -> str:
    s = (s or "").replace("-", "").strip()
    if s and not (len(s) == 8 and s.isdigit()):
        raise ConversionError(f"date {s[:20]!r}: expected YYYYMMDD or YYYY-MM-DD")
    return s


def sop_class_for(modality: str) -> str:
    m = (modality or "").upper()
    if m in ENDOSCOPY:
        return VLEndoscopicImageStorage
    if m in PATHOLOGY:
        return VLPhotographicImageStorage
    return SecondaryCaptureImageStorage


def picture_to_dicom(data: bytes, meta: PictureMeta) -> bytes:
    """One JPEG/PNG/TIFF picture → a DICOM Part 10 file (bytes)."""
    try:
        img = Image.open(io.BytesIO(data))
        fmt = FORMATS.get(img.format or "")
        if fmt is None:
            raise ConversionError(f"picture format {img.format!r} is not JPEG, PNG or TIFF")
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ConversionError(f"not a readable JPEG, PNG or TIFF picture ({exc})") from None
    except Image.DecompressionBombError:
        raise ConversionError("picture larger than 400 megapixels") from None
    modality = (meta.modality or "XC").upper()
    if modality in PATHOLOGY:
        modality = "SM" if modality == "SM" else "GM" if modality == "GM" else "XC"
    elif modality in ENDOSCOPY:
        modality = "ES"
    sop_class = sop_class_for(meta.modality)
    now = dt.datetime.now()
    fm = FileMetaDataset()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = meta.patient_id.strip()[:64]
    ds.PatientName = meta.patient_name[:64]
    ds.PatientSex = (meta.patient_sex or "")[:1].upper()
    ds.PatientBirthDate = _da(meta.patient_birth_date)
    ds.StudyInstanceUID = meta.study_uid or generate_uid()
    ds.SeriesInstanceUID = meta.series_uid or generate_uid()
    ds.AccessionNumber = meta.accession_number[:16]
    ds.StudyID = meta.accession_number[:16]
    ds.StudyDate = _da(meta.study_date) or now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyDescription = meta.study_description[:64]
    ds.SeriesDescription = meta.series_description[:64]
    ds.Modality = modality
    ds.ConversionType = "WSD"            # workstation
    ds.SeriesNumber = 1
    ds.InstanceNumber = meta.instance_number
    ds.InstitutionName = meta.institution[:64]
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "CloudFilm"
    ds.ImageType = ["DERIVED", "SECONDARY"] if sop_class == SecondaryCaptureImageStorage \
        else ["ORIGINAL", "PRIMARY"]
    ds.LossyImageCompression = "00"
    if sop_class != SecondaryCaptureImageStorage:
        ds.AcquisitionContextSequence = []
        ds.AnatomicRegionSequence = []
    ds.PatientOrientation = ""
    ds.Rows, ds.Columns = img.height, img.width
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if fmt == "jpeg" and img.mode in ("RGB", "L") and not _progressive(img):
        ds.SamplesPerPixel = 3 if img.mode == "RGB" else 1
        ds.PhotometricInterpretation = "YBR_FULL_422" if img.mode == "RGB" else "MONOCHROME2"
        if img.mode == "RGB":
            ds.PlanarConfiguration = 0
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([data])
        ds["PixelData"].VR = "OB"
        fm.TransferSyntaxUID = JPEGBaseline8Bit
    else:
        if img.mode in ("1", "L", "I;16", "I", "F") and img.mode != "RGB":
            img = img.convert("L")
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
        else:
            img = img.convert("RGB")
            ds.SamplesPerPixel = 3
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
        if fmt == "jpeg":
            ds.LossyImageCompression = "01"
        ds.PixelData = img.tobytes()
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = fm
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _progressive(img: Image.Image) -> bool:
    return bool(img.info.get("progressive") or img.info.get("progression"))


def is_picture(name: str) -> bool:
    return name.lower().rsplit(".", 1)[-1] in ("jpg", "jpeg", "png", "tif", "tiff")
