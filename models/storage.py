"""Files on disk: original DICOM instances, report PDFs and quarantined files.

Originals are written atomically (temporary file in the target folder, fsync, rename,
fsync of the folder) and never modified afterwards. Paths derive from UIDs, which are
checked against the DICOM UID grammar first, so no received value can steer a path.

Layout under data_dir:
    dicom/<study uid>/<series uid>/<sop instance uid>.dcm
    derived/<study uid>/<series uid>/<sop instance uid>.dcm   (fast-decoding copies)
    reports/<study uid>/<sha256>.pdf
    quarantine/<yyyymmdd>/<sha256>.bin
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TMP_PREFIX = ".tmp-"


class StorageError(Exception):
    pass


def valid_uid(uid: str) -> bool:
    return bool(uid) and len(uid) <= 64 and bool(UID_RE.match(uid))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


class Storage:
    def __init__(self, root: Path):
        self.root = Path(root)

    def ensure(self) -> None:
        for sub in ("dicom", "reports", "quarantine"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # paths -----------------------------------------------------------------------------
    def instance_relpath(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        for label, uid in (("Study Instance UID", study_uid), ("Series Instance UID", series_uid),
                           ("SOP Instance UID", sop_uid)):
            if not valid_uid(uid):
                raise StorageError(f"{label} {uid[:80]!r} is not a valid DICOM UID "
                                   "(digits and dots, at most 64 characters)")
        return f"dicom/{study_uid}/{series_uid}/{sop_uid}.dcm"

    def fast_copy_relpath(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """A native-syntax copy of a compressed original, for fast decoding (derived data:
        it can be deleted at any time and is made again)."""
        return "derived/" + self.instance_relpath(study_uid, series_uid, sop_uid)[len("dicom/"):]

    def report_relpath(self, study_uid: str, sha256: str) -> str:
        if not valid_uid(study_uid):
            raise StorageError(f"Study Instance UID {study_uid[:80]!r} is not a valid DICOM UID")
        return f"reports/{study_uid}/{sha256}.pdf"

    def abspath(self, relpath: str) -> Path:
        p = (self.root / relpath).resolve()
        if not p.is_relative_to(self.root.resolve()):
            raise StorageError("path outside the data folder")
        return p

    # writing ---------------------------------------------------------------------------
    def write_atomic(self, relpath: str, data: bytes) -> bool:
        """Write data at relpath unless a file is already there. True if this call wrote it.

        An existing file is never replaced: callers compare hashes first.
        """
        target = self.abspath(relpath)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                # link() fails if the target appeared meanwhile: never overwrite an original.
                os.link(tmp, target)
            except FileExistsError:
                return False
            _fsync_dir(target.parent)
            return True
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

    def read(self, relpath: str) -> bytes:
        return self.abspath(relpath).read_bytes()

    def quarantine(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        rel = f"quarantine/{time.strftime('%Y%m%d')}/{digest}.bin"
        self.write_atomic(rel, data)
        return rel

    # housekeeping ----------------------------------------------------------------------
    def clean_stale_temp_files(self, older_than_s: float = 600) -> int:
        """Remove temporary files left by a crash. Returns how many were removed."""
        removed = 0
        if not self.root.exists():
            return 0
        cutoff = time.time() - older_than_s
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    p = Path(dirpath) / name
                    try:
                        if p.stat().st_mtime < cutoff:
                            p.unlink()
                            removed += 1
                    except FileNotFoundError:
                        pass
        if removed:
            log.warning("removed %d stale temporary files under %s", removed, self.root)
        return removed

    def writable(self) -> bool:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{TMP_PREFIX}probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"ok")
            probe.unlink()
            return True
        except OSError:
            return False

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize
