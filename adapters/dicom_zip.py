"""A ZIP of original DICOM files plus a DICOMDIR, streamed without building it.

Every entry is *stored* (DICOM pixel data is mostly compressed already), so the archive's
size is known before the first byte is sent: local headers, file sizes, data descriptors,
the central directory and its end record all have fixed lengths. The layout is a pure
function of the file list (names, sizes, a fixed timestamp, a DICOMDIR whose File-set UID
is derived from the instances), so a resumed download (HTTP Range) gets exactly the same
bytes as the first attempt. CRC-32s go into data descriptors after each file (computed
while streaming; for a resumed range the skipped files are read to compute them, and kept
in a small cache). ZIP64 records are written when the archive passes 4 GiB.

The DICOMDIR is built with pydicom's FileSet from the originals' headers; the originals
themselves are never modified: the archive holds their bytes as stored.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import shutil
import struct
import tempfile
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
ZIP32_LIMIT = 0xFFFFFFFF
FLAG_DESCRIPTOR = 0x0008


class ZipLayoutError(Exception):
    pass


@dataclass(frozen=True)
class Source:
    """One original file to put into the archive: where it is stored (a
    models.storage.StorageBackend and the file's relative path), its size and hash."""
    storage: object
    relpath: str
    size: int
    sop_uid: str
    sha256: str = ""


@dataclass
class Entry:
    name: str
    size: int
    source: Source | None = None  # a stored file, or
    data: bytes | None = None     # bytes made here (the DICOMDIR)
    offset: int = 0               # of the local header
    key: str = ""                 # cache key of the CRC


_crc_cache: OrderedDict[str, int] = OrderedDict()
_crc_lock = threading.Lock()


def _crc_get(key: str) -> int | None:
    with _crc_lock:
        v = _crc_cache.get(key)
        if v is not None:
            _crc_cache.move_to_end(key)
        return v


def _crc_put(key: str, value: int) -> None:
    with _crc_lock:
        _crc_cache[key] = value
        _crc_cache.move_to_end(key)
        while len(_crc_cache) > 100_000:
            _crc_cache.popitem(last=False)


def _dos_time(t: dt.datetime) -> tuple[int, int]:
    t = max(t, dt.datetime(1980, 1, 1))
    return ((t.hour << 11) | (t.minute << 5) | (t.second // 2),
            ((t.year - 1980) << 9) | (t.month << 5) | t.day)


class ZipLayout:
    def __init__(self, entries: list[Entry], when: dt.datetime, force_zip64: bool = False):
        self.entries = entries
        self.dos_time, self.dos_date = _dos_time(when)
        names = set()
        pos = 0
        for e in entries:
            if e.name in names:
                raise ZipLayoutError(f"duplicate entry name {e.name}")
            names.add(e.name)
            if e.size >= ZIP32_LIMIT:
                raise ZipLayoutError(f"{e.name}: single files of 4 GiB or more are not "
                                     "supported")
            e.name.encode("ascii")
            e.offset = pos
            pos += 30 + len(e.name) + e.size + 16
        self.cd_offset = pos
        self.force_zip64 = force_zip64
        self.zip64 = force_zip64 or pos >= ZIP32_LIMIT or len(entries) >= 0xFFFF
        self.cd_size = sum(46 + len(e.name) + self._cd_extra_len(e) for e in entries)
        end = 22 + (56 + 20 if self.zip64 else 0)
        self.size = self.cd_offset + self.cd_size + end
        h = hashlib.sha256()
        h.update(f"{self.size}|{self.dos_date}|{self.dos_time}".encode())
        for e in entries:
            h.update(f"{e.name}|{e.size}|{e.key}\n".encode())
        self.etag = '"' + h.hexdigest()[:32] + '"'

    # pieces ------------------------------------------------------------------------------
    def _needs64(self, e: Entry) -> bool:
        return self.zip64 and (self.force_zip64 or e.offset >= ZIP32_LIMIT)

    def _cd_extra_len(self, e: Entry) -> int:
        return 12 if self._needs64(e) else 0

    def _local_header(self, e: Entry) -> bytes:
        name = e.name.encode("ascii")
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, FLAG_DESCRIPTOR, 0, self.dos_time,
                           self.dos_date, 0, e.size, e.size, len(name), 0) + name

    def crc_of(self, e: Entry) -> int:
        if e.data is not None:
            return zlib.crc32(e.data)
        v = _crc_get(e.key)
        if v is None:
            crc = 0
            with e.source.storage.open(e.source.relpath) as fh:
                while True:
                    b = fh.read(1 << 20)
                    if not b:
                        break
                    crc = zlib.crc32(b, crc)
            _crc_put(e.key, crc)
            v = crc
        return v

    def _descriptor(self, e: Entry) -> bytes:
        return struct.pack("<IIII", 0x08074B50, self.crc_of(e), e.size, e.size)

    def _central(self) -> bytes:
        out = io.BytesIO()
        for e in self.entries:
            name = e.name.encode("ascii")
            big = self._needs64(e)
            extra = struct.pack("<HHQ", 0x0001, 8, e.offset) if big else b""
            out.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45 if big else 20,
                                  45 if big else 20, FLAG_DESCRIPTOR, 0, self.dos_time,
                                  self.dos_date, self.crc_of(e), e.size, e.size, len(name),
                                  len(extra), 0, 0, 0, 0o100644 << 16,
                                  0xFFFFFFFF if big else e.offset))
            out.write(name + extra)
        n = len(self.entries)
        if self.zip64:
            z64_at = self.cd_offset + self.cd_size
            out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n,
                                  self.cd_size, self.cd_offset))
            out.write(struct.pack("<IIQI", 0x07064B50, 0, z64_at, 1))
            out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(n, 0xFFFF),
                                  min(n, 0xFFFF), min(self.cd_size, 0xFFFFFFFF), 0xFFFFFFFF, 0))
        else:
            out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, self.cd_size,
                                  self.cd_offset, 0))
        data = out.getvalue()
        assert len(data) == self.size - self.cd_offset, "ZIP layout arithmetic"
        return data

    # streaming ----------------------------------------------------------------------------
    def prepare(self, start: int, end: int) -> None:
        """Compute (blocking; call it off the event loop) the CRC-32s that bytes [start, end]
        need but that streaming them does not compute on the way: those of files only partly
        inside the range whose data descriptor, or any central directory entry, is inside it.
        Streaming the range then only reads the bytes it sends."""
        central = end >= self.cd_offset
        for e in self.entries:
            d0 = e.offset + 30 + len(e.name)
            t0 = d0 + e.size
            whole = start <= d0 and t0 - 1 <= end
            if not whole and (central or (t0 <= end and t0 + 16 > start)):
                self.crc_of(e)

    def iter_range(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end] (inclusive) of the archive, in chunks; blocking file reads."""
        end = self.size - 1 if end is None else end
        if not 0 <= start <= end < self.size:
            raise ZipLayoutError("range outside the archive")
        for e in self.entries:
            header = self._local_header(e)
            h0 = e.offset
            d0 = h0 + len(header)
            t0 = d0 + e.size
            t1 = t0 + 16
            if t1 <= start:
                continue
            if h0 > end:
                break
            yield from _clip(header, h0, start, end)
            if d0 <= end and t0 > start:
                yield from self._data(e, d0, start, end)
            if t0 <= end and t1 > start:
                yield from _clip(self._descriptor(e), t0, start, end)
        if end >= self.cd_offset:
            yield from _clip(self._central(), self.cd_offset, start, end)

    def _data(self, e: Entry, d0: int, start: int, end: int) -> Iterator[bytes]:
        lo = max(start, d0) - d0
        hi = min(end + 1, d0 + e.size) - d0
        if e.data is not None:
            yield e.data[lo:hi]
            return
        whole = lo == 0 and hi == e.size and _crc_get(e.key) is None
        crc = 0
        with e.source.storage.open(e.source.relpath) as fh:
            if fh.seek(0, os.SEEK_END) != e.size:
                raise ZipLayoutError(f"{e.name}: the stored file changed size")
            fh.seek(lo)
            left = hi - lo
            while left > 0:
                b = fh.read(min(CHUNK, left))
                if not b:
                    raise ZipLayoutError(f"{e.name}: file shorter than recorded")
                left -= len(b)
                if whole:
                    crc = zlib.crc32(b, crc)
                yield b
        if whole:
            _crc_put(e.key, crc)


def _clip(data: bytes, at: int, start: int, end: int) -> Iterator[bytes]:
    lo = max(start - at, 0)
    hi = min(end + 1 - at, len(data))
    if hi > lo:
        yield data[lo:hi]


# DICOMDIR ---------------------------------------------------------------------------------
def _fill_for_record(ds) -> None:
    """DICOMDIR records need a few Type 1 attributes that real files sometimes lack; fill
    them on the header copy used for the record (the original file is untouched)."""
    for kw, value in (("PatientID", "UNKNOWN"), ("StudyDate", "19000101"),
                      ("StudyTime", "000000"), ("StudyID", ""), ("AccessionNumber", ""),
                      ("StudyDescription", ""), ("PatientName", ""),
                      ("SeriesNumber", 1), ("InstanceNumber", 1), ("Modality", "OT")):
        if kw not in ds or (ds[kw].value in (None, "") and kw in ("PatientID", "StudyDate",
                                                                 "StudyTime", "Modality")):
            setattr(ds, kw, value)


def fileset_uid(sources: list[Source]) -> str:
    h = hashlib.sha256("|".join(sorted(s.sop_uid for s in sources)).encode()).digest()
    return "2.25." + str(int.from_bytes(h[:16], "big"))


def build_dicomdir(sources: list[Source]) -> tuple[bytes, dict[str, str]]:
    """DICOMDIR bytes and the archive name of each SOP Instance UID (PT000000/ST…/IM…).

    Files pydicom cannot describe in a DICOMDIR are left out of the mapping (they go into
    the archive under OTHER/)."""
    import pydicom
    from pydicom.fileset import FileSet

    fs = FileSet()
    fs._uid = pydicom.uid.UID(fileset_uid(sources))
    fs.ID = "CLOUDFILM"
    for s in sources:
        try:
            with s.storage.open(s.relpath) as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
            _fill_for_record(ds)
            fs.add(ds)
        except Exception as exc:  # noqa: BLE001 - one odd file must not fail the download
            log.warning("DICOMDIR: %s left out of the directory (%s: %s)", s.sop_uid,
                        type(exc).__name__, exc)
    tmp = tempfile.mkdtemp(prefix="cf-dicomdir-")
    try:
        if not len(fs):
            return b"", {}
        fs.write(tmp)
        data = (Path(tmp) / "DICOMDIR").read_bytes()
        mapping = {}
        dd = pydicom.dcmread(io.BytesIO(data))
        for rec in dd.DirectoryRecordSequence:
            fid = rec.get("ReferencedFileID")
            uid = rec.get("ReferencedSOPInstanceUIDInFile")
            if fid and uid:
                parts = [fid] if isinstance(fid, str) else list(fid)
                mapping[str(uid)] = "/".join(parts)
        return data, mapping
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


MISSING_NAME = "MISSING.TXT"


def missing_note(sop_uids) -> bytes:
    """The note an archive carries when originals had to be left out (UTF-8 with a BOM, so
    Windows Notepad shows the Chinese)."""
    lines = ["以下图像的原始文件已损坏或缺失，未放入本压缩包，并已报告系统管理员。",
             "请联系医院影像科重新获取。",
             "The originals of these images are damaged or missing: they are not in this "
             "archive and have been reported to the administrators. Please ask the "
             "hospital's imaging department.", "", "SOP Instance UID:"]
    lines += list(sop_uids)
    return "\ufeff".encode() + "\r\n".join(lines + [""]).encode("utf-8")


def build_layout(sources: list[Source], when: dt.datetime,
                 force_zip64: bool = False, missing: tuple[str, ...] = ()) -> ZipLayout:
    """The archive of these originals (deterministic: same input, same bytes); `missing`:
    SOP UIDs left out (damaged originals), listed in MISSING.TXT."""
    sources = sorted(sources, key=lambda s: s.sop_uid)
    dicomdir, names = build_dicomdir(sources)
    entries: list[Entry] = []
    if dicomdir:
        entries.append(Entry("DICOMDIR", len(dicomdir), data=dicomdir))
    if missing:
        note = missing_note(sorted(missing))
        entries.append(Entry(MISSING_NAME, len(note), data=note))
    other = 0
    ordered = sorted(sources, key=lambda s: (names.get(s.sop_uid) is None,
                                             names.get(s.sop_uid, ""), s.sop_uid))
    for s in ordered:
        name = names.get(s.sop_uid)
        if name is None:
            name = f"OTHER/FILE{other:04d}.dcm"
            other += 1
        size = s.storage.size(s.relpath)
        if size != s.size:
            raise ZipLayoutError(f"{s.sop_uid}: stored file size {size} differs from "
                                 f"the index ({s.size})")
        key = s.sha256 or f"{s.storage!r}|{s.relpath}|{size}"
        entries.append(Entry(name, s.size, source=s, key=key))
    return ZipLayout(entries, when, force_zip64=force_zip64)


_layouts: OrderedDict[tuple, ZipLayout] = OrderedDict()
_layouts_lock = threading.Lock()


def cached_layout(sources: list[Source], when: dt.datetime,
                  missing: tuple[str, ...] = ()) -> ZipLayout:
    """build_layout with a small cache (a resumed download does not rebuild the DICOMDIR)."""
    key = (when, tuple(sorted((s.sop_uid, s.size, s.sha256, s.relpath, repr(s.storage))
                              for s in sources)), tuple(sorted(missing)))
    with _layouts_lock:
        hit = _layouts.get(key)
        if hit is not None:
            _layouts.move_to_end(key)
            return hit
    layout = build_layout(sources, when, missing=missing)
    with _layouts_lock:
        _layouts[key] = layout
        while len(_layouts) > 64:
            _layouts.popitem(last=False)
    return layout
