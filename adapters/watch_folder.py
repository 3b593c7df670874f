"""The watched folder: a PACS or RIS drops files, CloudFilm takes them in.

Convention (docs/integration.md):
- a DICOM file (any name; recognised by its 'DICM' marker) is stored like a C-STORE;
- a report PDF `<accession>.pdf` (or `<accession>_<anything>.pdf`) files the exam's report;
  a sidecar `<same name>.json` may instead give accession_number or study_uid, status,
  findings, impression, author, reviewer, signed_at, and a patient to create the exam;
- a JPEG/PNG/TIFF picture needs a sidecar `<same name>.json` with its exam metadata
  (patient_id, patient_name, accession_number, modality ES/SM/XC, …); it becomes DICOM.
A file is taken once it has not changed for two scans. Afterwards it is moved to done/
(by date) or failed/ next to `<name>.reason.txt` saying why. Files whose names start with
'.' or end with .part/.tmp are left alone (still being written).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from pathlib import Path

from models.catalog import Catalog, CatalogError
from models.db import write_transaction
from models.integration import (CrossPatient, IntegrationError, ReportFields, file_report,
                                find_exam, note_event, upsert_order)

from .convert import is_picture
from .import_api import _datetime, patient_fields, store_dicom, store_picture

log = logging.getLogger(__name__)

SKIP_SUFFIXES = (".part", ".tmp", ".json", ".reason.txt", ".filepart", ".crdownload")


def shown_name(p: Path) -> str:
    """A file's name for people, logs and the database. Names written by Chinese Windows
    tools (a share mounted without utf8) arrive as GBK/GB18030 bytes, which Python keeps as
    lone surrogates that no database or log line can hold: decode those bytes as GB18030.
    File operations keep using the path itself."""
    try:
        p.name.encode("utf-8")
        return p.name
    except UnicodeEncodeError:
        raw = os.fsencode(p.name)
    try:
        return raw.decode("gb18030")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace")


class WatchFolder:
    def __init__(self, catalog: Catalog, folder: str | Path, *, receivers: list[str] = (),
                 charset_fallback: str = "GB18030"):
        self.catalog = catalog
        self.root = Path(folder)
        self.done = self.root / "done"
        self.failed = self.root / "failed"
        self.receivers = list(receivers)
        self.charset_fallback = charset_fallback
        self._seen: dict[Path, tuple[int, float]] = {}
        self.processed = self.rejected = 0

    def ensure(self) -> None:
        for d in (self.root, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)

    def candidates(self) -> list[Path]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            d = Path(dirpath)
            if d == self.root:
                dirnames[:] = [n for n in dirnames if n not in ("done", "failed")
                               and not n.startswith(".")]
            for n in sorted(filenames):
                if n.startswith(".") or n.lower().endswith(SKIP_SUFFIXES):
                    continue
                out.append(d / n)
        # images first, report PDFs last: a report finds the exam its images created
        return sorted(out, key=lambda p: (p.suffix.lower() == ".pdf", str(p)))

    def scan(self, *, settle: bool = True) -> int:
        """One pass; with settle a file is taken only when unchanged since the last pass.
        Returns how many files were handled."""
        self.ensure()
        handled = 0
        current = {}
        for p in self.candidates():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            sig = (st.st_size, st.st_mtime)
            current[p] = sig
            if settle and self._seen.get(p) != sig:
                continue
            self.take(p)
            current.pop(p, None)
            handled += 1
        self._seen = current
        return handled

    def take(self, p: Path) -> bool:
        sidecar = p.with_name(p.name + ".json")
        if not sidecar.exists():
            alt = p.with_suffix(".json")
            sidecar = alt if alt.exists() else sidecar
        try:
            note = self._apply(p, sidecar if sidecar.exists() else None)
        except (IntegrationError, CatalogError, ValueError) as exc:
            self._move(p, sidecar, self.failed, str(exc))
            note_event("folder", shown_name(p)[:128], "error", str(exc))
            log.info("watched folder: %s failed: %s", shown_name(p), exc)
            self.rejected += 1
            return False
        except OSError as exc:
            log.warning("watched folder: %s cannot be read now: %s", shown_name(p), exc)
            return False
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the folder
            log.exception("watched folder: %s", shown_name(p))
            self._move(p, sidecar, self.failed, f"internal error: {type(exc).__name__}: {exc}")
            self.rejected += 1
            return False
        self._move(p, sidecar, self.done / dt.date.today().isoformat(), None)
        log.info("watched folder: %s → %s", shown_name(p), note)
        self.processed += 1
        return True

    def _sidecar(self, sidecar: Path | None) -> dict:
        if sidecar is None:
            return {}
        try:
            doc = json.loads(sidecar.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IntegrationError(f"sidecar {shown_name(sidecar)} is not UTF-8 JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise IntegrationError(f"sidecar {shown_name(sidecar)} must hold a JSON object")
        return doc

    def _apply(self, p: Path, sidecar: Path | None) -> str:
        data = p.read_bytes()
        origin = f"folder:{shown_name(p)}"[:255]
        if not data:
            raise IntegrationError("empty file")
        if data[128:132] == b"DICM":
            r = store_dicom(self.catalog, data, origin, "folder", self.charset_fallback,
                            self.receivers)
            return f"DICOM {r['sop_uid']} {r['outcome']}"
        if data.startswith(b"%PDF-"):
            return self._report(p, data, self._sidecar(sidecar))
        if is_picture(p.name):
            doc = self._sidecar(sidecar)
            if not doc:
                raise IntegrationError(f"picture without its sidecar {shown_name(p)}.json giving "
                                       "patient_id, accession_number and modality")
            r = store_picture(self.catalog, data, doc, origin, "folder",
                              uid_seed=f"folder:{shown_name(p)}:{len(data)}")
            return f"picture → DICOM {r['sop_uid']} {r['outcome']}"
        self.catalog.quarantine(data, "not DICOM, PDF or a JPEG/PNG/TIFF picture", "folder",
                                origin)
        raise IntegrationError("not a DICOM file (no DICM marker), a PDF or a JPEG/PNG/TIFF "
                               "picture")

    def _report(self, p: Path, pdf: bytes, doc: dict) -> str:
        acc = str(doc.get("accession_number") or
                  shown_name(p).rsplit(".", 1)[0].split("_")[0]).strip()
        uid = str(doc.get("study_uid") or "").strip()
        status = doc.get("status", "final")
        try:
            return self._file_report(p, pdf, doc, acc, uid, status)
        except CrossPatient as exc:       # its quarantine record, after the rollback
            if exc.after_rollback is not None:
                exc.after_rollback()
            raise

    def _file_report(self, p: Path, pdf: bytes, doc: dict, acc: str, uid: str,
                     status) -> str:
        with write_transaction():
            exam = find_exam(acc or None, uid or None)
            if exam is None:
                if not doc.get("patient"):
                    raise IntegrationError(f"no exam with accession number {acc!r} (name the "
                                           "PDF <accession>.pdf or give a sidecar with a "
                                           "patient)")
                exam = upsert_order(self.catalog, patient_fields(doc["patient"]),
                                    {"accession": acc, "study_uid": uid,
                                     "status": "examined"}, source="folder")
            r = ReportFields(findings=str(doc.get("findings") or ""), pdf=pdf,
                             impression=str(doc.get("impression") or ""),
                             author=str(doc.get("author") or ""),
                             reviewer=str(doc.get("reviewer") or ""),
                             signed_at=_datetime(doc.get("signed_at"), "signed_at"),
                             status=status, source="folder", origin=shown_name(p),
                             patient_id=patient_fields(doc["patient"])["patient_id"]
                             if doc.get("patient") else "")
            file_report(self.catalog, exam, r, receivers=self.receivers)
        return f"report PDF for {exam.accession_number or exam.study_uid}"

    def _move(self, p: Path, sidecar: Path | None, dest: Path, reason: str | None) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / p.name
        if target.exists():
            target = dest / f"{p.stem}-{dt.datetime.now():%H%M%S%f}{p.suffix}"
        shutil.move(str(p), target)
        if sidecar is not None and sidecar.exists():
            shutil.move(str(sidecar), target.with_name(target.name + ".json"))
        if reason is not None:
            target.with_name(target.name + ".reason.txt").write_text(reason + "\n",
                                                                     encoding="utf-8")
