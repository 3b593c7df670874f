"""Service verbs for data that arrives from other systems (HL7, the import API, the PACS):
upsert a patient, place or change an order, merge two patients, file a report, record an
inbound message exactly once, queue an outbound message, follow a retrieve from the PACS.

Every verb owns its transaction; an outbound message is written in the same transaction as
the change that causes it. Nothing here logs names, ID numbers or phone numbers.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Callable

import peewee as pw

from .catalog import (CROSS_PATIENT, Catalog, CatalogError, NotFound, category_for_modality,
                      mask_identifier, mask_phone, same_patient, validate_id_number)
from .changes import announce
from .db import Prepared, database, is_mysql, retrying, write_transaction
from .schema import (OUTBOX_QUEUED, REPORT_STATUSES, BaseModel, Exam, InboundMessage, Outbox,
                     Patient, Report, Session, utcnow)
from .personal_data import redact, seal
from .storage import sha256_bytes

log = logging.getLogger(__name__)

STATUS_RANK = {"ordered": 0, "scheduled": 1, "examined": 2, "reported": 3}
RETRIES = 5


class IntegrationEvent(BaseModel):
    """Something a peer did that an admin may want to see: an association refused, a frame
    that could not be read, a retrieve that failed. No patient data in `detail`."""
    time = pw.DateTimeField(default=utcnow, index=True)
    channel = pw.CharField(max_length=32, index=True)      # dicom / hl7 / api / folder / pacs
    peer = pw.CharField(max_length=128, default="")
    outcome = pw.CharField(max_length=16, default="ok")    # ok / error / rejected
    detail = pw.TextField(default="")


class RetrieveJob(BaseModel):
    """A study being fetched from the PACS on demand, with its progress."""
    study_uid = pw.CharField(max_length=64, unique=True)
    status = pw.CharField(max_length=16, default="pending")  # pending/running/done/failed
    expected = pw.IntegerField(default=0)
    completed = pw.IntegerField(default=0)
    failed = pw.IntegerField(default=0)
    error = pw.TextField(default="")
    started_at = pw.DateTimeField(default=utcnow)
    finished_at = pw.DateTimeField(null=True)


INTEGRATION_MODELS = [IntegrationEvent, RetrieveJob]


class ReportVersion(BaseModel):
    """An earlier content of an exam's report, kept when a report is replaced (a final
    report corrected, a PDF attached again); staff read them (migration m0055). The Report
    row always holds the current content."""
    report = pw.ForeignKeyField(Report, backref="versions", on_delete="CASCADE")
    exam = pw.ForeignKeyField(Exam, backref="report_versions", on_delete="CASCADE")
    number = pw.IntegerField()                          # 1: the first content filed
    findings = pw.TextField(default="")
    impression = pw.TextField(default="")
    pdf_path = pw.CharField(max_length=255, null=True)
    pdf_sha256 = pw.CharField(max_length=64, null=True)
    author = pw.CharField(max_length=128, default="")
    reviewer = pw.CharField(max_length=128, default="")
    signed_at = pw.DateTimeField(null=True)
    status = pw.CharField(max_length=16, default="final")
    filed_at = pw.DateTimeField()                       # when this content became current
    replaced_at = pw.DateTimeField(default=utcnow)
    replaced_by_source = pw.CharField(max_length=32, default="")

    class Meta:
        table_name = "report_version"
        indexes = ((("report", "number"), True),)


REPORT_VERSION_MODELS = [ReportVersion]


class IntegrationError(CatalogError):
    """Content that cannot be applied; the message says what is wrong (HL7 answers AE).
    `where` names the field (an HL7 location such as PID-7, or id_number / phone) and
    `hl7_code` the HL7 table 0357 error code (101 required field missing, 102 data type
    error, 103 table value not found, 207 application internal error, ...)."""

    def __init__(self, message: str = "", *, where: str = "", hl7_code: int = 207, **kw):
        super().__init__(message, **kw)
        self.where = where
        self.hl7_code = hl7_code


class Unsupported(IntegrationError):
    """A message type or action we do not handle (HL7 answers AR)."""

    def __init__(self, message: str = "", *, where: str = "MSH-9", hl7_code: int = 200, **kw):
        super().__init__(message, where=where, hl7_code=hl7_code, **kw)


@dataclass(frozen=True)
class Issue:
    """A problem reported back to the sender: severity E (not applied) or W (applied, this
    field ignored). `where` is a field name (id_number, phone) or an HL7 location; `text`
    never holds the field's value."""
    where: str
    text: str
    hl7_code: int = 207
    severity: str = "E"


_WARNINGS: ContextVar[list | None] = ContextVar("integration_warnings", default=None)


def warn(where: str, text: str, hl7_code: int = 102) -> None:
    """Note a field that was not used (the message is still applied); inside apply_inbound
    the warning goes into the acknowledgement."""
    found = _WARNINGS.get()
    if found is not None and not any(w.where == where for w in found):
        found.append(Issue(where, text, hl7_code, "W"))


@dataclass(frozen=True)
class Sender:
    """Who sent what is being applied: a peer's name (for the audit) and whether it is the
    hospital's patient master (may change a patient's phone or ID number)."""
    name: str = "local"
    may_change_identity: bool = True


_SENDER: ContextVar[Sender] = ContextVar("integration_sender", default=Sender())


