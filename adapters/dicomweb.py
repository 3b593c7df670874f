"""DICOMweb encodings (PS3.18): DICOM JSON of QIDO-RS rows, instance metadata with
BulkDataURIs, transcoding to explicit VR little endian, frames, and multipart/related bodies.

Pure functions over stored bytes and catalogue rows; the handlers (server/handlers/dicomweb.py)
look rows up and check access.
"""
from __future__ import annotations

import importlib
import io
import logging
import re
import threading
from collections import OrderedDict

import orjson

# loaded with the routes, not on the first metadata or frame request after a start (the
# import costs ~0.4 s on the reference machine)
importlib.import_module("pydicom")
log = logging.getLogger(__name__)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
UNCOMPRESSED = {IMPLICIT_LE, EXPLICIT_LE, "1.2.840.10008.1.2.2"}
CJK_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")

# keyword -> (tag, VR)
TAGS = {
    "SpecificCharacterSet": ("00080005", "CS"),
    "SOPClassUID": ("00080016", "UI"),
    "SOPInstanceUID": ("00080018", "UI"),
    "StudyDate": ("00080020", "DA"),
    "StudyTime": ("00080030", "TM"),
    "AccessionNumber": ("00080050", "SH"),
    "Modality": ("00080060", "CS"),
    "ModalitiesInStudy": ("00080061", "CS"),
    "InstitutionName": ("00080080", "LO"),
    "ReferringPhysicianName": ("00080090", "PN"),
    "RetrieveURL": ("00081190", "UR"),
    "StudyDescription": ("00081030", "LO"),
    "SeriesDescription": ("0008103E", "LO"),
    "AvailableTransferSyntaxUID": ("00083002", "UI"),
    "PatientName": ("00100010", "PN"),
    "PatientID": ("00100020", "LO"),
    "PatientBirthDate": ("00100030", "DA"),
    "PatientSex": ("00100040", "CS"),
    "BodyPartExamined": ("00180015", "CS"),
    "StudyInstanceUID": ("0020000D", "UI"),
    "SeriesInstanceUID": ("0020000E", "UI"),
    "SeriesNumber": ("00200011", "IS"),
    "InstanceNumber": ("00200013", "IS"),
    "NumberOfStudyRelatedSeries": ("00201206", "IS"),
    "NumberOfStudyRelatedInstances": ("00201208", "IS"),
    "NumberOfSeriesRelatedInstances": ("00201209", "IS"),
    "NumberOfFrames": ("00280008", "IS"),
    "Rows": ("00280010", "US"),
    "Columns": ("00280011", "US"),
    "BitsAllocated": ("00280100", "US"),
}
BY_TAG = {tag: kw for kw, (tag, _) in TAGS.items()}

