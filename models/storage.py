"""Stored files: original DICOM instances, report PDFs, quarantined files, fast copies.

Storage is an interface (StorageBackend): everything that reads or writes a stored file goes
through it by *relative path* (put_atomic, open, exists, size, sha256, remove, and
local_path where the backend has files on this machine). The local folder (Storage) is the
one backend today; a folder shared by several machines is the same backend mounted
everywhere; an object store would be another subclass, and nothing else needs to change.

Originals are written atomically (temporary file in the target folder, fsync, link, fsync of
the folder) and never modified or replaced afterwards. Paths derive from UIDs, which are
checked against the DICOM UID grammar first, so no received value can steer a path.

Layout (relative paths, "/" separated):
    dicom/<study uid>/<series uid>/<sop instance uid>.dcm
    dicom/<study uid>/<series uid>/<sop instance uid>.v<n>.dcm (version n >= 2 of a resend)
    derived/<study uid>/<series uid>/<sop instance uid>.dcm   (fast-decoding copies)
    derived/<study uid>/<series uid>/<sop instance uid>.json  (DICOM JSON metadata)
    reports/<study uid>/<sha256>.pdf
    quarantine/<yyyymmdd>/<sha256>.bin
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

log = logging.getLogger(__name__)

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TMP_PREFIX = ".tmp-"
PROBE_PREFIX = TMP_PREFIX + "probe-"       # Storage.writable's probe files
BLOCK = 1 << 20


class StorageError(Exception):
    pass


def valid_uid(uid: str) -> bool:
    return bool(uid) and len(uid) <= 64 and bool(UID_RE.match(uid))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_stream(fh: BinaryIO) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: fh.read(BLOCK), b""):
        h.update(block)
    return h.hexdigest()


def check_relpath(relpath: str) -> str:
    """A stored file's name: "/"-separated, relative, no "." or ".." parts (StorageError)."""
    parts = relpath.split("/") if isinstance(relpath, str) else []
    if not relpath or relpath.startswith("/") or "\\" in relpath or "\0" in relpath \
            or any(p in ("", ".", "..") for p in parts):
        raise StorageError("path outside the data folder")
    return relpath


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PutResult:
    """What put_atomic did: written is False when a file was already there (left as it was);
    size and sha256 are those of the data given (the hash of bytes is computed on first use:
    callers usually know it already). True in a boolean context when written."""

    __slots__ = ("written", "size", "_sha256", "_data")

    def __init__(self, written: bool, size: int, sha256: str | None = None,
                 data: bytes | None = None):
        self.written, self.size, self._sha256, self._data = written, size, sha256, data

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256, self._data = sha256_bytes(bytes(self._data)), None
        return self._sha256

    def __bool__(self) -> bool:
        return self.written

    def __repr__(self) -> str:
        return f"PutResult(written={self.written}, size={self.size})"


