"""Service verbs over the data model: store_instance, store_report, find_studies, get_study.

Each verb owns its transaction. Nothing here logs patient names, ID numbers or phones.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from .db import database, write_transaction
from .errors import DomainError
from .schema import (EXAM_CATEGORIES, DownloadLog, Exam, Instance, Patient, Quarantine, Report,
                     Series, utcnow)
from .storage import Storage, StorageError, sha256_bytes

log = logging.getLogger(__name__)

# Outcomes of store_instance
STORED = "stored"
ALREADY_PRESENT = "already_present"
CONFLICT = "conflict"
REJECTED = "rejected"

PATHOLOGY_MODALITIES = {"SM", "GM"}
ENDOSCOPY_MODALITIES = {"ES", "ENDO"}
ULTRASOUND_MODALITIES = {"US", "IVUS"}


def category_for_modality(modality: str) -> str:
    m = (modality or "").upper()
    if m in PATHOLOGY_MODALITIES:
        return "pathology"
    if m in ENDOSCOPY_MODALITIES:
        return "endoscopy"
    if m in ULTRASOUND_MODALITIES:
        return "ultrasound"
    return "radiology"


class CatalogError(DomainError):
    """Bad input to a catalog verb; the message says what is wrong."""

    status = 400


class NotFound(CatalogError):
    status = 404


CROSS_PATIENT = ("PatientID differs from the patient this exam is filed under "
                 "(cross-patient): quarantined, not filed")


def same_patient(patient_db_id: int, patient_id: str | None) -> bool:
    """Is the hospital patient ID `patient_id` the patient row patient_db_id (itself, or a
    record merged into it)?"""
    p = Patient.get_or_none(Patient.patient_id == (patient_id or "").strip())
    for _ in range(8):
        if p is None:
            return False
        if p.id == patient_db_id:
            return True
        if not p.merged_into_id:
            return False
        p = Patient.get_or_none(Patient.id == p.merged_into_id)
    return False


def owner_mismatch(meta: dict) -> bool:
    """Would this instance land in an exam (by Study UID, by the accession of an order
    without images, by its series or SOP Instance UID) filed under another patient?"""
    pid = meta.get("patient_id") or ""
    exam = Exam.get_or_none(Exam.study_uid == meta.get("study_uid"))
    if exam is None and meta.get("accession_number"):
        exam = (Exam.select().where((Exam.accession_number == meta["accession_number"])
                                    & (Exam.study_uid.is_null())).order_by(Exam.id).first())
    owners = [exam.patient_id] if exam is not None else []
    series = Series.get_or_none(Series.series_uid == meta.get("series_uid"))
    if series is not None:
        owners.append(series.exam.patient_id)
    inst = Instance.get_or_none(Instance.sop_uid == meta.get("sop_uid"))
    if inst is not None:
        owners.append(inst.series.exam.patient_id)
    return any(not same_patient(o, pid) for o in set(owners))


@dataclass
class StoreResult:
    outcome: str
    sop_uid: str = ""
    study_uid: str = ""
    reason: str = ""
    extra: dict = field(default_factory=dict)


RETRIES = 5

ID_NUMBER_RE = re.compile(r"^[0-9]{17}[0-9X]$")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_number_check_digit(first17: str) -> str:
    """GB 11643-1999 check character for the first 17 digits of a national ID number."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS))
    return _ID_CHECK[total % 11]


def validate_id_number(value: str) -> str:
    """Normalise and validate a resident ID number (18 characters, GB 11643 check digit)."""
    v = (value or "").strip().upper()
    if not ID_NUMBER_RE.match(v):
        raise CatalogError("身份证号应为18位（最后一位可为X） / the ID number must have 18 "
                           "characters, the last one a digit or X")
    if id_number_check_digit(v[:17]) != v[17]:
        raise CatalogError("身份证号校验位不正确 / the ID number's check digit is wrong")
    return v


# Masking: the one home of how personal data is shown to patients, share visitors, logs.
def mask_name(name: str | None) -> str:
    return (name[0] + "*" * max(1, len(name) - 1)) if name else ""


