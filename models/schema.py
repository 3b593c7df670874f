"""The CloudFilm data model (peewee). Tables are created and changed only by migrations."""
from __future__ import annotations

from contextvars import ContextVar

import peewee as pw

from .clock import utcnow  # noqa: F401 - models.schema.utcnow stays importable
from .db import database
from .personal_data import SealedPhoneField


EXAM_CATEGORIES = ("radiology", "ultrasound", "endoscopy", "pathology")
EXAM_STATUSES = ("ordered", "scheduled", "examined", "reported", "cancelled")
REPORT_STATUSES = ("preliminary", "final", "corrected")


class LongTextField(pw.TextField):
    """Text that may exceed 64 KiB: a whole HL7 message with its base64 PDF (MySQL's TEXT
    stops at 65,535 bytes; LONGTEXT holds 4 GiB; SQLite treats both as TEXT)."""
    field_type = "LONGTEXT"


class BaseModel(pw.Model):
    class Meta:
        database = database
        legacy_table_names = False
        # save() writes only changed fields, so it never writes back a stale counter that
        # another transaction incremented meanwhile.
        only_save_dirty = True


class SchemaVersion(BaseModel):
    version = pw.IntegerField(primary_key=True)
    name = pw.CharField(max_length=100)
    applied_at = pw.DateTimeField(default=utcnow)


class Patient(BaseModel):
    patient_id = pw.CharField(max_length=64, unique=True)        # hospital patient ID
    name = pw.CharField(max_length=128, default="", index=True)
    sex = pw.CharField(max_length=1, default="")                 # M / F / O / ""
    birth_date = pw.DateField(null=True)
    phone = SealedPhoneField(max_length=128, null=True)   # stored sealed (personal_data, m0058)
    id_number_hash = pw.CharField(max_length=64, null=True, index=True)   # HMAC-SHA256, hex
    id_number_masked = pw.CharField(max_length=32, null=True)             # 4420**********123X
    # identifiers the HIS sent that failed validation (a passport or permit number, an old
    # 15-digit ID, a bad check digit; a phone that is not a number): kept masked only, never
    # hashed, never used for identity checks (migration 0053)
    id_number_unverified = pw.CharField(max_length=32, null=True)
    phone_unverified = pw.CharField(max_length=32, null=True)
    merged_into = pw.ForeignKeyField("self", null=True, backref="merged_from",
                                     on_delete="SET NULL")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)


class Exam(BaseModel):
    patient = pw.ForeignKeyField(Patient, backref="exams", on_delete="CASCADE")
    study_uid = pw.CharField(max_length=64, unique=True, null=True)
    accession_number = pw.CharField(max_length=64, null=True, index=True)
    modality = pw.CharField(max_length=64, default="")           # e.g. "CT" or "CT\\SR"
    category = pw.CharField(max_length=16, default="radiology", index=True)
    exam_date = pw.DateField(null=True, index=True)
    exam_time = pw.TimeField(null=True)
    description = pw.CharField(max_length=255, default="")
    institution = pw.CharField(max_length=128, default="")
    referring_physician = pw.CharField(max_length=128, default="")
    status = pw.CharField(max_length=16, default="examined")
    images_enabled = pw.BooleanField(default=True)
    source = pw.CharField(max_length=16, default="local")        # local / pacs / hl7 / api
    num_series = pw.IntegerField(default=0)
    num_instances = pw.IntegerField(default=0)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)


class Series(BaseModel):
    exam = pw.ForeignKeyField(Exam, backref="series", on_delete="CASCADE")
    series_uid = pw.CharField(max_length=64, unique=True)
    modality = pw.CharField(max_length=16, default="")
    series_number = pw.IntegerField(null=True)
    description = pw.CharField(max_length=255, default="")
    body_part = pw.CharField(max_length=64, default="")
    frame_of_reference_uid = pw.CharField(max_length=64, default="")
    num_instances = pw.IntegerField(default=0)
    created_at = pw.DateTimeField(default=utcnow)