STUDY_DEFAULT = ["SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber",
                 "ModalitiesInStudy", "ReferringPhysicianName", "PatientName", "PatientID",
                 "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDescription",
                 "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                 "RetrieveURL"]
SERIES_DEFAULT = ["SpecificCharacterSet", "Modality", "SeriesDescription", "SeriesInstanceUID",
                  "SeriesNumber", "NumberOfSeriesRelatedInstances", "StudyInstanceUID",
                  "RetrieveURL"]
INSTANCE_DEFAULT = ["SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceNumber",
                    "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
                    "AvailableTransferSyntaxUID", "StudyInstanceUID", "SeriesInstanceUID",
                    "RetrieveURL"]
STUDY_ALL = STUDY_DEFAULT + ["InstitutionName"]
SERIES_ALL = SERIES_DEFAULT + ["BodyPartExamined"]


def keyword_of(key: str) -> str | None:
    """A QIDO query key (keyword or 8-digit hex tag) as our keyword, else None."""
    if key in TAGS:
        return key
    return BY_TAG.get(key.upper())


def person_name(text: str) -> dict | None:
    """PS3.18 F.2.2 PersonName. Chinese modalities and HIS put the Chinese name in the first
    component group (GB18030 or UTF-8), so it goes out as the Alphabetic group as stored (what
    OHIF, Weasis and Orthanc show) and again as the Ideographic group (no pinyin is stored);
    other names as the Alphabetic group."""
    text = (text or "").strip()
    if not text:
        return None
    if CJK_RE.search(text):
        return {"Alphabetic": text, "Ideographic": text}
    return {"Alphabetic": text.replace(" ", "^", 1) if "^" not in text else text}


def _date(key):
    def get(row, _base):
        d = row.get(key)
        return [f"{d.year:04d}{d.month:02d}{d.day:02d}"] if d else None
    return get


def _person(key):
    def get(row, _base):
        pn = person_name(row.get(key))
        return [pn] if pn else None
    return get


def _plain(key):
    def get(row, _base):
        v = row.get(key)
        return None if v is None or v == "" else [v]
    return get


def _modalities(row, _base):
    mods = row.get("modality")
    if not mods:
        return None
    return [m for m in mods.replace(",", "\\").split("\\") if m] or None


def _retrieve_url(row, base_url):
    url = f"{base_url}/studies/{row.get('study_uid')}"
    if "series_uid" in row:
        url += f"/series/{row.get('series_uid')}"
    if "sop_uid" in row:
        url += f"/instances/{row.get('sop_uid')}"
    return [url]


def _study_time(row, _base):
    t = row.get("exam_time")
    return [f"{t.hour:02d}{t.minute:02d}{t.second:02d}"] if t else None


# keyword -> value of a QIDO row (a dict of stored values), or None for an empty attribute
_GETTERS = {
    "SpecificCharacterSet": lambda row, _base: ["ISO_IR 192"],
    "StudyDate": _date("exam_date"), "StudyTime": _study_time,
    "PatientBirthDate": _date("patient_birth_date"),
    "PatientName": _person("patient_name"),
    "ReferringPhysicianName": _person("referring_physician"),
    "ModalitiesInStudy": _modalities, "RetrieveURL": _retrieve_url,
    **{kw: _plain(key) for kw, key in {
        "AccessionNumber": "accession_number", "PatientID": "patient_id",
        "PatientSex": "patient_sex", "StudyInstanceUID": "study_uid",
        "StudyDescription": "description", "InstitutionName": "institution",
        "NumberOfStudyRelatedSeries": "num_series",
        "NumberOfStudyRelatedInstances": "num_instances", "Modality": "modality",
        "SeriesDescription": "series_description", "SeriesInstanceUID": "series_uid",
        "SeriesNumber": "series_number",
        "NumberOfSeriesRelatedInstances": "series_num_instances",
        "BodyPartExamined": "body_part", "SOPClassUID": "sop_class_uid",
        "SOPInstanceUID": "sop_uid", "InstanceNumber": "instance_number",
        "Rows": "rows", "Columns": "columns", "BitsAllocated": "bits_allocated",
        "NumberOfFrames": "frames", "AvailableTransferSyntaxUID": "transfer_syntax"}.items()},
}


def qido_json(rows: list[dict], level: str, includefields: list[str], base_url: str) -> list:
    """application/dicom+json of QIDO rows (PS3.18 F.2)."""
    if level == "study":
        fields, everything = STUDY_DEFAULT, STUDY_ALL
    elif level == "series":
        fields, everything = SERIES_DEFAULT, SERIES_ALL + STUDY_ALL
    else:
        fields, everything = INSTANCE_DEFAULT, INSTANCE_DEFAULT + SERIES_ALL + STUDY_ALL
    if "all" in includefields:
        fields = everything
    else:
        fields = fields + [f for f in includefields if f in everything]
    # in tag order, so each row's document comes out sorted without sorting it
    plan = sorted((TAGS[kw][0], TAGS[kw][1], _GETTERS[kw]) for kw in dict.fromkeys(fields))
    out = []
    for row in rows:
        doc = {}
        for tag, vr, get in plan:
            value = get(row, base_url)
            doc[tag] = {"vr": vr, "Value": value} if value else {"vr": vr}
        out.append(doc)
    return out


# ---------------------------------------------------------------------------- WADO-RS
def explicit_le(data: bytes, _in_worker: bool = False) -> bytes:
    """The file re-encoded as explicit VR little endian (decompressing pixel data when the
    stored syntax is compressed). Raises ValueError when that is not possible."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    ts = str(ds.file_meta.get("TransferSyntaxUID", IMPLICIT_LE))
    if ts == EXPLICIT_LE:
        return data
    if ts not in UNCOMPRESSED and "PixelData" in ds and not _in_worker:
        from .fast_copy import run_limited
        try:        # compressed pixel data decodes in the limited worker (issue 14)
            return run_limited(explicit_le, data, True)
        except MemoryError:
            raise ValueError(f"cannot transcode from {ts}: over the decode memory "
                             "limit") from None
    try:
        if ts not in UNCOMPRESSED and "PixelData" in ds:
            ds.decompress(generate_instance_uid=False)   # the same instance, decoded
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is "not transcodable"
        raise ValueError(f"cannot transcode from {ts}: {type(exc).__name__}") from None
    return out.getvalue()


class MetadataCache:
    """DICOM JSON per stored file (sha256), bounded by entry count."""

    def __init__(self, entries: int = 4096):
        self.entries = entries
        self.data: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            v = self.data.get(key)
            if v is not None:
                self.data.move_to_end(key)
            return v

    def put(self, key, value) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.entries:
                self.data.popitem(last=False)


def metadata_json(data: bytes, instance_url: str, threshold: int = 1024) -> dict:
    """One instance's DICOM JSON (PS3.18 F.2) with BulkDataURI for PixelData and values
    larger than `threshold` bytes (served by .../bulkdata/{tag})."""
    import pydicom
    ds = pydicom.dcmread(io.BytesIO(data), force=True)

    def bulk(elem) -> str:
        return f"{instance_url}/bulkdata/{elem.tag:08X}"

    doc = ds.to_json_dict(bulk_data_threshold=threshold, bulk_data_element_handler=bulk)
    for tag in ("7FE00010", "7FE00008", "7FE00009"):
        if tag in doc and "BulkDataURI" not in doc[tag]:
            doc[tag] = {"vr": doc[tag]["vr"], "BulkDataURI": f"{instance_url}/bulkdata/{tag}"}
    # what a retrieve needs to know of the file meta
    ts = str(ds.file_meta.get("TransferSyntaxUID", IMPLICIT_LE))
    doc["00020010"] = {"vr": "UI", "Value": [ts]}
    return doc


PIXEL_TAGS = {b"\xe0\x7f\x10\x00": "7FE00010", b"\xe0\x7f\x08\x00": "7FE00008",
              b"\xe0\x7f\x09\x00": "7FE00009"}


def metadata_json_header(fh, instance_url: str, threshold: int = 1024) -> dict:
    """metadata_json from an open stored file reading only what precedes the pixel data
    (a 512x512 slice: 1 kB instead of 512 kB); elements after the pixel data, which are rare
    (trailing padding), are left out."""
    import pydicom
    ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
    nxt = fh.read(4)

    def bulk(elem) -> str:
        return f"{instance_url}/bulkdata/{elem.tag:08X}"

    doc = ds.to_json_dict(bulk_data_threshold=threshold, bulk_data_element_handler=bulk)
    if nxt in PIXEL_TAGS:
        vr = fh.read(2)
        tag = PIXEL_TAGS[nxt]
        doc[tag] = {"vr": vr.decode("ascii") if vr.isalpha() else "OW",
                    "BulkDataURI": f"{instance_url}/bulkdata/{tag}"}
    doc["00020010"] = {"vr": "UI", "Value": [str(ds.file_meta.get("TransferSyntaxUID",
                                                                   IMPLICIT_LE))]}
    return dict(sorted(doc.items()))


# Instance metadata made once, kept next to the fast copies ----------------------------------
BASE_MARK = "@@DICOMWEB_BASE@@"          # the base URL, filled in per request
SIDECAR_FORMAT = "cfmeta1"               # first line of a sidecar: "<format> <sha256>"


def instance_url(study: str, series: str, sop: str, base: str = BASE_MARK) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{sop}"


def metadata_text(storage, file_path: str, sha256: str, study: str, series: str,
                  sop: str) -> str:
    """One instance's DICOM JSON as text, its URLs starting with BASE_MARK.

    Read from its sidecar (storage.metadata_of: derived data, written at ingest or on the
    first request) when the sidecar was made from this very file (same SHA-256); otherwise
    made from the stored file's header and kept for the next time. A metadata request after
    a restart thus reads small text files and parses no DICOM (issue 16: ≤ 200 ms cold for
    a 300-slice series). Raises OSError or a pydicom error for a missing or unreadable
    original."""
    side = storage.metadata_of(file_path)
    head = f"{SIDECAR_FORMAT} {sha256}\n".encode()
    try:
        with storage.open(side) as fh:
            raw = fh.read()
        if raw.startswith(head):
            body = raw[len(head):]
            try:                                     # a damaged body is made again
                if isinstance(orjson.loads(body), dict):
                    return body.decode("utf-8")
            except (orjson.JSONDecodeError, UnicodeDecodeError):
                pass
        storage.remove(side)                         # from another file, or damaged
    except FileNotFoundError:
        pass
    import json
    with storage.open(file_path) as fh:
        doc = metadata_json_header(fh, instance_url(study, series, sop))
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    try:
        storage.put_atomic(side, head + text.encode("utf-8"), durable=False)
    except OSError as exc:                           # derived data: served anyway
        log.info("metadata sidecar not written: %s", exc.strerror or type(exc).__name__)
    return text


def write_metadata_sidecar(storage, file_path: str, sha256: str, study: str, series: str,
                           sop: str) -> bool:
    """Make an instance's metadata sidecar after ingest (a background job; False when the
    original cannot be read as DICOM: the request path then answers without it)."""
    try:
        metadata_text(storage, file_path, sha256, study, series, sop)
        return True
    except Exception as exc:  # noqa: BLE001 - derived data; never in the way of ingest
        log.info("metadata sidecar of one instance failed: %s", type(exc).__name__)
        return False


def files_etag(files: list[dict]) -> str:
    """A version of a set of stored instances (their UIDs and content hashes, in order):
    a resend or a deletion changes it, so cached documents keyed by it never go stale."""
    import hashlib
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f['sop_uid']}:{f['sha256']}\n".encode())
    return h.hexdigest()


class FrameLayout:
    """Where the frames of an uncompressed explicit/implicit little endian instance lie in
    the stored file (offset of the first pixel byte, bytes per frame, frame count), per
    stored file (sha256), so a frame request reads only that frame's bytes."""

    def __init__(self, entries: int = 20000):
        self.cache = MetadataCache(entries)

    def of(self, sha256: str, open_file) -> tuple | None:
        got = self.cache.get(sha256)
        if got is None:
            with open_file() as fh:
                got = _frame_layout(fh) or ()
            self.cache.put(sha256, got)
        return got or None


def _frame_layout(fh) -> tuple | None:
    import struct

    import pydicom
    ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
    ts = str(ds.file_meta.get("TransferSyntaxUID", IMPLICIT_LE))
    if ts not in (EXPLICIT_LE, IMPLICIT_LE) or "Rows" not in ds:
        return None
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if bits % 8:
        return None
    head = fh.read(12)
    if head[:4] != b"\xe0\x7f\x10\x00":
        return None
    if ts == EXPLICIT_LE:
        length, start = struct.unpack("<I", head[8:12])[0], fh.tell()
    else:
        length, start = struct.unpack("<I", head[4:8])[0], fh.tell() - 4
    n = int(ds.get("NumberOfFrames", 1) or 1)
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * bits // 8
    if length == 0xFFFFFFFF or size * n > length:
        return None
    return start, size, n


def read_frames(fh, layout: tuple, numbers: list[int]) -> list[bytes]:
    """Frames (1-based) of an uncompressed instance by its FrameLayout. Raises IndexError."""
    start, size, n = layout
    out = []
    for k in numbers:
        if not 1 <= k <= n:
            raise IndexError(f"frame {k} does not exist: this instance has {n} frame(s)")
        fh.seek(start + (k - 1) * size)
        out.append(fh.read(size))
    return out


def bulkdata(data: bytes, tag_hex: str) -> bytes | None:
    """The raw value of a top-level element (PixelData stays encoded as stored)."""
    import pydicom
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    tag = int(tag_hex, 16)
    if tag not in ds:
        return None
    value = ds[tag].value
    if isinstance(value, (bytes, bytearray)):
        out = bytes(value)
        if tag == 0x00420011:            # Encapsulated Document: without the pad byte
            out = out.rstrip(b"\x00") if out.startswith(b"%PDF-") else out
        return out
    if isinstance(value, str):
        return value.encode("utf-8")
    return None