def mask_patient_id(pid: str | None) -> str:
    pid = pid or ""
    return (pid[:2] + "*" * max(0, len(pid) - 4) + pid[-2:]) if len(pid) > 4 else "*" * len(pid)


def mask_id_number(v: str) -> str:
    return v[:4] + "*" * (len(v) - 8) + v[-4:]


def mask_identifier(v: str) -> str:
    """An identifier that failed validation (a passport or permit number, a phone that is not
    a number), as it may be stored and shown: at most its first and last two characters."""
    v = (v or "").strip()
    if len(v) < 8:
        return "*" * min(len(v), 32)
    return (v[:2] + "*" * (len(v) - 4) + v[-2:])[:32] if len(v) <= 32 else \
        v[:2] + "*" * 28 + v[-2:]


def mask_phone(p: str | None) -> str:
    if not p:
        return ""
    return p[:3] + "****" + p[-4:] if len(p) >= 11 else "*" * len(p)


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _parse_date(s: str | None, what: str) -> dt.date | None:
    if not s:
        return None
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(s, fmt).date()
        except ValueError:
            pass
    raise CatalogError(f"{what}: expected a date as YYYY-MM-DD, got {s[:40]!r}")


class Catalog:
    """The service layer: storage on disk plus the index in the database."""

    def __init__(self, storage: Storage, id_key: bytes):
        self.storage = storage
        self._id_key = id_key

    # identity ----------------------------------------------------------------------------
    def id_number_hash(self, id_number: str) -> str:
        v = validate_id_number(id_number)
        return hmac.new(self._id_key, v.encode(), hashlib.sha256).hexdigest()

    def set_patient_id_number(self, patient: Patient, id_number: str) -> None:
        v = validate_id_number(id_number)
        patient.id_number_hash = self.id_number_hash(v)
        patient.id_number_masked = mask_id_number(v)

    def set_patient_contacts(self, entries) -> None:
        """Phone and ID number of patients already imported (the demo data), in one
        transaction; entries are dicts with patient_id, phone and optionally national_id,
        and patients not in the catalog are skipped."""
        with database.atomic():
            for p in entries:
                patient = Patient.get_or_none(Patient.patient_id == p["patient_id"])
                if patient is None:
                    continue
                patient.phone = p.get("phone")
                if p.get("national_id"):
                    self.set_patient_id_number(patient, p["national_id"])
                patient.save()

    # instances ---------------------------------------------------------------------------
    def store_instance(self, meta: dict[str, Any], data: bytes, *, source: str = "import",
                       origin: str = "") -> StoreResult:
        """Store one DICOM instance (original bytes + index rows).

        Rule for a SOP Instance UID already stored: identical bytes are a no-op
        (ALREADY_PRESENT); other bytes are compared by content (models/versions.py): the
        same content is ALREADY_PRESENT, corrected attributes a new version (STORED,
        extra["resend"]), other pixels follow dicom_conflict_policy. A stored file is never
        written over.
        """
        sop_uid = meta.get("sop_uid") or ""
        study_uid = meta.get("study_uid") or ""
        for key, label in (("patient_id", "Patient ID (0010,0020)"),
                           ("study_uid", "Study Instance UID (0020,000D)"),
                           ("series_uid", "Series Instance UID (0020,000E)"),
                           ("sop_uid", "SOP Instance UID (0008,0018)")):
            if not meta.get(key):
                return self._reject(data, f"{label} is missing or empty", source, origin,
                                    sop_uid, study_uid)
        if len(meta["patient_id"]) > 64:
            return self._reject(data, "Patient ID (0010,0020) is longer than 64 characters",
                                source, origin, sop_uid, study_uid)
        if owner_mismatch(meta):       # every path (C-STORE, STOW, import, folder) ends here
            log.warning("instance %s of study %s: %s", sop_uid, study_uid, CROSS_PATIENT)
            return self._reject(data, CROSS_PATIENT, source, origin, sop_uid, study_uid)
        digest = sha256_bytes(data)
        existing = Instance.get_or_none(Instance.sop_uid == sop_uid)
        if existing is not None:
            return self._existing(existing, meta, digest, data, source, origin, study_uid)
        try:
            rel = self.storage.instance_relpath(study_uid, meta["series_uid"], sop_uid)
        except StorageError as exc:
            return self._reject(data, str(exc), source, origin, sop_uid, study_uid)
        wrote = self.storage.put_atomic(rel, data).written
        if not wrote:
            if self.storage.sha256(rel) != digest:
                # A file without an index row (a crash between write and commit, or another
                # writer right now) holds other bytes: keep the newcomer aside, never overwrite.
                return self._conflict(data, sop_uid, study_uid, source, origin,
                                      "a different file for this SOP Instance UID is already "
                                      "on disk")
        try:
            self._index_instance(meta, rel, len(data), digest)
        except pw.IntegrityError:
            existing = Instance.get_or_none(Instance.sop_uid == sop_uid)
            if existing is None:
                if wrote:
                    self.storage.remove(rel)
                raise
            return self._existing(existing, meta, digest, data, source, origin, study_uid)
        except BaseException:
            if wrote:
                self.storage.remove(rel)
            raise
        return StoreResult(STORED, sop_uid, study_uid,
                           extra={"file_path": rel, "sha256": digest})

    def _existing(self, existing: Instance, meta: dict, digest: str, data: bytes, source: str,
                  origin: str, study_uid: str) -> StoreResult:
        if existing.sha256 == digest:
            return StoreResult(ALREADY_PRESENT, existing.sop_uid, study_uid)
        # other bytes: compared by content (same / a new version / the conflict policy)
        from .versions import resend
        return resend(self, existing, meta, data, digest, source, origin)

    def _conflict(self, data, sop_uid, study_uid, source, origin, why) -> StoreResult:
        rel = self.storage.quarantine(data)
        Quarantine.create(source=source, origin=origin[:255], reason=f"{why} ({sop_uid})",
                          file_path=rel, sha256=sha256_bytes(data))
        log.warning("conflict for SOP Instance UID %s: %s", sop_uid, why)
        return StoreResult(CONFLICT, sop_uid, study_uid, why)

    def _reject(self, data, reason, source, origin, sop_uid="", study_uid="") -> StoreResult:
        self.quarantine(data, reason, source, origin)
        return StoreResult(REJECTED, sop_uid, study_uid, reason)

    def quarantine(self, data: bytes | None, reason: str, source: str, origin: str) -> None:
        """Keep a rejected file with its reason for inspection."""
        rel = self.storage.quarantine(data) if data else None
        Quarantine.create(source=source, origin=origin[:255], reason=reason, file_path=rel,
                          sha256=sha256_bytes(data) if data else None)

    def _index_instance(self, meta: dict, rel: str, size: int, digest: str) -> None:
        for attempt in range(RETRIES):
            try:
                with write_transaction():
                    patient = self._upsert_patient(meta)
                    exam = self._upsert_exam(patient, meta)
                    series, new_series = self._upsert_series(exam, meta)
                    Instance.create(
                        series=series, sop_uid=meta["sop_uid"],
                        sop_class_uid=meta.get("sop_class_uid", ""),
                        transfer_syntax=meta.get("transfer_syntax", ""),
                        instance_number=meta.get("instance_number"),
                        rows=meta.get("rows") or 0, columns=meta.get("columns") or 0,
                        frames=meta.get("frames") or 1,
                        bits_allocated=meta.get("bits_allocated") or 0,
                        photometric=meta.get("photometric", ""),
                        image_position=meta.get("image_position", ""),
                        image_orientation=meta.get("image_orientation", ""),
                        slice_location=meta.get("slice_location"),
                        pixel_spacing=meta.get("pixel_spacing", ""),
                        file_path=rel, file_size=size, sha256=digest)
                    Series.update(num_instances=Series.num_instances + 1).where(
                        Series.id == series.id).execute()
                    Exam.update(num_instances=Exam.num_instances + 1,
                                num_series=Exam.num_series + (1 if new_series else 0),
                                updated_at=utcnow()).where(Exam.id == exam.id).execute()
                return
            except pw.IntegrityError:
                # Another writer created the patient/exam/series first, or the instance
                # itself: the instance case is decided by the caller.
                if Instance.get_or_none(Instance.sop_uid == meta["sop_uid"]) is not None:
                    raise
                if attempt == RETRIES - 1:
                    raise
            except pw.OperationalError as exc:
                # InnoDB deadlock (1213) or lock wait timeout (1205): the transaction was
                # rolled back as a whole and can simply run again.
                if not exc.args or exc.args[0] not in (1213, 1205) or attempt == RETRIES - 1:
                    raise
            time.sleep(0.01 * (attempt + 1))

    def _upsert_patient(self, meta: dict) -> Patient:
        patient = Patient.get_or_none(Patient.patient_id == meta["patient_id"])
        if patient is None:
            return Patient.create(patient_id=meta["patient_id"],
                                  name=(meta.get("patient_name") or "")[:128],
                                  sex=(meta.get("patient_sex") or "")[:1],
                                  birth_date=meta.get("patient_birth_date"))
        changed = False
        # The HIS is the source of truth for demographics; images only fill blanks.
        if not patient.name and meta.get("patient_name"):
            patient.name = meta["patient_name"][:128]
            changed = True
        if not patient.sex and meta.get("patient_sex"):
            patient.sex = meta["patient_sex"][:1]
            changed = True
        if patient.birth_date is None and meta.get("patient_birth_date"):
            patient.birth_date = meta["patient_birth_date"]
            changed = True
        if changed:
            patient.updated_at = utcnow()
            patient.save()
        return patient

    def _upsert_exam(self, patient: Patient, meta: dict) -> Exam:
        exam = Exam.get_or_none(Exam.study_uid == meta["study_uid"])
        modality = (meta.get("modality") or "").upper()
        if exam is None and meta.get("accession_number"):
            # An exam ordered through the RIS before its images arrived.
            exam = (Exam.select().where((Exam.accession_number == meta["accession_number"])
                                        & (Exam.study_uid.is_null()))
                    .order_by(Exam.id).first())
            if exam is not None:
                exam.study_uid = meta["study_uid"]
        if exam is None:
            return Exam.create(
                patient=patient, study_uid=meta["study_uid"],
                accession_number=meta.get("accession_number") or None,
                modality=modality, category=category_for_modality(modality),
                exam_date=meta.get("study_date"), exam_time=meta.get("study_time"),
                description=(meta.get("study_description") or "")[:255],
                institution=(meta.get("institution") or "")[:128],
                referring_physician=(meta.get("referring_physician") or "")[:128],
                status="examined")
        mods = [m for m in exam.modality.split("\\") if m]
        if modality and modality not in mods:
            mods.append(modality)
            exam.modality = "\\".join(mods)[:64]
        if exam.status in ("ordered", "scheduled"):
            exam.status = "examined"
        if exam.exam_date is None and meta.get("study_date"):
            exam.exam_date = meta["study_date"]
        if not exam.description and meta.get("study_description"):
            exam.description = meta["study_description"][:255]
        if exam.is_dirty():
            exam.save()
        return exam

    def _upsert_series(self, exam: Exam, meta: dict) -> tuple[Series, bool]:
        series = Series.get_or_none(Series.series_uid == meta["series_uid"])
        if series is not None:
            return series, False
        return Series.create(
            exam=exam, series_uid=meta["series_uid"],
            modality=(meta.get("modality") or "")[:16],
            series_number=meta.get("series_number"),
            description=(meta.get("series_description") or "")[:255],
            body_part=(meta.get("body_part") or "")[:64],
            frame_of_reference_uid=(meta.get("frame_of_reference_uid") or "")[:64]), True

    # reports ---------------------------------------------------------------------------
    def store_report(self, exam: Exam, *, findings: str = "", impression: str = "",
                     pdf: bytes | None = None, author: str = "", reviewer: str = "",
                     signed_at: dt.datetime | None = None, status: str = "final",
                     receivers: list[str] = ()) -> Report:
        """Store (or replace) the exam's report, for tests and scripts: filed by
        models.integration.file_report, the one function every path calls (its rules: a
        preliminary never replaces a final report, a corrected one does, the notices). The
        PDF is kept byte-exact."""
        from .integration import ReportFields, file_report, write_report_pdf
        pdf_file = None if pdf is None else write_report_pdf(self, exam, pdf)
        return file_report(self, exam, ReportFields(
            findings=findings, impression=impression, author=author, reviewer=reviewer,
            signed_at=signed_at, status=status), pdf_file=pdf_file, receivers=receivers)

    # queries ---------------------------------------------------------------------------
    def find_studies(self, *, patient_id: str | None = None, accession: str | None = None,
                     name: str | None = None, date_from: str | None = None,
                     date_to: str | None = None, category: str | None = None,
                     page: int = 1, per_page: int = 50, scope=None) -> dict:
        """Staff exam search; `scope` (server/policy.py exam_scope) limits it to the exams
        the asker may list, as QIDO does."""
        if page < 1:
            raise CatalogError("page must be 1 or more")
        if not 1 <= per_page <= 500:
            raise CatalogError("per_page must be between 1 and 500")
        from .qido import in_scope
        q = in_scope(Exam.select(Exam, Patient).join(Patient), scope)
        if patient_id:
            q = q.where(Patient.patient_id == patient_id)
        if accession:
            q = q.where(Exam.accession_number == accession)
        if name:
            if len(name) > 64:
                raise CatalogError("name filter longer than 64 characters")
            q = q.where(Patient.name ** f"%{_like_escape(name)}%")
        d_from = _parse_date(date_from, "date_from")
        d_to = _parse_date(date_to, "date_to")
        if d_from and d_to and d_from > d_to:
            raise CatalogError("date_from is after date_to")
        if d_from:
            q = q.where(Exam.exam_date >= d_from)
        if d_to:
            q = q.where(Exam.exam_date <= d_to)
        if category:
            if category not in EXAM_CATEGORIES:
                raise CatalogError(f"category {category[:32]!r}: expected one of "
                                   + ", ".join(EXAM_CATEGORIES))
            q = q.where(Exam.category == category)
        total = q.count()
        rows = (q.order_by(Exam.exam_date.desc(nulls="LAST"), Exam.id.desc())
                .paginate(page, per_page))
        return {"total": total, "page": page, "per_page": per_page,
                "studies": [exam_summary(e) for e in rows]}

    def exam_by_uid(self, study_uid: str) -> Exam:
        exam = (Exam.select(Exam, Patient).join(Patient)
                .where(Exam.study_uid == study_uid).first())
        if exam is None:
            raise NotFound("no exam with this Study Instance UID")
        return exam

    def exam_by_id(self, exam_id: int) -> Exam:
        exam = (Exam.select(Exam, Patient).join(Patient).where(Exam.id == exam_id).first())
        if exam is None:
            raise NotFound("no such exam")
        return exam

    def get_study(self, study_uid: str) -> dict:
        return self.study_json(self.exam_by_uid(study_uid))

    def study_json(self, exam: Exam) -> dict:
        """The exam, its series and instances and its report (an exam ordered over HL7
        whose images have not arrived has no Study Instance UID and no series yet)."""
        out = exam_summary(exam)
        # plain rows, two queries (no model objects: a 220-slice exam is built ~5x faster;
        # the film view asks for it at every share open, issue 17)
        series_out, by_id = [], {}
        for sid, uid, modality, number, desc, body_part, frame_ref in (
                Series.select(Series.id, Series.series_uid, Series.modality,
                              Series.series_number, Series.description, Series.body_part,
                              Series.frame_of_reference_uid)
                .where(Series.exam == exam).order_by(Series.series_number, Series.id)
                .tuples()):
            by_id[sid] = {
                "series_uid": uid, "modality": modality, "series_number": number,
                "description": desc, "body_part": body_part,
                "frame_of_reference_uid": frame_ref, "num_instances": 0, "num_frames": 0,
                "instances": []}
            series_out.append(by_id[sid])
        if by_id:
            for (sid, sop, number, frames, rows, cols, ts, photometric, position, orientation,
                 spacing, location) in (
                    Instance.select(Instance.series, Instance.sop_uid, Instance.instance_number,
                                    Instance.frames, Instance.rows, Instance.columns,
                                    Instance.transfer_syntax, Instance.photometric,
                                    Instance.image_position, Instance.image_orientation,
                                    Instance.pixel_spacing, Instance.slice_location)
                    .where(Instance.series.in_(list(by_id)))
                    .order_by(Instance.series, Instance.instance_number, Instance.id)
                    .tuples()):
                se = by_id[sid]
                se["num_instances"] += 1
                se["num_frames"] += frames
                se["instances"].append({
                    "sop_uid": sop, "instance_number": number, "frames": frames,
                    "rows": rows, "columns": cols, "transfer_syntax": ts,
                    "photometric": photometric, "image_position": _floats(position),
                    "image_orientation": _floats(orientation),
                    "pixel_spacing": _floats(spacing), "slice_location": location})
        # a series without pixels (a Structured Report of measurements) is no picture: the
        # viewers list it apart instead of showing a thumbnail that cannot render
        pictures = [se for se in series_out if any(i["rows"] for i in se["instances"])]
        out["series"] = pictures
        out["documents"] = [{k: se[k] for k in ("series_uid", "modality", "series_number",
                                                "description", "num_instances")}
                            for se in series_out if se["instances"] and se not in pictures]
        report = Report.get_or_none(Report.exam == exam)
        out["report"] = report_summary(report) if report else None
        return out

    def counts(self) -> dict:
        return {"patients": Patient.select().count(), "exams": Exam.select().count(),
                "series": Series.select().count(), "instances": Instance.select().count(),
                "reports": Report.select().count()}


