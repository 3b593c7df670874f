"""Import DICOM from files, folders, DICOMDIR media and ZIP archives.

Every file ends as one line of the summary: imported, already present, or rejected with
its reason. A broken file never stops the import, and nothing is stored half-way: the
catalog writes the original atomically and indexes it in one transaction.
"""
from __future__ import annotations

import logging
import os
import stat
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from models.catalog import ALREADY_PRESENT, REJECTED, STORED, Catalog, find_exam
from models.integration import ReportFields, file_report

from .dicomweb import write_metadata_sidecar
from .fast_copy import make_fast_copies, needs_fast_copy
from .dicom_meta import ENCAPSULATED_PDF, DicomRejected, extract_meta

log = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    imported: int = 0
    already_present: int = 0
    reports: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)   # (name, reason)
    study_uids: set[str] = field(default_factory=set)
    fast_copies: int = 0
    versions: int = 0            # of those imported: new versions of a stored instance

    @property
    def total(self) -> int:
        return self.imported + self.already_present + self.reports + len(self.rejected)

    def as_dict(self) -> dict:
        return {"imported": self.imported, "already_present": self.already_present,
                "versions": self.versions, "reports": self.reports,
                "rejected": [{"file": n, "reason": r} for n, r in self.rejected],
                "studies": sorted(self.study_uids)}


@dataclass
class Item:
    """One candidate file: a display name and a way to read its bytes."""
    name: str
    size: int
    read: Callable[[], bytes]