def frames(data: bytes, numbers: list[int], keep_compressed: bool,
           _in_worker: bool = False) -> tuple[list[bytes], str]:
    """The frames (1-based) as (bytes per frame, transfer syntax of those bytes): compressed
    frames as stored when keep_compressed, else uncompressed little endian pixels. Raises
    IndexError for a frame that does not exist, ValueError when decoding fails."""
    import pydicom
    from pydicom.encaps import generate_frames
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if "PixelData" not in ds:
        raise IndexError("this instance has no pixel data")
    ts = str(ds.file_meta.get("TransferSyntaxUID", IMPLICIT_LE))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    for k in numbers:
        if not 1 <= k <= n:
            raise IndexError(f"frame {k} does not exist: this instance has {n} frame(s)")
    if ts not in UNCOMPRESSED:
        if keep_compressed:
            allf = list(generate_frames(ds.PixelData, number_of_frames=n))
            return [allf[k - 1] for k in numbers], ts
        if not _in_worker:      # compressed pixel data decodes in the limited worker
            from .fast_copy import run_limited
            try:
                return run_limited(frames, data, numbers, False, True)
            except MemoryError:
                raise ValueError(f"cannot decode {ts}: over the decode memory limit") \
                    from None
        try:
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"cannot decode {ts}: {type(exc).__name__}") from None
        if n == 1:
            arr = arr[None, ...]
        return [arr[k - 1].astype(arr.dtype.newbyteorder("<")).tobytes() for k in numbers], \
            EXPLICIT_LE
    if ts == "1.2.840.10008.1.2.2" or int(ds.get("BitsAllocated", 8)) == 1:
        arr = ds.pixel_array
        if n == 1:
            arr = arr[None, ...]
        return [arr[k - 1].astype(arr.dtype.newbyteorder("<")).tobytes() for k in numbers], \
            EXPLICIT_LE
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    size = rows * cols * spp * (int(ds.BitsAllocated) // 8)
    pixels = bytes(ds.PixelData)
    return [pixels[(k - 1) * size:k * size] for k in numbers], EXPLICIT_LE


# ----------------------------------------------------------------------- multipart
def multipart(parts: list[tuple[str, bytes]], boundary: str) -> bytes:
    out = io.BytesIO()
    for ctype, body in parts:
        out.write(f"--{boundary}\r\nContent-Type: {ctype}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode())
        out.write(body)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """Parts (content type, bytes) of a multipart/related body. Raises ValueError."""
    m = re.search(r'boundary="?([^";]{1,200})"?', content_type or "", re.I)
    if not content_type.lower().startswith("multipart/related") or not m:
        raise ValueError("the body must be multipart/related with a boundary")
    delim = b"--" + m.group(1).encode("latin-1")
    chunks = body.split(delim)
    out = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part has no header block")
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        ctype = "application/dicom"
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                ctype = value.strip()
        out.append((ctype, payload))
    if not out:
        raise ValueError("the multipart body has no parts")
    return out


def part10(data: bytes) -> bytes:
    """A STOW part as a PS3.10 file: some clients send the file without its 128-byte
    preamble (starting at 'DICM' or at the file meta group); the preamble is added back."""
    if data[128:132] == b"DICM":
        return data
    if data[:4] == b"DICM":
        return bytes(128) + data
    if data[:2] == b"\x02\x00" and data[4:6].isalpha():      # explicit VR file meta
        return bytes(128) + b"DICM" + data
    return data