def find_exam(study_uid: str) -> Exam | None:
    """The exam with this Study Instance UID, or None (no join: for filing a report)."""
    return Exam.get_or_none(Exam.study_uid == study_uid)


def find_exam_by_accession(accession_number: str) -> Exam | None:
    return Exam.get_or_none(Exam.accession_number == accession_number)


def find_patient_exam(study_uid: str, patient_db_id: int) -> Exam | None:
    """The exam with this Study Instance UID if it belongs to this patient."""
    return Exam.get_or_none((Exam.study_uid == study_uid) & (Exam.patient == patient_db_id))


def report_of(exam: Exam) -> Report | None:
    return Report.get_or_none(Report.exam == exam)


def exam_instances(exam: Exam, series_uid: str | None = None,
                   sop_uid: str | None = None) -> list[Instance]:
    """The exam's instances (each with its series), optionally of one series or one SOP
    instance; in the database's order, as the download ZIP has always listed them."""
    q = (Instance.select(Instance, Series).join(Series)
         .where(Series.exam == exam))
    if series_uid:
        q = q.where(Series.series_uid == series_uid)
    if sop_uid:
        q = q.where(Instance.sop_uid == sop_uid)
    return list(q)


# the render service's lookups (each row carries its series and exam) --------------------------
def instance_by_uids(study_uid: str, series_uid: str, sop_uid: str) -> Instance | None:
    return (Instance.select(Instance, Series, Exam).join(Series).join(Exam)
            .where((Instance.sop_uid == sop_uid) & (Series.series_uid == series_uid)
                   & (Exam.study_uid == study_uid)).first())