@contextmanager
def sent_by(name: str, may_change_identity: bool):
    """Apply what follows as sent by this peer (HL7 listener, import API)."""
    token = _SENDER.set(Sender(name[:64] or "peer", bool(may_change_identity)))
    try:
        yield
    finally:
        _SENDER.reset(token)


class CrossPatient(IntegrationError):
    """An image or report for an exam filed under another patient: quarantined, not filed."""

    status = 409

    def __init__(self, message: str = CROSS_PATIENT, **kw):
        super().__init__(message, **kw)
        self.after_rollback: Callable[[], None] | None = None


def _retrying(fn: Callable[[], Any]) -> Any:
    return retrying(fn, RETRIES)


def note_event(channel: str, peer: str, outcome: str, detail: str) -> None:
    try:
        IntegrationEvent.create(channel=channel, peer=peer[:128], outcome=outcome,
                                detail=redact(detail)[:2000])     # never an ID or phone
    except Exception:  # noqa: BLE001 - the event log must never break the caller
        log.exception("could not record an integration event")


# patients ---------------------------------------------------------------------------------
def _set(obj, attr: str, value) -> None:
    """Assign only a changed value (peewee marks any assignment dirty)."""
    if getattr(obj, attr) != value:
        setattr(obj, attr, value)


PATIENT_BY_ID = Prepared(lambda pid: Patient.select().where(Patient.patient_id == pid), "pid")


def upsert_patient(catalog: Catalog, f: dict) -> Patient:
    """Create or update a patient from the HIS (the source of truth for demographics).
    Call inside a transaction. Keys: patient_id (required), name, sex, birth_date, phone,
    id_number; a key that is absent leaves the stored value alone."""
    pid = (f.get("patient_id") or "").strip()
    if not pid:
        raise IntegrationError("patient ID missing (PID-3)")
    if len(pid) > 64:
        raise IntegrationError("patient ID longer than 64 characters")
    patient = PATIENT_BY_ID.first(pid=pid)
    if patient is None:
        patient = Patient(patient_id=pid)
    if patient.merged_into_id:
        patient = Patient.get_by_id(patient.merged_into_id)
    if f.get("name"):
        _set(patient, "name", f["name"][:128])
    if f.get("sex"):
        _set(patient, "sex", f["sex"][:1].upper())
    if f.get("birth_date"):
        _set(patient, "birth_date", f["birth_date"])
    _guarded_identifiers(catalog, patient, f)
    if patient.id is None or patient.is_dirty():
        patient.updated_at = utcnow()
        patient.save()
    return patient


PHONE_RE = re.compile(r"\+?[0-9]{5,20}")


def _identifiers(catalog: Catalog, patient: Patient, f: dict) -> None:
    """ID number and phone. A value that fails validation (a passport or Hong Kong/Macau
    permit number, an old 15-digit ID, a bad check digit, a phone that is not a number) never
    refuses the message: it is kept masked as unverified, never hashed or used for identity
    checks, and a warning names the field (the value is never logged)."""
    phone = re.sub(r"[\s\-()]", "", str(f.get("phone") or ""))
    if phone and PHONE_RE.fullmatch(phone):
        _set(patient, "phone", phone[:32])
        _set(patient, "phone_unverified", None)
    elif phone:
        _set(patient, "phone_unverified", mask_identifier(phone))
        warn("phone", "not a phone number: stored as unverified, not used for identity "
                      "checks or messages")
    idn = str(f.get("id_number") or "").strip()
    if not idn:
        return
    try:
        v = validate_id_number(idn)
    except CatalogError as exc:
        _set(patient, "id_number_unverified", mask_identifier(idn))
        warn("id_number", f"{exc.message.split(' / ')[-1]}: stored as unverified, not used "
                          "for identity checks")
        return
    if patient.id_number_hash != catalog.id_number_hash(v):
        catalog.set_patient_id_number(patient, v)
    _set(patient, "id_number_unverified", None)


IDENTITY_FIELDS = ("phone", "phone_unverified", "id_number_hash", "id_number_masked",
                   "id_number_unverified")


def _guarded_identifiers(catalog: Catalog, patient: Patient, f: dict) -> None:
    """_identifiers, with the rules for a patient already on record: only the patient
    master (a peer with may_change_identity) may change the phone or ID number — another
    sender's values are ignored with a warning; a change of these verification factors
    ends the patient's sessions and is audited (patient.identity_change, masked values)."""
    if patient.id is None:
        _identifiers(catalog, patient, f)
        return
    before = {k: getattr(patient, k) for k in IDENTITY_FIELDS}
    _identifiers(catalog, patient, f)
    sender = _SENDER.get()
    if not sender.may_change_identity:
        for where in ("phone", "id_number"):
            if any(getattr(patient, k) != before[k] for k in IDENTITY_FIELDS if
                   k.startswith(where)):
                warn(where, "this sender may not change the phone or ID number of a patient "
                            "on record (only the patient master may): ignored")
        for k, v in before.items():
            _set(patient, k, v)
        return
    if any(getattr(patient, k) != before[k] for k in ("phone", "id_number_hash")):
        identity_changed(catalog, patient, before, sender.name, actor_kind="peer")


