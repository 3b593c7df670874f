"""Compare two DICOM files carrying the same SOP Instance UID by content, not bytes.

Used by the catalog when an instance arrives again (models/catalog.py store_instance; the
decision and the storage are the catalog's, this module only says what differs):

- pixels: the same when the pixel data elements hold the same bytes in the same transfer
  syntax, else when the decoded pixel arrays are equal (a hash of each array);
- attributes: every element outside the file meta (group 0002) and the pixel data, compared
  by value after character-set decoding, so explicit/implicit VR, byte order, compression
  and the sender's implementation UID do not count. Elements that only describe how the
  pixels are encoded (photometric interpretation after a YBR→RGB decompression, planar
  configuration, lossy compression flags) are ignored when the decoded pixels are equal.

The answer names changed attributes by keyword (or tag), never their values.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from .dicom_meta import read_dataset

log = logging.getLogger(__name__)

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)       # Pixel Data, Float, Double Float
ENCODING_TAGS = {
    0x00280004,     # Photometric Interpretation (YBR_FULL_422 → RGB on decompression)
    0x00280006,     # Planar Configuration
    0x00282110,     # Lossy Image Compression
    0x00282112,     # Lossy Image Compression Ratio
    0x00282114,     # Lossy Image Compression Method
    0x00080005,     # Specific Character Set (values are compared decoded)
    0xFFFCFFFC,     # Data Set Trailing Padding
}
MAX_NAMES = 50


@dataclass
class Comparison:
    same_pixels: bool
    changed: list[str] = field(default_factory=list)     # keywords (or tags), no values

    @property
    def same(self) -> bool:
        return self.same_pixels and not self.changed


BIG_ENDIAN = "1.2.840.10008.1.2.2"
SWAP = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}      # word-sized binary VRs


def _little_endian(raw: bytes, vr: str, big: bool) -> bytes:
    """Binary words as a little-endian file holds them (big endian files swap them)."""
    size = SWAP.get(vr)
    if not big or not size or len(raw) % size:
        return raw
    import numpy as np
    return np.frombuffer(raw, dtype=f">u{size}").astype(f"<u{size}").tobytes()


def _canon(value, vr: str = "", big: bool = False):
    """A comparable form of an element value, independent of its encoding."""
    if isinstance(value, Sequence):
        return tuple(_dataset_values(item, ignore=(), big=big) for item in value)
    if isinstance(value, (bytes, bytearray)):
        raw = _little_endian(bytes(value), vr, big).rstrip(b"\x00 ")
        try:
            return raw.decode("ascii").strip()
        except UnicodeDecodeError:
            return raw
    if isinstance(value, PersonName):
        return str(value).strip()
    if isinstance(value, (MultiValue, list, tuple)):
        return tuple(_canon(v) for v in value)
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, int):
        return repr(float(value))
    if value is None:
        return ""
    s = str(value).strip()
    try:                               # "1.0" (DS) and 1.0 (FD) are the same number
        return repr(float(s)) if s and s[0] in "+-.0123456789" else s
    except ValueError:
        return s


def _dataset_values(ds: Dataset, ignore, big: bool = False) -> dict:
    out = {}
    for elem in ds:
        tag = int(elem.tag)
        if (tag >> 16) == 0x0002 or (tag & 0xFFFF) == 0 or tag in ignore:
            continue
        try:
            out[tag] = _canon(elem.value, str(elem.VR), big)
        except Exception:  # noqa: BLE001 - an undecodable value still compares by bytes
            out[tag] = repr(getattr(elem, "value", None))
    return out


def _tag_name(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _pixel_element(ds: Dataset):
    for tag in PIXEL_TAGS:
        if tag in ds:
            return ds[tag]
    return None


def _pixel_hash(ds: Dataset) -> str | None:
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - no decoder for this syntax, broken frames
        log.info("pixel comparison: cannot decode (%s)", type(exc).__name__)
        return None
    h = hashlib.sha256()
    h.update(f"{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def same_pixels(old: Dataset, new: Dataset) -> bool:
    a, b = _pixel_element(old), _pixel_element(new)
    if a is None or b is None:
        return a is None and b is None
    ts_a = str(old.file_meta.get("TransferSyntaxUID", ""))
    ts_b = str(new.file_meta.get("TransferSyntaxUID", ""))
    if a.tag == b.tag and ts_a == ts_b and bytes(a.value or b"") == bytes(b.value or b""):
        return True
    ha = _pixel_hash(old)
    return ha is not None and ha == _pixel_hash(new)


def compare_datasets(old: Dataset, new: Dataset) -> Comparison:
    for ds in (old, new):
        try:
            ds.decode()
        except Exception:  # noqa: BLE001 - compared as read
            pass
    pixels = same_pixels(old, new)
    ignore = set(PIXEL_TAGS) | (ENCODING_TAGS if pixels else {0x00080005, 0xFFFCFFFC})
    va, vb = (_dataset_values(ds, ignore, big=_is_big_endian(ds)) for ds in (old, new))
    changed = sorted(t for t in set(va) | set(vb) if va.get(t) != vb.get(t))
    return Comparison(pixels, [_tag_name(t) for t in changed[:MAX_NAMES]])


def _is_big_endian(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return meta is not None and str(meta.get("TransferSyntaxUID", "")) == BIG_ENDIAN


def compare_files(old: bytes, new: bytes) -> Comparison:
    """Compare two stored/received DICOM files (raises DicomRejected if one is unreadable)."""
    return compare_datasets(read_dataset(old), read_dataset(new))