class Instance(BaseModel):
    series = pw.ForeignKeyField(Series, backref="instances", on_delete="CASCADE")
    sop_uid = pw.CharField(max_length=64, unique=True)
    sop_class_uid = pw.CharField(max_length=64, default="")
    transfer_syntax = pw.CharField(max_length=64, default="")
    instance_number = pw.IntegerField(null=True)
    rows = pw.IntegerField(default=0)
    columns = pw.IntegerField(default=0)
    frames = pw.IntegerField(default=1)
    bits_allocated = pw.IntegerField(default=0)
    photometric = pw.CharField(max_length=16, default="")
    image_position = pw.CharField(max_length=96, default="")      # "x\\y\\z" as in DICOM
    image_orientation = pw.CharField(max_length=160, default="")
    slice_location = pw.FloatField(null=True)
    pixel_spacing = pw.CharField(max_length=64, default="")
    file_path = pw.CharField(max_length=255)                       # relative to data_dir
    file_size = pw.BigIntegerField()
    sha256 = pw.CharField(max_length=64)
    created_at = pw.DateTimeField(default=utcnow)


class Report(BaseModel):
    exam = pw.ForeignKeyField(Exam, backref="reports", on_delete="CASCADE")
    findings = pw.TextField(default="")
    impression = pw.TextField(default="")
    pdf_path = pw.CharField(max_length=255, null=True)             # relative to data_dir
    pdf_sha256 = pw.CharField(max_length=64, null=True)
    author = pw.CharField(max_length=128, default="")
    reviewer = pw.CharField(max_length=128, default="")
    signed_at = pw.DateTimeField(null=True)
    status = pw.CharField(max_length=16, default="final")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)


class Quarantine(BaseModel):
    """A received file that was not stored, kept with its reason for inspection."""
    source = pw.CharField(max_length=32)                           # import / dicom / api / folder
    origin = pw.CharField(max_length=255, default="")              # file name or peer, no PHI
    reason = pw.TextField()
    file_path = pw.CharField(max_length=255, null=True)
    sha256 = pw.CharField(max_length=64, null=True)
    created_at = pw.DateTimeField(default=utcnow, index=True)


class CountedLink(BaseModel):
    """What an exam share and a patient QR have in common: opens counted against a limit,
    an expiry, revocation, a lock after wrong codes, and who made it. (No table of its own:
    peewee copies these fields into each subclass's table.)"""
    max_opens = pw.IntegerField(default=5)
    opens = pw.IntegerField(default=0)
    expires_at = pw.DateTimeField()
    revoked_at = pw.DateTimeField(null=True)
    failed_attempts = pw.IntegerField(default=0)
    locked_until = pw.DateTimeField(null=True)
    lock_count = pw.IntegerField(default=0)       # locks so far: each lasts longer (m0057)
    created_by_kind = pw.CharField(max_length=16, default="staff")
    created_by = pw.CharField(max_length=64, default="")
    created_at = pw.DateTimeField(default=utcnow)


class Share(CountedLink):
    exam = pw.ForeignKeyField(Exam, backref="shares", on_delete="CASCADE")
    token_hash = pw.CharField(max_length=64, unique=True)
    code_hash = pw.CharField(max_length=128)
    include_images = pw.BooleanField(default=True)
    allow_download = pw.BooleanField(default=False)


class AuditEvent(BaseModel):
    time = pw.DateTimeField(default=utcnow, index=True)
    actor_kind = pw.CharField(max_length=16)
    actor_id = pw.CharField(max_length=64, default="")
    ip = pw.CharField(max_length=64, default="")
    action = pw.CharField(max_length=64, index=True)
    object_type = pw.CharField(max_length=32, default="")
    object_id = pw.CharField(max_length=128, default="")
    outcome = pw.CharField(max_length=16, default="ok")
    detail = pw.TextField(default="")
    prev_hmac = pw.CharField(max_length=64, default="")
    hmac = pw.CharField(max_length=64, default="")

    def save(self, *args, **kwargs):
        raise PermissionError("audit rows are append-only: use models.audit.Auditor.record")

    def delete_instance(self, *args, **kwargs):
        raise PermissionError("audit rows are never deleted")


class DownloadLog(BaseModel):
    time = pw.DateTimeField(default=utcnow, index=True)
    exam = pw.ForeignKeyField(Exam, backref="downloads", on_delete="CASCADE")
    actor_kind = pw.CharField(max_length=16)
    actor_id = pw.CharField(max_length=64, default="")
    scope = pw.CharField(max_length=16)                            # image / series / exam
    object_uid = pw.CharField(max_length=64, default="")
    ip = pw.CharField(max_length=64, default="")
    user_agent = pw.CharField(max_length=255, default="")
    bytes_total = pw.BigIntegerField(default=0)
    bytes_sent = pw.BigIntegerField(default=0)
    completed = pw.BooleanField(default=False)