def identity_changed(catalog: Catalog, patient: Patient, before: dict, actor_id: str, *,
                     actor_kind: str = "peer", ip: str = "") -> None:
    """A patient's phone or ID number changed (HL7 ADT, the import API, or a staff edit
    calling this): end their patient sessions and audit patient.identity_change with the
    masked old and new values, inside the transaction of the change."""
    Session.update(ended_at=utcnow()).where(
        (Session.patient == patient.id) & (Session.kind == "patient")
        & Session.ended_at.is_null()).execute()
    parts = []
    if patient.phone != before.get("phone"):
        parts.append(f"phone {mask_phone(before.get('phone')) or '-'} -> "
                     f"{mask_phone(patient.phone) or '-'}")
    if patient.id_number_hash != before.get("id_number_hash"):
        parts.append(f"id_number {before.get('id_number_masked') or '-'} -> "
                     f"{patient.id_number_masked or '-'}")
    auditor = getattr(catalog, "auditor", None)
    if auditor is not None:
        auditor.record("patient.identity_change", actor_kind=actor_kind, actor_id=actor_id,
                       ip=ip, object_type="patient", object_id=patient.patient_id,
                       detail="; ".join(parts) + "; patient sessions ended")
    log.info("patient %s: verification factors changed, sessions ended", patient.id)


def merge_patients(catalog: Catalog, surviving: dict, old_patient_id: str) -> Patient:
    """ADT^A40: move every exam of old_patient_id to the surviving patient; the old record
    stays, pointing at the survivor (merged_into), so nothing is lost. Call inside a
    transaction. Only the patient master (a peer with may_change_identity) may merge: a
    merge moves every exam of one patient to another."""
    if not _SENDER.get().may_change_identity:
        raise CrossPatient("only the patient master may merge patients (ADT^A40): not "
                           "applied", where="MRG-1", hl7_code=207)
    target = upsert_patient(catalog, surviving)
    old = Patient.get_or_none(Patient.patient_id == (old_patient_id or "").strip())
    if not old_patient_id:
        raise IntegrationError("merge without the prior patient ID (MRG-1)")
    if old is None or old.id == target.id:
        return target
    Exam.update(patient=target, updated_at=utcnow()).where(Exam.patient == old).execute()
    announce()                 # the exams' patient: every node's access facts (models/changes.py)
    for p in (Patient.select().where(Patient.merged_into == old)):
        p.merged_into = target
        p.save()
    old.merged_into = target
    old.updated_at = utcnow()
    old.save()
    # fill the survivor's blanks from the old record
    for attr in ("phone", "id_number_hash", "id_number_masked", "birth_date"):
        if getattr(target, attr) in (None, "") and getattr(old, attr) not in (None, ""):
            setattr(target, attr, getattr(old, attr))
    for attr, verified in (("id_number_unverified", "id_number_hash"),
                           ("phone_unverified", "phone")):   # only when nothing better
        if not getattr(target, verified) and not getattr(target, attr) and getattr(old, attr):
            setattr(target, attr, getattr(old, attr))
    if target.is_dirty():
        target.save()
    return target


# orders -----------------------------------------------------------------------------------
EXAM_BY_ACCESSION = Prepared(lambda acc: Exam.select().where(Exam.accession_number == acc)
                             .order_by(Exam.id.desc()), "acc")


def find_exam(accession: str | None, study_uid: str | None) -> Exam | None:
    exam = None
    if study_uid:
        exam = Exam.get_or_none(Exam.study_uid == study_uid)
    if exam is None and accession:
        exam = EXAM_BY_ACCESSION.first(acc=accession)       # the latest of that number
    return exam


def upsert_order(catalog: Catalog, patient_fields: dict, o: dict, *, source: str) -> Exam:
    """Place or update an order. o: accession (required), study_uid, modality, description,
    exam_date, status (ordered/scheduled/examined/cancelled), referring_physician.
    Status only moves forward (ordered → scheduled → examined), except cancellation.
    Call inside a transaction."""
    accession = (o.get("accession") or "").strip()
    if not accession:
        raise IntegrationError("accession number missing (OBR-18 / OBR-3 / ORC-3 / IPC-1)")
    if len(accession) > 64:
        raise IntegrationError("accession number longer than 64 characters")
    patient = upsert_patient(catalog, patient_fields)
    exam = find_exam(accession, o.get("study_uid"))
    modality = (o.get("modality") or "").upper()[:16]
    if exam is None:
        exam = Exam(patient=patient, accession_number=accession, status="ordered",
                    source=source, modality=modality,
                    category=o.get("category") or category_for_modality(modality))
        if o.get("study_uid"):
            exam.study_uid = o["study_uid"][:64]
    elif exam.patient_id != patient.id:
        if not _SENDER.get().may_change_identity:
            # only the patient master may move an exam to another patient
            raise CrossPatient("the order's patient differs from the patient this exam is "
                               "filed under: not applied (only the patient master may move "
                               "an exam)", where="PID-3", hl7_code=207)
        exam.patient = patient
        announce()
    if modality and not exam.modality:
        exam.modality = modality
        exam.category = o.get("category") or category_for_modality(modality)
    if o.get("description"):
        exam.description = o["description"][:255]
    if o.get("exam_date"):
        exam.exam_date = o["exam_date"]
    if o.get("referring_physician"):
        exam.referring_physician = o["referring_physician"][:128]
    if o.get("study_uid") and not exam.study_uid:
        exam.study_uid = o["study_uid"][:64]
    status = o.get("status")
    if status:
        _change_status(exam, status)
    exam.updated_at = utcnow()
    exam.save()
    return exam