def series_instances(study_uid: str, series_uid: str) -> list[Instance]:
    """The series' instances in instance-number order."""
    return list(Instance.select(Instance, Series, Exam).join(Series).join(Exam)
                .where((Series.series_uid == series_uid) & (Exam.study_uid == study_uid))
                .order_by(Instance.instance_number, Instance.id))


def exam_access_facts(exam_id: int) -> tuple[int, bool] | None:
    """(patient database id, images enabled as stored) of an exam, or None."""
    return (Exam.select(Exam.patient, Exam.images_enabled)
            .where(Exam.id == exam_id).tuples().first())


def study_series_uids(study_uid: str) -> list[str]:
    """The Series Instance UIDs of a study in series-number order."""
    return [r.series_uid for r in Series.select(Series.series_uid).join(Exam)
            .where(Exam.study_uid == study_uid)
            .order_by(Series.series_number, Series.id)]


# the integrity scrub -----------------------------------------------------------------------------
def instances_after(last_id: int, limit: int) -> list[Instance]:
    """The next `limit` instances by id after `last_id` (id, sop_uid, file_path, file_size,
    sha256 only)."""
    return list(Instance.select(Instance.id, Instance.sop_uid, Instance.file_path,
                                Instance.file_size, Instance.sha256)
                .where(Instance.id > last_id).order_by(Instance.id).limit(limit))