class Importer:
    def __init__(self, catalog: Catalog, *, charset_fallback: str = "GB18030",
                 max_file_bytes: int = 2 << 30, source: str = "import",
                 fast_copies: bool = True, receivers: list[str] = ()):
        self.catalog = catalog
        self.receivers = list(receivers)     # HL7 'film published' for a filed PDF report
        self.fast_copies = fast_copies
        self._pending_copies: list[tuple[str, str]] = []     # (original, copy) relpaths
        self._pending_metadata: list[tuple[str, ...]] = []   # dicomweb.metadata_text args
        self.charset_fallback = charset_fallback
        self.max_file_bytes = max_file_bytes
        self.source = source

    # discovery -----------------------------------------------------------------------
    def discover(self, paths: list[str | os.PathLike],
                 summary: ImportSummary) -> list[Item]:
        items: list[Item] = []
        for raw in paths:
            p = Path(raw)
            if not p.exists():
                summary.rejected.append((str(p), "no such file or folder"))
            elif p.is_dir():
                found = list(self._walk(p, summary))
                if not found:
                    summary.rejected.append((str(p), "empty folder: no files to import"))
                items.extend(found)
            elif zipfile.is_zipfile(p):
                items.extend(self._zip_items(p, summary))
            elif p.name.upper() == "DICOMDIR":
                items.extend(self._dicomdir_items(p, summary))
            else:
                items.append(self._file_item(p))
        return items

    def _file_item(self, p: Path) -> Item:
        return Item(str(p), p.stat().st_size, lambda p=p: p.read_bytes())

    def _walk(self, folder: Path, summary: ImportSummary) -> Iterator[Item]:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                try:
                    st = p.lstat()
                except OSError as exc:
                    summary.rejected.append((str(p), f"cannot read: {exc.strerror}"))
                    continue
                if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
                    summary.rejected.append((str(p), "not a regular file (links are not "
                                                     "followed)"))
                    continue
                if name.upper() == "DICOMDIR":
                    # Its referenced files are found by the walk itself.
                    continue
                if zipfile.is_zipfile(p):
                    yield from self._zip_items(p, summary)
                else:
                    yield Item(str(p), st.st_size, lambda p=p: p.read_bytes())

    def _dicomdir_items(self, p: Path, summary: ImportSummary) -> list[Item]:
        from pydicom import dcmread
        try:
            ds = dcmread(p)
            records = ds.DirectoryRecordSequence
        except Exception as exc:  # noqa: BLE001
            summary.rejected.append((str(p), f"unreadable DICOMDIR: {exc}"))
            return []
        base = p.parent.resolve()
        items = []
        for rec in records:
            ref = rec.get("ReferencedFileID")
            if not ref:
                continue
            parts = [ref] if isinstance(ref, str) else list(ref)
            target = (base.joinpath(*parts)).resolve()
            name = f"{p}:{'/'.join(parts)}"
            if not target.is_relative_to(base):
                summary.rejected.append((name, "DICOMDIR entry points outside its folder"))
                continue
            if not target.is_file():
                # Media written on Windows often differ in case from the record.
                summary.rejected.append((name, "file listed in the DICOMDIR is missing"))
                continue
            items.append(self._file_item(target))
        return items

    def _zip_items(self, p: Path, summary: ImportSummary) -> list[Item]:
        items = []
        try:
            zf = zipfile.ZipFile(p)
            infos = zf.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            summary.rejected.append((str(p), f"unreadable ZIP archive: {exc}"))
            return []
        for info in infos:
            if info.is_dir():
                continue
            entry = info.filename
            name = f"{p}:{entry}"
            pp = PurePosixPath(entry.replace("\\", "/"))
            if pp.is_absolute() or ".." in pp.parts or (pp.parts and ":" in pp.parts[0]):
                summary.rejected.append((name, "unsafe path in ZIP entry (absolute or '..'); "
                                               "entry skipped"))
                continue
            if pp.name.upper() == "DICOMDIR":
                continue
            if info.file_size > self.max_file_bytes:
                summary.rejected.append((name, f"entry larger than the {self.max_file_bytes >> 20}"
                                               " MiB import limit"))
                continue
            if info.flag_bits & 0x1:
                summary.rejected.append((name, "encrypted ZIP entry"))
                continue

            def read(zp=p, inf=info, limit=self.max_file_bytes) -> bytes:
                with zipfile.ZipFile(zp) as z, z.open(inf) as fh:
                    data = fh.read(limit + 1)
                if len(data) > limit:
                    raise DicomRejected("entry expands beyond the import size limit")
                return data
            items.append(Item(name, info.file_size, read))
        return items

    # import ----------------------------------------------------------------------------
    def import_item(self, item: Item, summary: ImportSummary) -> str:
        if item.size > self.max_file_bytes:
            summary.rejected.append((item.name, f"file larger than the "
                                                f"{self.max_file_bytes >> 20} MiB import limit"))
            return REJECTED
        try:
            data = item.read()
        except DicomRejected as exc:
            summary.rejected.append((item.name, str(exc)))
            return REJECTED
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            summary.rejected.append((item.name, f"cannot read: {exc}"))
            return REJECTED
        if not data:
            summary.rejected.append((item.name, "empty file"))
            return REJECTED
        try:
            meta, ds = extract_meta(data, charset_fallback=self.charset_fallback)
        except DicomRejected as exc:
            if not str(exc).startswith("DICOMDIR"):
                self.catalog.quarantine(data, str(exc), self.source, Path(item.name).name)
            summary.rejected.append((item.name, str(exc)))
            return REJECTED
        if meta["sop_class_uid"] == ENCAPSULATED_PDF:
            return self._import_pdf(item, meta, ds, summary)
        result = self.catalog.store_instance(meta, data, source=self.source,
                                             origin=Path(item.name).name)
        if result.outcome == STORED:
            summary.imported += 1
            if "file_path" in result.extra:
                self._pending_metadata.append((result.extra["file_path"], result.extra["sha256"],
                                               result.study_uid, meta["series_uid"],
                                               result.sop_uid))
            if result.extra.get("resend") == "version":
                summary.versions += 1
            summary.study_uids.add(result.study_uid)
            if self.fast_copies and needs_fast_copy(meta["transfer_syntax"]):
                st = self.catalog.storage
                rel = st.instance_relpath(meta["study_uid"], meta["series_uid"],
                                          meta["sop_uid"],
                                          version=result.extra.get("version", 1))
                self._pending_copies.append((rel, st.fast_copy_of(rel)))
        elif result.outcome == ALREADY_PRESENT:
            summary.already_present += 1
        else:
            summary.rejected.append((item.name, result.reason))
        return result.outcome

    def _import_pdf(self, item, meta, ds, summary) -> str:
        exam = find_exam(meta["study_uid"])
        if exam is None:
            summary.rejected.append((item.name, "encapsulated PDF report for an exam that has "
                                                "no images here yet; import the images first"))
            return REJECTED
        pdf = bytes(ds.get("EncapsulatedDocument", b"") or b"").rstrip(b"\x00")
        try:
            file_report(self.catalog, exam, ReportFields(
                pdf=pdf, pdf_only=True, patient_id=meta["patient_id"], source=self.source,
                origin=Path(item.name).name), receivers=self.receivers)
        except Exception as exc:  # noqa: BLE001 - CatalogError or a broken PDF
            summary.rejected.append((item.name, f"encapsulated PDF rejected: {exc}"))
            return REJECTED
        summary.reports += 1
        return STORED

    def run(self, paths: list[str | os.PathLike], *, progress: bool = False) -> ImportSummary:
        summary = ImportSummary()
        items = self.discover(paths, summary)
        bar = ProgressBar(len(items)) if progress else None
        for item in items:
            try:
                self.import_item(item, summary)
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the import
                log.exception("import of one file failed")
                summary.rejected.append((item.name, f"internal error: {type(exc).__name__}"))
            if bar:
                bar.step()
        if bar:
            bar.done()
        if self._pending_copies:
            pairs, self._pending_copies = self._pending_copies, []
            summary.fast_copies = make_fast_copies(self.catalog.storage, pairs)
        # the WADO-RS metadata of what was stored, after the import itself (header only)
        done, self._pending_metadata = self._pending_metadata, []
        for args in done:
            write_metadata_sidecar(self.catalog.storage, *args)
        return summary


class ProgressBar:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, total: int, stream=None):
        self.total = max(total, 1)
        self.n = 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def step(self) -> None:
        self.n += 1
        if self.tty and (self.n == self.total or self.n % 5 == 0):
            width = 30
            filled = int(width * self.n / self.total)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.n}/{self.total}")
            self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def format_summary(s: ImportSummary) -> str:
    lines = [f"imported: {s.imported}", f"already present: {s.already_present}"]
    if s.reports:
        lines.append(f"report PDFs: {s.reports}")
    lines.append(f"rejected: {len(s.rejected)}")
    for name, reason in s.rejected:
        lines.append(f"  {name}: {reason}")
    return "\n".join(lines)