def _change_status(exam: Exam, status: str) -> None:
    if status == "cancelled":
        if exam.num_instances:
            raise IntegrationError("the exam already has images; it cannot be cancelled")
        exam.status = "cancelled"
        return
    if status not in STATUS_RANK:
        raise IntegrationError(f"unknown exam status {status!r}")
    if exam.status == "cancelled":
        exam.status = status           # re-ordered after a cancellation
        return
    if STATUS_RANK[status] > STATUS_RANK.get(exam.status, 0):
        exam.status = status


# reports ----------------------------------------------------------------------------------
@dataclass
class ReportFields:
    findings: str = ""
    impression: str = ""
    pdf: bytes | None = None
    author: str = ""
    reviewer: str = ""
    signed_at: dt.datetime | None = None
    status: str = "final"
    # An encapsulated PDF (DICOM): a document without text or a status of its own. It is
    # attached to the exam's report, whose text, signer and status it keeps (final when the
    # exam had no final report yet).
    pdf_only: bool = False
    # The Patient ID the sender gave with the report (HL7 PID-3, the import API's patient,
    # the DICOM object's Patient ID): a report naming another patient than the exam's is
    # quarantined, never filed. Empty: not given (the sender named only the exam).
    patient_id: str = ""
    source: str = "report"           # for the quarantine record: hl7 / api / dicom / folder
    origin: str = ""


class ReportNotReplaced(IntegrationError):
    """A preliminary report for an exam whose report is already final: not filed."""

    status = 409


def write_report_pdf(catalog: Catalog, exam: Exam, pdf: bytes) -> tuple[str, str]:
    """Write a report PDF (byte-exact, atomically) and return (relpath, sha256). Done before
    the transaction that points at it: an orphan file after a crash is harmless. Every path
    requires a complete PDF (%%EOF at its end)."""
    if not pdf.startswith(b"%PDF-"):
        raise IntegrationError("the report file is not a PDF (it does not start with %PDF-)")
    if b"%%EOF" not in pdf[-1024:]:
        raise IntegrationError("the report PDF is truncated (no %%EOF at its end)")
    sha = sha256_bytes(pdf)
    folder = exam.study_uid or f"2.25.{exam.id}"
    rel = catalog.storage.report_relpath(folder, sha)
    catalog.storage.write_atomic(rel, pdf)
    return rel, sha


def file_report(catalog: Catalog, exam: Exam, r: ReportFields, *, pdf_file=None,
                receivers: list[str] = (), notice: dict | None = None) -> Report:
    """File (or replace) the exam's report: the one function every path calls (HL7 ORU,
    a DICOM encapsulated PDF received or imported, the import API, the watched folder, the
    CLI; Catalog.store_report delegates here). The same rules everywhere:

    - the status is preliminary, final or corrected;
    - a preliminary report never replaces a final or corrected one: ReportNotReplaced (409),
      the stored report is unchanged (HL7 answers AE, the import API 400, the folder moves
      the file to failed/, a DICOM peer's object is kept but not filed as the report);
    - a corrected report replaces whatever is there and is stored as 'corrected';
    - the PDF (r.pdf, or pdf_file = (relpath, sha) from write_report_pdf) must start with
      %PDF- and end with %%EOF; it is stored byte-exact before the rows point at it;
    - a final or corrected report marks the exam reported and queues, in the same
      transaction, a 'film published' HL7 notice per receiver (OBR-25 F or C) and the WeChat
      'report ready' messages; a repeat of the same content queues nothing new.

    Owns its transaction (a savepoint inside a caller's)."""
    if r.status not in REPORT_STATUSES:
        raise IntegrationError(f"report status {r.status!r}: expected preliminary, final or "
                               "corrected")
    if r.patient_id and not same_patient(exam.patient_id, r.patient_id):
        _refuse_cross_patient(catalog, exam, r)
    if r.pdf is not None and pdf_file is None:
        pdf_file = write_report_pdf(catalog, exam, r.pdf)
    if r.pdf_only and not pdf_file:
        raise IntegrationError("the document holds no PDF")
    with write_transaction():
        report = Report.get_or_none(Report.exam == exam) or Report(exam=exam)
        was_final = report.id is not None and report.status in ("final", "corrected")
        if r.pdf_only:
            r = replace(_attached_pdf(report, r, was_final), source=r.source,
                        origin=r.origin)
        if was_final and r.status == "preliminary":
            raise ReportNotReplaced("a preliminary result cannot replace a final report")
        _keep_version(report, r, pdf_file)
        report.findings, report.impression = r.findings, r.impression
        if pdf_file:
            report.pdf_path, report.pdf_sha256 = pdf_file
        report.author, report.reviewer = r.author[:128], r.reviewer[:128]
        report.signed_at = r.signed_at
        report.status = r.status
        report.updated_at = utcnow()
        report.save()
        if r.status in ("final", "corrected"):
            _report_notices(exam, report, receivers, notice)
    if r.status == "corrected":
        log.info("report of exam %s filed as a correction", exam.id)
    return report


def _refuse_cross_patient(catalog: Catalog, exam: Exam, r: ReportFields) -> None:
    """A report naming another patient than the exam's: quarantined (its PDF, or a note
    when it has none) with the reason, and refused. Inside a caller's transaction the
    quarantine row is written after the rollback (apply_inbound runs `after_rollback`)."""
    log.warning("report for exam %s: %s", exam.id, CROSS_PATIENT)
    exc = CrossPatient(where="PID-3", hl7_code=207)

    def keep() -> None:
        catalog.quarantine(r.pdf, f"report: {CROSS_PATIENT} (exam {exam.id})",
                           r.source, r.origin)
    if database.in_transaction():
        exc.after_rollback = keep
    else:
        keep()
    raise exc


