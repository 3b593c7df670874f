"""Read the index metadata of a DICOM file, decoding Chinese text correctly.

Character sets: ISO_IR 192 (UTF-8), GB18030, GBK and ISO 2022 IR 58 decode as declared in
(0008,0005). A file that declares none but carries non-ASCII bytes is decoded with a
configurable fallback (GB18030 by default, which also reads GBK): otherwise Chinese names
would silently turn into mojibake.
"""
from __future__ import annotations

import datetime as dt
import io
import logging
import re
from typing import Any

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import PersonName

log = logging.getLogger(__name__)

# Received files are often not quite conformant (a UID with letters, a long string): read
# them without warnings; the importer decides what is acceptable.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
# Structured Reports (1.2.840.10008.5.1.4.1.1.88.x: measurement reports such as CloudFilm's
# own export, adapters/measurement_sr.py; dose reports) hold no pixel data either
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
TEXT_TAGS = (0x00100010, 0x00081030, 0x0008103E, 0x00080080, 0x00080090, 0x00180015)
CJK_RE = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff]")
# ISO 2022 designator escapes (ESC $ ) A for GB2312 in ISO 2022 IR 58) that pydicom leaves
# in the decoded text.
ISO2022_ESCAPE_RE = re.compile(r"\x1b[\x20-\x2f]+[\x30-\x7e]")


def clean_text(s: str) -> str:
    return ISO2022_ESCAPE_RE.sub("", s).replace("\x00", "").strip()


class DicomRejected(Exception):
    """The file cannot be stored; the message is the reason shown to the user."""


class DecodedTooLarge(DicomRejected):
    """The header declares more decoded pixel bytes than max_decoded_mb (C-STORE: 0xA700)."""


def _has_non_ascii_text(ds: Dataset) -> bool:
    for tag in TEXT_TAGS:
        raw = ds.get_item(tag)          # the raw element: not decoded yet
        if raw is None:
            continue
        value = getattr(raw, "value", None)
        if isinstance(value, (bytes, bytearray)) and any(b > 0x7F for b in value):
            return True
    return False


def person_name_text(pn: Any) -> str:
    """A display form of a Person Name: the ideographic group when present
    (张^伟 → 张伟), otherwise the alphabetic one (Zhang^Wei → Zhang Wei)."""
    if pn is None or pn == "":
        return ""
    if not isinstance(pn, PersonName):
        pn = PersonName(str(pn))
    pn = PersonName(clean_text(str(pn)))
    for group in (pn.ideographic, pn.alphabetic):
        if group:
            parts = [p for p in str(group).split("^") if p]
            sep = "" if any(CJK_RE.search(p) for p in parts) else " "
            return sep.join(parts).strip()
    return str(pn).replace("^", " ").strip()


def _date(value: Any) -> dt.date | None:
    s = str(value or "").strip()
    if len(s) >= 8 and s[:8].isdigit():
        try:
            return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
        except ValueError:
            return None
    return None


def _time(value: Any) -> dt.time | None:
    s = str(value or "").strip().split(".")[0]
    if len(s) >= 4 and s[:4].isdigit():
        try:
            return dt.time(int(s[:2]), int(s[2:4]), int(s[4:6]) if len(s) >= 6 else 0)
        except ValueError:
            return None
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _multi(value: Any) -> str:
    if value is None or value == "":
        return ""
    try:
        return "\\".join(f"{float(v):.6g}" for v in value)
    except (TypeError, ValueError):
        return ""


def _text(ds: Dataset, keyword: str) -> str:
    try:
        v = ds.get(keyword, "")
    except Exception:  # noqa: BLE001 - a malformed element is treated as absent
        return ""
    return clean_text(str(v or ""))


def read_dataset(data: bytes, *, force: bool = False) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data), force=force)
    except InvalidDicomError:
        raise DicomRejected("not a DICOM Part 10 file (no 'DICM' marker after the 128-byte "
                             "preamble); export it from the PACS as a DICOM file")
    except (EOFError, OSError) as exc:
        raise DicomRejected(f"truncated or unreadable DICOM file ({exc})")
    except Exception as exc:  # noqa: BLE001 - any parser failure is a rejection with a reason
        raise DicomRejected(f"unreadable DICOM header: {type(exc).__name__}: {exc}")


def _expected_native_length(ds: Dataset) -> int | None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    if bits == 1:
        return (rows * cols * frames * spp + 7) // 8
    return rows * cols * frames * spp * (bits // 8)


def check_pixel_data(ds: Dataset) -> None:
    """Reject files whose pixel data is missing or visibly truncated."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomRejected("Pixel Data (7FE0,0010) missing (no image in the file, or the file "
                            "is truncated before it)")
    for kw in ("Rows", "Columns", "BitsAllocated"):
        if kw not in ds:
            raise DicomRejected(f"{kw} missing: the image cannot be decoded")
    # decompression bombs (issue 14): the declared decoded size, from the header, before
    # anything is decoded; every import path (files, C-STORE, STOW-RS, API) passes here
    from render.decode import ImageTooLarge, check_decoded_size
    try:
        check_decoded_size(ds)
    except ImageTooLarge as exc:
        # the English half, as every other rejection reason here (ErrorComment is ASCII)
        raise DecodedTooLarge(exc.message.split(" / ", 1)[-1]) from None
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    elem = ds["PixelData"] if "PixelData" in ds else None
    if elem is None:
        return
    if ts is not None and ts.is_encapsulated:
        from pydicom.encaps import generate_fragments
        try:
            value = elem.value
            fragments = list(generate_fragments(value))
        except Exception as exc:  # noqa: BLE001
            raise DicomRejected(f"Pixel Data (7FE0,0010) fragments are malformed ({exc})")
        if not fragments or not any(len(f) for f in fragments):
            raise DicomRejected("Pixel Data (7FE0,0010) holds no compressed frames")
        return
    expected = _expected_native_length(ds)
    value = elem.value
    if expected is not None and value is not None and len(value) < expected:
        raise DicomRejected(f"Pixel Data (7FE0,0010) truncated: {len(value)} bytes where "
                            f"{expected} are needed for {ds.Rows}x{ds.Columns}")


def extract_meta(data: bytes, *, charset_fallback: str = "GB18030",
                 charset_override: str | None = None) -> tuple[dict, Dataset]:
    """Parse data and return (index metadata, dataset). Raises DicomRejected with a reason.
    `charset_override` (a sender known to mislabel its text, setting dicom_charset_overrides)
    replaces the file's Specific Character Set for reading; the stored file is unchanged."""
    ds = read_dataset(data)
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        raise DicomRejected("no File Meta Information / Transfer Syntax UID (0002,0010)")
    sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        raise DicomRejected("DICOMDIR: a media index, not an image (import the folder or the "
                            "DICOMDIR path to import the files it lists)")
    if charset_override:
        ds.SpecificCharacterSet = charset_override
    elif "SpecificCharacterSet" not in ds and _has_non_ascii_text(ds):
        ds.SpecificCharacterSet = charset_fallback
    try:
        ds.decode()
    except Exception as exc:  # noqa: BLE001
        log.info("character set decoding problem: %s", exc)
    if sop_class != ENCAPSULATED_PDF and not sop_class.startswith(SR_CLASS_PREFIX):
        if "PixelData" not in ds and (b"\xe0\x7f\x10\x00" in data
                                      or b"\x7f\xe0\x00\x10" in data):
            raise DicomRejected("Pixel Data (7FE0,0010) truncated: the file ends before the "
                                "end of its compressed frames")
        check_pixel_data(ds)
    modality = _text(ds, "Modality").upper()[:16]
    meta = {
        "patient_id": _text(ds, "PatientID"),
        "patient_name": person_name_text(ds.get("PatientName")),
        "patient_sex": _text(ds, "PatientSex").upper()[:1],
        "patient_birth_date": _date(ds.get("PatientBirthDate")),
        "study_uid": _text(ds, "StudyInstanceUID"),
        "accession_number": _text(ds, "AccessionNumber")[:64],
        "study_date": _date(ds.get("StudyDate")) or _date(ds.get("SeriesDate"))
                      or _date(ds.get("ContentDate")),
        "study_time": _time(ds.get("StudyTime")),
        "study_description": _text(ds, "StudyDescription"),
        "modality": modality,
        "institution": _text(ds, "InstitutionName"),
        "referring_physician": person_name_text(ds.get("ReferringPhysicianName")),
        "series_uid": _text(ds, "SeriesInstanceUID"),
        "series_number": _int(ds.get("SeriesNumber")),
        "series_description": _text(ds, "SeriesDescription"),
        "body_part": _text(ds, "BodyPartExamined"),
        "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID"),
        "sop_uid": _text(ds, "SOPInstanceUID"),
        "sop_class_uid": sop_class,
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "instance_number": _int(ds.get("InstanceNumber")),
        "rows": _int(ds.get("Rows")) or 0,
        "columns": _int(ds.get("Columns")) or 0,
        "frames": _int(ds.get("NumberOfFrames")) or 1,
        "bits_allocated": _int(ds.get("BitsAllocated")) or 0,
        "photometric": _text(ds, "PhotometricInterpretation")[:16],
        "image_position": _multi(ds.get("ImagePositionPatient")),
        "image_orientation": _multi(ds.get("ImageOrientationPatient")),
        "slice_location": None,
        "pixel_spacing": _multi(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")),
    }
    try:
        sl = ds.get("SliceLocation")
        meta["slice_location"] = float(sl) if sl not in (None, "") else None
    except (TypeError, ValueError):
        pass
    if meta["sop_uid"] and ds.file_meta.get("MediaStorageSOPInstanceUID") not in (
            None, "", meta["sop_uid"]):
        raise DicomRejected("Media Storage SOP Instance UID (0002,0003) differs from SOP "
                            "Instance UID (0008,0018)")
    return meta, ds