class StorageBackend(abc.ABC):
    """Where stored files live. Every method takes a relative path (see check_relpath).

    Missing files: open, size and sha256 raise FileNotFoundError; remove does nothing.
    """

    # the interface ----------------------------------------------------------------------
    @abc.abstractmethod
    def put_atomic(self, relpath: str, data: bytes | BinaryIO, *,
                   durable: bool = True) -> PutResult:
        """Store data (bytes, or a binary file read to its end) at relpath, all or nothing,
        unless a file is already there: an existing file is never replaced (callers compare
        hashes). durable=False may skip the fsyncs (derived data that can be made again)."""

    @abc.abstractmethod
    def open(self, relpath: str) -> BinaryIO:
        """The stored file for reading: a seekable binary file object (close it)."""

    @abc.abstractmethod
    def exists(self, relpath: str) -> bool: ...

    @abc.abstractmethod
    def size(self, relpath: str) -> int: ...

    @abc.abstractmethod
    def remove(self, relpath: str) -> None: ...

    @abc.abstractmethod
    def local_path(self, relpath: str) -> Path | None:
        """The file's path on this machine for code that needs one (None: the backend has no
        local files; use open)."""

    def sha256(self, relpath: str) -> str:
        """SHA-256 of the stored file (streamed, hex)."""
        with self.open(relpath) as fh:
            return sha256_stream(fh)

    def signature(self, relpath: str) -> tuple | None:
        """Something that changes whenever the stored file is written or replaced, cheaper
        to get than its hash (a verified-hash cache is keyed by it); None when the backend
        has nothing cheaper (the file is then hashed at every check). FileNotFoundError
        for a missing file."""
        return None

    # built on the interface ---------------------------------------------------------------
    def read(self, relpath: str) -> bytes:
        with self.open(relpath) as fh:
            return fh.read()

    def write_atomic(self, relpath: str, data: bytes) -> bool:
        """put_atomic(...).written: True if this call wrote the file."""
        return self.put_atomic(relpath, data).written

    @contextlib.contextmanager
    def path_or_file(self, relpath: str) -> Iterator[Path | BinaryIO]:
        """The local path where one exists, else the open file: for readers such as pydicom
        that take either."""
        p = self.local_path(relpath)
        if p is not None:
            yield p
            return
        with self.open(relpath) as fh:
            yield fh

    def quarantine(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        rel = f"quarantine/{time.strftime('%Y%m%d')}/{digest}.bin"
        self.put_atomic(rel, data)
        return rel

    # names --------------------------------------------------------------------------------
    def instance_relpath(self, study_uid: str, series_uid: str, sop_uid: str,
                         version: int = 1) -> str:
        """The original's name; version 2, 3 … (a resend that replaced it, models/versions.py)
        get names of their own, so no cache keyed by path can serve an older file."""
        for label, uid in (("Study Instance UID", study_uid), ("Series Instance UID", series_uid),
                           ("SOP Instance UID", sop_uid)):
            if not valid_uid(uid):
                raise StorageError(f"{label} {uid[:80]!r} is not a valid DICOM UID "
                                   "(digits and dots, at most 64 characters)")
        suffix = f".v{int(version)}" if version > 1 else ""
        return f"dicom/{study_uid}/{series_uid}/{sop_uid}{suffix}.dcm"

    def fast_copy_relpath(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """A native-syntax copy of a compressed original, for fast decoding (derived data:
        it can be deleted at any time and is made again)."""
        return "derived/" + self.instance_relpath(study_uid, series_uid, sop_uid)[len("dicom/"):]

    @staticmethod
    def fast_copy_of(relpath: str) -> str:
        """The fast copy's name for an original's name (each version has its own)."""
        return "derived/" + relpath[len("dicom/"):] if relpath.startswith("dicom/") \
            else "derived/" + relpath

    @staticmethod
    def metadata_of(relpath: str) -> str:
        """The name of an original's DICOM JSON sidecar (WADO-RS metadata, derived data made
        at ingest or on first request; adapters/dicomweb.metadata_text)."""
        copy = StorageBackend.fast_copy_of(relpath)
        return (copy[:-4] if copy.endswith(".dcm") else copy) + ".json"

    def report_relpath(self, study_uid: str, sha256: str) -> str:
        if not valid_uid(study_uid):
            raise StorageError(f"Study Instance UID {study_uid[:80]!r} is not a valid DICOM UID")
        return f"reports/{study_uid}/{sha256}.pdf"

    # housekeeping (a backend without local folders has nothing to do) ----------------------
    def ensure(self) -> None:
        pass

    def clean_stale_temp_files(self, older_than_s: float = 600) -> int:
        return 0

    def writable(self) -> bool:
        return True

    def free_bytes(self) -> int | None:
        """Bytes free for new files (None: the backend cannot tell)."""
        return None


class Storage(StorageBackend):
    """The local-folder backend: files under root (a local disk or a shared mount)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Storage({str(self.root)!r})"

    def ensure(self) -> None:
        for sub in ("dicom", "reports", "quarantine"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # paths -----------------------------------------------------------------------------
    def abspath(self, relpath: str) -> Path:
        p = (self.root / check_relpath(relpath)).resolve()
        if not p.is_relative_to(self.root.resolve()):
            raise StorageError("path outside the data folder")
        return p

    def local_path(self, relpath: str) -> Path:
        return self.abspath(relpath)

    # reading ---------------------------------------------------------------------------
    def open(self, relpath: str) -> BinaryIO:
        return open(self.abspath(relpath), "rb")

    def exists(self, relpath: str) -> bool:
        return self.abspath(relpath).is_file()

    def size(self, relpath: str) -> int:
        return self.abspath(relpath).stat().st_size

    def signature(self, relpath: str) -> tuple:
        """inode, size and modification and change times in ns: a byte written into the file
        moves mtime and ctime, and ctime cannot be set back (touch -d sets mtime only)."""
        st = self.abspath(relpath).stat()
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    # writing ---------------------------------------------------------------------------
    def put_atomic(self, relpath: str, data: bytes | BinaryIO, *,
                   durable: bool = True) -> PutResult:
        """Temporary file in the target folder, fsync, link (fails if the target appeared
        meanwhile: an original is never overwritten), fsync of the folder."""
        target = self.abspath(relpath)
        if target.exists():
            return _result(False, data)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb") as fh:
                done = _copy_into(data, fh)
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                done.written = False
                return done
            if durable:
                _fsync_dir(target.parent)
            return done
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def remove(self, relpath: str) -> None:
        try:
            self.abspath(relpath).unlink()
        except FileNotFoundError:
            pass

    # housekeeping ----------------------------------------------------------------------
    def clean_stale_temp_files(self, older_than_s: float = 600) -> int:
        """Remove temporary files left by a crash. Returns how many were removed. Write
        probes (writable) live for milliseconds: any found is a leftover, whatever its age."""
        removed = 0
        if not self.root.exists():
            return 0
        cutoff = time.time() - older_than_s
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    p = Path(dirpath) / name
                    try:
                        if name.startswith(PROBE_PREFIX) or p.stat().st_mtime < cutoff:
                            p.unlink()
                            removed += 1
                    except FileNotFoundError:
                        pass
        if removed:
            log.warning("removed %d stale temporary files under %s", removed, self.root)
        return removed

    def writable(self) -> bool:
        """Can a file be written here? The probe file is removed whether or not its write
        succeeded (a full disk creates it, then fails the write)."""
        probe = self.root / f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            return True
        except OSError:
            return False
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass

    def free_bytes(self) -> int | None:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize


def _copy_into(data: bytes | BinaryIO, out: BinaryIO) -> PutResult:
    """Write data (bytes, or a binary file read to its end) to out; written=True."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        out.write(data)
        return PutResult(True, len(data), data=data)
    h = hashlib.sha256()
    size = 0
    for block in iter(lambda: data.read(BLOCK), b""):
        out.write(block)
        h.update(block)
        size += len(block)
    return PutResult(True, size, h.hexdigest())


def _result(written: bool, data: bytes | BinaryIO) -> PutResult:
    """The PutResult of data that is not written (read to its end if a file)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return PutResult(written, len(data), data=data)
    h = hashlib.sha256()
    size = 0
    for block in iter(lambda: data.read(BLOCK), b""):
        h.update(block)
        size += len(block)
    return PutResult(written, size, h.hexdigest())