def _keep_version(report: Report, r: ReportFields, pdf_file) -> None:
    """Before a filed report is replaced with other content, keep the old content as a
    ReportVersion (staff read the history: report_history)."""
    if report.id is None:
        return
    new_pdf = pdf_file[1] if pdf_file else report.pdf_sha256
    if (report.findings, report.impression, report.pdf_sha256, report.status,
            report.author, report.reviewer, report.signed_at) == (
            r.findings, r.impression, new_pdf, r.status, r.author[:128], r.reviewer[:128],
            r.signed_at):
        return
    last = (ReportVersion.select(pw.fn.MAX(ReportVersion.number))
            .where(ReportVersion.report == report.id).scalar() or 0)
    ReportVersion.create(report=report.id, exam=report.exam_id, number=last + 1,
                         findings=report.findings, impression=report.impression,
                         pdf_path=report.pdf_path, pdf_sha256=report.pdf_sha256,
                         author=report.author, reviewer=report.reviewer,
                         signed_at=report.signed_at, status=report.status,
                         filed_at=report.updated_at or report.created_at or utcnow(),
                         replaced_by_source=r.source[:32])


def report_history(exam_id: int) -> list[dict]:
    """The earlier contents of an exam's report, newest first (staff only)."""
    return [{"number": v.number, "status": v.status, "findings": v.findings,
             "impression": v.impression, "has_pdf": bool(v.pdf_path),
             "pdf_sha256": v.pdf_sha256, "author": v.author, "reviewer": v.reviewer,
             "signed_at": v.signed_at.isoformat() if v.signed_at else None,
             "filed_at": v.filed_at.isoformat() if v.filed_at else None,
             "replaced_at": v.replaced_at.isoformat() if v.replaced_at else None,
             "replaced_by_source": v.replaced_by_source}
            for v in ReportVersion.select().where(ReportVersion.exam == exam_id)
            .order_by(ReportVersion.number.desc())]


def _attached_pdf(report: Report, r: ReportFields, was_final: bool) -> ReportFields:
    """A PDF-only document keeps the report's text, signer and (final) status."""
    if report.id is None:
        return ReportFields(status="final")
    return ReportFields(findings=report.findings, impression=report.impression,
                        author=report.author, reviewer=report.reviewer,
                        signed_at=report.signed_at,
                        status=report.status if was_final else "final")


def _report_notices(exam: Exam, report: Report, receivers, notice: dict | None) -> None:
    """Exam reported; 'film published' per HL7 receiver and WeChat 'report ready' (inside
    the transaction that filed the report). The digest of the content keys both, so a
    repeated report queues nothing and a changed one (a correction) is announced again."""
    Exam.update(status="reported", updated_at=utcnow()).where(Exam.id == exam.id).execute()
    digest = hashlib.sha256(json.dumps(
        [report.findings, report.impression, report.pdf_sha256, report.status,
         str(report.signed_at)], ensure_ascii=False).encode()).hexdigest()[:24]
    payload = {"kind": "film_published", "accession": exam.accession_number or "",
               "study_uid": exam.study_uid or "", "patient_id": exam.patient.patient_id,
               "report_status": report.status, "exam_id": exam.id, **(notice or {})}
    for dest in receivers:
        enqueue("hl7", dest, f"film:{exam.id}:{digest}:{dest}", payload)
    from .wechat import queue_report_ready   # WeChat 'report ready', same transaction
    queue_report_ready(exam, status=report.status, digest=digest)


# outbox -----------------------------------------------------------------------------------
def enqueue(channel: str, destination: str, key: str, payload: dict | str) -> bool:
    """Queue an outbound message (call inside the transaction of the change that causes
    it). A key already queued is a no-op; returns whether a row was added."""
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    key = key[:128]
    if Outbox.select(Outbox.id).where(Outbox.idempotency_key == key).exists():
        return False
    Outbox.create(channel=channel, destination=destination[:255], idempotency_key=key,
                  payload=text)
    return True


CLAIM_S = 60.0      # a worker's claim on the messages it delivers (renewed while it lives)
_skip_locked = [True]   # MariaDB >= 10.6 and MySQL 8 have SKIP LOCKED; older ones do not


def _claimable(now: dt.datetime):
    """Due, pending, and claimed by nobody (or by a worker whose claim has run out)."""
    return ((Outbox.status == "pending") & (Outbox.next_attempt_at <= now)
            & (Outbox.claimed_until.is_null() | (Outbox.claimed_until <= now)))