class Outbox(BaseModel):
    channel = pw.CharField(max_length=32, index=True)              # hl7 / sms / wechat
    destination = pw.CharField(max_length=255, default="")
    idempotency_key = pw.CharField(max_length=128, unique=True)
    payload = pw.TextField()
    status = pw.CharField(max_length=16, default="pending", index=True)  # pending/sent/dead
    attempts = pw.IntegerField(default=0)
    next_attempt_at = pw.DateTimeField(default=utcnow, index=True)
    last_error = pw.TextField(default="")
    created_at = pw.DateTimeField(default=utcnow)
    sent_at = pw.DateTimeField(null=True)
    # the worker delivering it now (models/integration.py outbox_claim) and until when its
    # claim holds unless renewed; '' / NULL when nobody is delivering it (m0059)
    claimed_by = pw.CharField(max_length=96, default="")
    claimed_until = pw.DateTimeField(null=True)

    def save(self, *args, **kwargs):
        adding = kwargs.get("force_insert") or self._pk is None
        rows = super().save(*args, **kwargs)
        queued = OUTBOX_QUEUED.get()
        if adding and queued is not None:
            queued.append(self.channel)
        return rows


# Outbox rows added by the code running under it (a list set by the caller, e.g.
# models/integration.py apply_inbound): the HL7 listener wakes the outbox worker only
# after a message that queued something (issue 15); the worker's own poll finds the rest.
OUTBOX_QUEUED: ContextVar[list | None] = ContextVar("outbox_queued", default=None)


class InboundMessage(BaseModel):
    channel = pw.CharField(max_length=32)                          # hl7 / api / wechat
    control_id = pw.CharField(max_length=128)
    message_type = pw.CharField(max_length=32, default="")
    raw = LongTextField()
    outcome = pw.CharField(max_length=16, default="received")      # applied / error / rejected
    reason = pw.TextField(default="")
    ack = pw.TextField(default="")
    digest = pw.CharField(max_length=64, default="")   # of the content (import API: 409 on reuse)
    received_at = pw.DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("channel", "control_id"), True),)


ALL_MODELS = [SchemaVersion, Patient, Exam, Series, Instance, Report, Quarantine, Share,
              AuditEvent, DownloadLog, Outbox, InboundMessage]


class StaffUser(BaseModel):
    username = pw.CharField(max_length=64, unique=True)
    display_name = pw.CharField(max_length=64, default="")
    password_hash = pw.CharField(max_length=255)
    roles = pw.CharField(max_length=128, default="")             # comma-separated role names
    must_change_password = pw.BooleanField(default=True)
    active = pw.BooleanField(default=True)
    failed_logins = pw.IntegerField(default=0)
    locked_until = pw.DateTimeField(null=True)
    password_changed_at = pw.DateTimeField(default=utcnow)
    created_at = pw.DateTimeField(default=utcnow)
    # an integration service account (m0056): API tokens only, no admin role, no password
    # sign-in
    service_account = pw.BooleanField(default=False)


ALL_MODELS.append(StaffUser)


class Session(BaseModel):
    """A server-side session: staff login, verified patient, or share visitor.
    Only the SHA-256 of the session ID is stored."""
    token_hash = pw.CharField(max_length=64, unique=True)
    kind = pw.CharField(max_length=16)                            # staff / patient / share
    staff_user = pw.ForeignKeyField(StaffUser, null=True, backref="sessions",
                                    on_delete="CASCADE")
    patient = pw.ForeignKeyField(Patient, null=True, backref="sessions", on_delete="CASCADE")
    share = pw.ForeignKeyField(Share, null=True, backref="sessions", on_delete="CASCADE")
    csrf_token = pw.CharField(max_length=64)
    created_at = pw.DateTimeField(default=utcnow)
    last_seen_at = pw.DateTimeField(default=utcnow)
    idle_timeout_s = pw.IntegerField(default=1800)
    expires_at = pw.DateTimeField()                               # absolute lifetime
    verified_at = pw.DateTimeField(null=True)                     # last identity check
    ended_at = pw.DateTimeField(null=True)
    ip = pw.CharField(max_length=64, default="")
    user_agent = pw.CharField(max_length=255, default="")


class ApiToken(BaseModel):
    staff_user = pw.ForeignKeyField(StaffUser, backref="api_tokens", on_delete="CASCADE")
    token_hash = pw.CharField(max_length=64, unique=True)
    name = pw.CharField(max_length=64, default="")
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField()
    revoked_at = pw.DateTimeField(null=True)
    last_used_at = pw.DateTimeField(null=True)