def reports_with_pdf() -> list[Report]:
    """Every report that has a PDF (id, pdf_path, pdf_sha256 only)."""
    return list(Report.select(Report.id, Report.pdf_path, Report.pdf_sha256)
                .where(Report.pdf_path.is_null(False)))


def _floats(s: str) -> list[float] | None:
    if not s:
        return None
    try:
        return [float(x) for x in s.split("\\")]
    except ValueError:
        return None


def exam_summary(e: Exam) -> dict:
    p = e.patient
    return {
        "study_uid": e.study_uid, "accession_number": e.accession_number,
        "modality": e.modality, "category": e.category,
        "exam_date": e.exam_date.isoformat() if e.exam_date else None,
        "description": e.description, "status": e.status,
        "images_enabled": bool(e.images_enabled), "source": e.source,
        "num_series": e.num_series, "num_instances": e.num_instances,
        "patient": {"patient_id": p.patient_id, "name": p.name, "sex": p.sex,
                    "birth_date": p.birth_date.isoformat() if p.birth_date else None},
    }


def report_summary(r: Report) -> dict:
    return {"status": r.status, "findings": r.findings, "impression": r.impression,
            "author": r.author, "reviewer": r.reviewer,
            "signed_at": r.signed_at.isoformat() if r.signed_at else None,
            "has_pdf": bool(r.pdf_path)}


# download log -------------------------------------------------------------------------------
def download_log(*, study_uid: str | None = None, patient_db_id: int | None = None,
                 since: dt.datetime | None = None, until: dt.datetime | None = None,
                 limit: int = 200) -> dict:
    """The download log, newest first, optionally of one exam, one patient and a time window
    [since, until) (UTC): {"total": rows matching, "downloads": at most `limit` of them}.
    The one query behind GET /api/downloads and /api/admin/downloads (staff download.read)."""
    q = DownloadLog.select(DownloadLog, Exam).join(Exam)
    if study_uid:
        q = q.where(Exam.study_uid == study_uid)
    if patient_db_id is not None:
        q = q.where(Exam.patient == patient_db_id)
    if since is not None:
        q = q.where(DownloadLog.time >= since)
    if until is not None:
        q = q.where(DownloadLog.time < until)
    rows = q.order_by(DownloadLog.time.desc(), DownloadLog.id.desc()).limit(limit)
    return {"total": q.count(), "downloads": [{
        "id": d.id, "time": d.time.isoformat() + "Z", "study_uid": d.exam.study_uid,
        "accession_number": d.exam.accession_number, "scope": d.scope,
        "object_uid": d.object_uid, "actor_kind": d.actor_kind, "actor_id": d.actor_id,
        "ip": d.ip, "user_agent": d.user_agent, "bytes_total": d.bytes_total,
        "bytes_sent": d.bytes_sent, "completed": bool(d.completed)} for d in rows]}