def outbox_claim(holder: str, limit: int = 50, claim_s: float = CLAIM_S) -> list[Outbox]:
    """Claim up to `limit` due messages for the worker `holder` (leases.holder_id()) for
    `claim_s` seconds and return them, oldest due first. Each message is claimed by one
    worker at a time whatever the number of workers and nodes: on MySQL/MariaDB the due rows
    are read with SELECT … FOR UPDATE SKIP LOCKED (rows another worker is claiming are
    skipped, not waited for) and marked in the same transaction; on SQLite the transaction
    holds the write lock from BEGIN (IMMEDIATE). The UPDATE repeats the condition, so a row
    is never taken from a live claim even where the row lock is not shared (a Galera
    cluster: a concurrent claim on another node fails certification, a deadlock error that
    is retried). Deliver outside the transaction, then outbox_mark_sent / _failed."""
    def run():
        now = utcnow()
        with write_transaction():
            q = (Outbox.select(Outbox.id).where(_claimable(now))
                 .order_by(Outbox.next_attempt_at, Outbox.id).limit(limit))
            if is_mysql():
                q = q.for_update("FOR UPDATE SKIP LOCKED" if _skip_locked[0] else True)
            ids = [r.id for r in q]
            if ids:
                Outbox.update(claimed_by=holder[:96],
                              claimed_until=now + dt.timedelta(seconds=claim_s)).where(
                    Outbox.id.in_(ids) & _claimable(now)).execute()
        if not ids:
            return []
        mine = Outbox.id.in_(ids) & (Outbox.claimed_by == holder[:96])
        return list(Outbox.select().where(mine).order_by(Outbox.next_attempt_at, Outbox.id))
    try:
        return _retrying(run)
    except pw.ProgrammingError as exc:
        if not (is_mysql() and _skip_locked[0] and exc.args and exc.args[0] == 1064):
            raise
        log.warning("this MySQL/MariaDB has no SKIP LOCKED (MariaDB 10.6+, MySQL 8): outbox "
                    "workers wait for each other's claims instead of skipping them")
        _skip_locked[0] = False
        return _retrying(run)


def outbox_renew_claims(ids, holder: str, claim_s: float = CLAIM_S) -> int:
    """Extend the claims `holder` still has on the messages `ids` (those it is delivering)."""
    ids = list(ids)
    if not ids:
        return 0
    return _retrying(lambda: Outbox.update(
        claimed_until=utcnow() + dt.timedelta(seconds=claim_s)).where(
        Outbox.id.in_(ids) & (Outbox.claimed_by == holder[:96])
        & (Outbox.status == "pending")).execute())


def outbox_release_claims(holder: str) -> int:
    """Give up every claim of `holder` on undelivered messages (a worker that stops cleanly),
    so another worker takes them at once instead of when the claims run out."""
    return _retrying(lambda: Outbox.update(claimed_by="", claimed_until=None).where(
        (Outbox.claimed_by == holder[:96]) & (Outbox.status == "pending")).execute())


def outbox_mark_sent(row_id: int) -> None:
    _retrying(lambda: Outbox.update(status="sent", sent_at=utcnow(), last_error="",
                                    attempts=Outbox.attempts + 1, claimed_by="",
                                    claimed_until=None)
              .where(Outbox.id == row_id).execute())


def outbox_mark_failed(row_id: int, error: str, *, max_attempts: int, backoff_s: int,
                       backoff_max_s: int, holder: str | None = None) -> str:
    """Record a failed attempt; schedule the next one with exponential backoff or move the
    message to the dead-letter state, and give the claim up. Returns the new status. With
    `holder`, only while the message is still pending and claimed by it: a worker whose
    claim ran out (and another worker took over, perhaps delivered) changes nothing."""
    def run():
        with write_transaction():
            row = Outbox.get_by_id(row_id)
            if holder is not None and (row.status != "pending"
                                       or row.claimed_by != holder[:96]):
                return row.status
            attempts = row.attempts + 1
            status = "dead" if attempts >= max_attempts else "pending"
            delay = min(backoff_max_s, backoff_s * (2 ** (attempts - 1)))
            Outbox.update(attempts=attempts, status=status, last_error=error[:2000],
                          next_attempt_at=utcnow() + dt.timedelta(seconds=delay),
                          claimed_by="", claimed_until=None,
                          ).where(Outbox.id == row_id).execute()
            return status
    return _retrying(run)


def outbox_resend(row_id: int) -> Outbox:
    """Admin 'resend': a dead (or pending) message is tried again now, attempts reset."""
    row = Outbox.get_or_none(Outbox.id == row_id)
    if row is None:
        raise NotFound("no outbound message with this id")
    if row.status == "sent":
        raise IntegrationError("this message was delivered already")
    Outbox.update(status="pending", attempts=0, next_attempt_at=utcnow()).where(
        Outbox.id == row_id).execute()
    return Outbox.get_by_id(row_id)


# inbound messages, exactly once -----------------------------------------------------------
@dataclass
class InboundResult:
    outcome: str            # applied / duplicate / conflict / error / rejected
    ack: str
    reason: str = ""
    issues: tuple = ()      # Issue: the warnings of an applied message, the error of a failed one
    queued: bool = False    # applying it added outbox rows (wake the outbox worker)


def _issue_of(exc: CatalogError) -> Issue:
    return Issue(getattr(exc, "where", ""), str(exc), getattr(exc, "hl7_code", 207), "E")


PREVIOUS_INBOUND = Prepared(lambda channel, control_id: InboundMessage.select(
    InboundMessage.id, InboundMessage.outcome, InboundMessage.ack, InboundMessage.digest,
    InboundMessage.received_at).where((InboundMessage.channel == channel)
                                      & (InboundMessage.control_id == control_id)),
    "channel", "control_id")


# Called with (channel, outcome) for every inbound message: applied (or not) by
# apply_inbound ("failed" when it raised: the database away), or recorded as not applied by
# record_failure (an unreadable message); server/metrics.py counts them.
INBOUND_OBSERVERS: list[Callable[[str, str], None]] = []
_OBSERVED = ContextVar("inbound_observed", default=False)


def _notify(channel: str, outcome: str) -> None:
    for observer in INBOUND_OBSERVERS:
        try:
            observer(channel, outcome)
        except Exception:  # noqa: BLE001 - counting never fails a message
            log.exception("inbound observer failed")