class RuntimeSetting(BaseModel):
    """Settings changed at run time by an administrator; they override conf defaults."""
    key = pw.CharField(max_length=64, unique=True)
    value = pw.TextField()                                        # JSON
    updated_at = pw.DateTimeField(default=utcnow)
    updated_by = pw.CharField(max_length=64, default="")


class AuditHead(BaseModel):
    """One row: the newest audit record's id and HMAC, locked while appending."""
    last_id = pw.IntegerField(default=0)
    last_hmac = pw.CharField(max_length=64, default="")
    signature = pw.CharField(max_length=64, default="")   # HMAC of (last_id, last_hmac): m0058


ALL_MODELS.extend([Session, ApiToken, RuntimeSetting, AuditHead])


class PatientShare(CountedLink):
    """A patient-level QR code (R1.4): after identity verification it leads to all of one
    patient's exams, current and later ones. Counted, expiring and revocable like an exam
    share. The link token is derived from the server key and `link_nonce` (so its owner can
    be shown the link again); only the token's SHA-256 is stored."""
    patient = pw.ForeignKeyField(Patient, backref="patient_shares", on_delete="CASCADE")
    token_hash = pw.CharField(max_length=64, unique=True)
    link_nonce = pw.CharField(max_length=32)


class PatientShareSession(BaseModel):
    """The patient sessions opened with a patient QR (revoking the QR ends them)."""
    patient_share = pw.ForeignKeyField(PatientShare, backref="sessions", on_delete="CASCADE")
    session = pw.ForeignKeyField(Session, unique=True, on_delete="CASCADE")


PATIENT_QR_MODELS = [PatientShare, PatientShareSession]
ALL_MODELS.extend(PATIENT_QR_MODELS)


class InstanceVersion(BaseModel):
    """An earlier file of an instance, replaced by a resend with corrected attributes or
    other pixel data (models/versions.py). The Instance row always names the current file;
    each row here is one superseded file, kept until dicom_version_retention_days."""
    instance = pw.ForeignKeyField(Instance, backref="versions", on_delete="CASCADE")
    study_uid = pw.CharField(max_length=64, index=True)
    sop_uid = pw.CharField(max_length=64, index=True)
    number = pw.IntegerField()                         # 1: the first file received
    file_path = pw.CharField(max_length=255)           # the superseded file (relative)
    file_size = pw.BigIntegerField()
    sha256 = pw.CharField(max_length=64)
    transfer_syntax = pw.CharField(max_length=64, default="")
    received_at = pw.DateTimeField()                   # when this file became current
    replaced_at = pw.DateTimeField(default=utcnow, index=True)
    replaced_by_source = pw.CharField(max_length=32, default="")   # dicom / import / api ...
    replaced_by_origin = pw.CharField(max_length=255, default="")  # AE title or file name
    change = pw.CharField(max_length=16)               # attributes / pixels
    changed_tags = pw.TextField(default="")            # keywords, comma-separated, no values
    file_removed_at = pw.DateTimeField(null=True)      # pruned after the retention period

    class Meta:
        indexes = ((("instance", "number"), True),)


VERSION_MODELS = [InstanceVersion]
ALL_MODELS.extend(VERSION_MODELS)


class Measurement(BaseModel):
    """A doctor's saved measurement on one image of an exam (issue 18, m0063): kind,
    points in image pixel coordinates (JSON [[x, y], ...]), an optional note and the values
    the viewer computed (JSON). Each staff user sees and edits only their own
    (models/measurements.py); exported as a DICOM Structured Report (adapters/measurement_sr.py).
    """
    staff_user = pw.ForeignKeyField(StaffUser, backref="measurements", on_delete="CASCADE")
    exam = pw.ForeignKeyField(Exam, backref="measurements", on_delete="CASCADE")
    series_uid = pw.CharField(max_length=64)
    sop_uid = pw.CharField(max_length=64)
    frame = pw.IntegerField(default=1)                 # 1-based
    kind = pw.CharField(max_length=16)                 # length / ellipse / rect / angle ...
    points = pw.TextField()                            # JSON [[x, y], ...]
    text = pw.TextField(default="")                    # at most 500 characters
    values = pw.TextField(default="{}")                # JSON {length_mm, mean, ...}
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("exam", "staff_user"), False),)


MEASUREMENT_MODELS = [Measurement]
ALL_MODELS.extend(MEASUREMENT_MODELS)