def _observed(fn):
    """Tell INBOUND_OBSERVERS the outcome of each message, once (record_failure called by
    apply_inbound is not counted again)."""
    import functools

    @functools.wraps(fn)
    def wrapper(channel, *args, **kwargs):
        if _OBSERVED.get():
            return fn(channel, *args, **kwargs)
        token = _OBSERVED.set(True)
        outcome = "failed"
        try:
            res = fn(channel, *args, **kwargs)
            outcome = res.outcome if isinstance(res, InboundResult) else \
                kwargs.get("outcome", args[3] if len(args) > 3 else "failed")
            return res
        finally:
            _OBSERVED.reset(token)
            _notify(channel, outcome)
    return wrapper


@_observed
def apply_inbound(channel: str, control_id: str, message_type: str, raw: str,
                  apply: Callable[[], str], ack: Callable[[str, str, tuple], str], *,
                  digest: str = "") -> InboundResult:
    """Apply an inbound message once. apply() runs inside the write transaction that also
    records the message; it returns a note. ack(outcome, note, issues) makes the answer:
    issues are the warnings (Issue, severity W) of an applied message (a field that failed
    validation and was not used) or the error (severity E) of one not applied. A control ID
    already applied is answered with its stored acknowledgement and not applied again; with
    `digest` (of the content) given and different from the stored one, the outcome is
    'conflict' (the stored answer is not repeated). A failure (IntegrationError: 'error',
    Unsupported: 'rejected') is recorded with its reason; a later message with the same
    control ID is tried again."""
    control_id = control_id[:128]
    stored = seal(raw, channel, control_id)     # never in clear (models/personal_data.py)

    def previous():
        return PREVIOUS_INBOUND.first(channel=channel, control_id=control_id)

    def repeat(old) -> InboundResult:
        if digest and old.digest and old.digest != digest:
            return InboundResult("conflict", old.ack, "the control ID was used for different "
                                 f"content, applied at {old.received_at:%Y-%m-%d %H:%M:%S} UTC")
        return InboundResult("duplicate", old.ack, "already applied")

    def run():
        found: list = []
        queued: list = []
        token, queued_token = _WARNINGS.set(found), OUTBOX_QUEUED.set(queued)
        try:
            with write_transaction():
                old = previous()
                if old is not None and old.outcome == "applied":
                    return repeat(old)
                note = apply()
                text = ack("applied", note, tuple(found))
                if old is not None:
                    InboundMessage.update(outcome="applied", reason=redact(note), ack=text,
                                          raw=stored, message_type=message_type[:32],
                                          digest=digest,
                                          received_at=utcnow()).where(
                        InboundMessage.id == old.id).execute()
                else:
                    InboundMessage.create(channel=channel, control_id=control_id,
                                          message_type=message_type[:32], raw=stored,
                                          outcome="applied", reason=redact(note), ack=text,
                                          digest=digest)
                return InboundResult("applied", text, note, tuple(found), bool(queued))
        finally:
            _WARNINGS.reset(token)
            OUTBOX_QUEUED.reset(queued_token)

    try:
        for attempt in range(RETRIES):
            try:
                return _retrying(run)
            except pw.IntegrityError:
                prev = previous()
                if prev is not None and prev.outcome == "applied":
                    return repeat(prev)
                if attempt == RETRIES - 1:
                    raise
    except Unsupported as exc:
        outcome, reason, issue = "rejected", str(exc), _issue_of(exc)
    except CatalogError as exc:
        outcome, reason, issue = "error", str(exc), _issue_of(exc)
        if getattr(exc, "after_rollback", None) is not None:
            exc.after_rollback()            # e.g. a cross-patient report's quarantine row
    text = ack(outcome, reason, (issue,))
    record_failure(channel, control_id, message_type, raw, outcome, reason, text)
    return InboundResult(outcome, text, reason, (issue,))


@_observed
def record_failure(channel: str, control_id: str, message_type: str, raw: str, outcome: str,
                   reason: str, ack_text: str) -> None:
    """Keep a message that was not applied, with its reason, for inspection (the message
    sealed, the reason and answer redacted: models/personal_data.py)."""
    control_id = control_id[:128]
    stored, reason, ack_text = seal(raw, channel, control_id), redact(reason), redact(ack_text)

    def run():
        with write_transaction():
            old = InboundMessage.get_or_none((InboundMessage.channel == channel)
                                             & (InboundMessage.control_id == control_id))
            if old is not None and old.outcome == "applied":
                return
            if old is not None:
                InboundMessage.update(outcome=outcome, reason=reason, ack=ack_text,
                                      raw=stored, received_at=utcnow()).where(
                    InboundMessage.id == old.id).execute()
            else:
                InboundMessage.create(channel=channel, control_id=control_id,
                                      message_type=message_type[:32], raw=stored,
                                      outcome=outcome, reason=reason, ack=ack_text)
    try:
        _retrying(run)
    except pw.IntegrityError:
        pass


def inbound_duplicate(channel: str, control_id: str) -> InboundMessage | None:
    prev = InboundMessage.get_or_none((InboundMessage.channel == channel)
                                      & (InboundMessage.control_id == control_id[:128]))
    return prev if prev is not None and prev.outcome == "applied" else None


# the PACS ---------------------------------------------------------------------------------
def record_remote_studies(catalog: Catalog, patient_fields: dict, studies: list[dict]) -> list[dict]:
    """Exams found in the PACS by C-FIND: the ones not held here become Exam rows with
    source 'pacs' and no images, so every list shows the whole history; opening one fetches
    it. Returns the studies with 'held' (we have images) and 'num_instances_here'."""
    out = []
    with write_transaction():
        patient = None
        for s in studies:
            uid = s.get("study_uid") or ""
            if not uid:
                continue
            exam = Exam.get_or_none(Exam.study_uid == uid)
            if exam is None:
                if patient is None:
                    patient = Patient.get_or_none(
                        Patient.patient_id == patient_fields["patient_id"])
                    if patient is None:
                        patient = upsert_patient(catalog, patient_fields)
                    elif patient.merged_into_id:
                        patient = Patient.get_by_id(patient.merged_into_id)
                modality = (s.get("modality") or "").split("\\")[0].upper()
                exam = Exam.create(patient=patient, study_uid=uid,
                                   accession_number=s.get("accession") or None,
                                   modality=(s.get("modality") or "")[:64],
                                   category=category_for_modality(modality),
                                   exam_date=s.get("study_date"),
                                   description=(s.get("description") or "")[:255],
                                   status="examined", source="pacs")
            out.append({**{k: v for k, v in s.items() if k != "study_date"},
                        "study_date": s["study_date"].isoformat() if s.get("study_date") else None,
                        "held": exam.num_instances > 0 and exam.source != "pacs"
                                or exam.num_instances >= int(s.get("num_instances") or 1),
                        "num_instances_here": exam.num_instances})
    return out


def retrieve_job_start(study_uid: str) -> tuple[RetrieveJob, bool]:
    """Start (or join) the retrieve of a study; returns (job, started_now)."""
    with write_transaction():
        job = RetrieveJob.get_or_none(RetrieveJob.study_uid == study_uid)
        if job is not None and job.status in ("pending", "running"):
            return job, False
        if job is None:
            job = RetrieveJob.create(study_uid=study_uid, status="pending")
        else:
            RetrieveJob.update(status="pending", expected=0, completed=0, failed=0, error="",
                               started_at=utcnow(), finished_at=None).where(
                RetrieveJob.id == job.id).execute()
            job = RetrieveJob.get_by_id(job.id)
        return job, True


def retrieve_job_update(study_uid: str, **fields) -> None:
    if fields.get("status") in ("done", "failed"):
        fields["finished_at"] = utcnow()
    _retrying(lambda: RetrieveJob.update(**fields).where(
        RetrieveJob.study_uid == study_uid).execute())


def retrieve_progress(study_uid: str) -> dict:
    job = RetrieveJob.get_or_none(RetrieveJob.study_uid == study_uid)
    exam = Exam.get_or_none(Exam.study_uid == study_uid)
    here = exam.num_instances if exam else 0
    out = {"study_uid": study_uid, "instances_here": here,
           "first_image_ready": here > 0, "status": "none"}
    if job is not None:
        out.update(status=job.status, expected=job.expected, completed=job.completed,
                   failed=job.failed, error=job.error,
                   started_at=job.started_at.isoformat() if job.started_at else None,
                   finished_at=job.finished_at.isoformat() if job.finished_at else None)
        if job.status == "failed" and job.expected and here >= job.expected:
            # the images arrived after all (a retry, a C-MOVE or a send from the modality):
            # the exam is complete, whatever the failed attempt said
            out.update(status="done", error="", arrived_later=True)
    return out


# status -----------------------------------------------------------------------------------
def status_summary() -> dict:
    """Queue depths, last messages and recent failures, for the admin status view."""
    def counts(model, field):
        return {row[0]: row[1] for row in model.select(field, pw.fn.COUNT(model.id))
                .group_by(field).tuples()}

    last_in = {}
    for ch in ("hl7", "api"):
        q = InboundMessage.select().where(InboundMessage.channel.startswith(ch))
        m = q.order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc()).first()
        if m is not None:
            last_in[ch] = {"control_id": m.control_id, "type": m.message_type,
                           "outcome": m.outcome, "at": m.received_at.isoformat()}
    failures = [{"id": m.id, "channel": m.channel, "control_id": m.control_id,
                 "type": m.message_type,
                 "outcome": m.outcome, "reason": m.reason[:300],
                 "at": m.received_at.isoformat()}
                for m in InboundMessage.select().where(InboundMessage.outcome != "applied")
                .order_by(InboundMessage.id.desc()).limit(20)]
    dead = [{"id": o.id, "channel": o.channel, "destination": o.destination,
             "attempts": o.attempts, "last_error": o.last_error[:300],
             "created_at": o.created_at.isoformat()}
            for o in Outbox.select().where(Outbox.status == "dead").order_by(Outbox.id.desc())
            .limit(50)]
    events = [{"channel": e.channel, "peer": e.peer, "outcome": e.outcome,
               "detail": e.detail[:300], "at": e.time.isoformat()}
              for e in IntegrationEvent.select().order_by(IntegrationEvent.id.desc()).limit(30)]
    from .schema import Quarantine
    return {
        "inbound": counts(InboundMessage, InboundMessage.outcome),
        "outbox": counts(Outbox, Outbox.status),
        "last_inbound": last_in,
        "recent_inbound_failures": failures,
        "dead_letters": dead,
        "recent_events": events,
        "quarantine": Quarantine.select().count(),
        "retrieves": counts(RetrieveJob, RetrieveJob.status),
    }
