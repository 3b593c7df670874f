"""Versions, not conflicts: what a repeated SOP Instance UID does (issue 15).

Catalog.store_instance calls `resend` when the SOP Instance UID is already stored with other
bytes. The files are compared by content by the comparer the server gives the catalog
(adapters/dicom_compare.py compare_files; models never reads DICOM itself):

- same pixels and same attributes (another transfer syntax, another file meta, the same file
  by C-STORE and by import): nothing changes, ALREADY_PRESENT with extra["resend"] = "same";
  the very bytes of an earlier, replaced version (a folder imported again) likewise, with
  extra["resend"] = "earlier_version";
- same pixels, corrected attributes (a PACS resending after a demographic correction): a new
  version: the new file (its own name, dicom/…/<sop>.v<n>.dcm) becomes the instance, the old
  one is kept as an InstanceVersion row (dicom_version_retention_days), the exam, series and
  patient take the corrected values, one audit record "instance.version" (actor system, the
  sending AE or source; names of the changed attributes only); outcome STORED with
  extra["resend"] = "version";
- other pixel data: dicom_conflict_policy: replace (a new version as above), keep_first (the
  stored file stays, the newcomer is kept in the quarantine, audit "instance.resend_refused";
  ALREADY_PRESENT with extra["resend"] = "kept_first"), quarantine (CONFLICT, as before).

A resend that would move the instance to another patient or study (Patient ID, Study or
Series Instance UID, SOP Class UID changed) is never applied automatically: CONFLICT.
Nothing here logs patient data.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Callable

import peewee as pw

from .db import write_transaction
from .schema import Exam, Instance, InstanceVersion, Series, utcnow

log = logging.getLogger(__name__)

POLICIES = ("replace", "keep_first", "quarantine")
SAME, VERSION, KEPT_FIRST, EARLIER = "same", "version", "kept_first", "earlier_version"
IDENTITY = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID",
            "SOPInstanceUID")
# corrected attribute -> (model, field, meta key, length)
CORRECTIONS = {
    "PatientName": ("patient", "name", "patient_name", 128),
    "PatientSex": ("patient", "sex", "patient_sex", 1),
    "PatientBirthDate": ("patient", "birth_date", "patient_birth_date", None),
    "StudyDescription": ("exam", "description", "study_description", 255),
    "StudyDate": ("exam", "exam_date", "study_date", None),
    "StudyTime": ("exam", "exam_time", "study_time", None),
    "InstitutionName": ("exam", "institution", "institution", 128),
    "ReferringPhysicianName": ("exam", "referring_physician", "referring_physician", 128),
    "AccessionNumber": ("exam", "accession_number", "accession_number", 64),
    "SeriesDescription": ("series", "description", "series_description", 255),
    "SeriesNumber": ("series", "series_number", "series_number", None),
    "BodyPartExamined": ("series", "body_part", "body_part", 64),
}
INSTANCE_FIELDS = ("sop_class_uid", "transfer_syntax", "instance_number", "rows", "columns",
                   "frames", "bits_allocated", "photometric", "image_position",
                   "image_orientation", "slice_location", "pixel_spacing")


def resend(catalog, existing: Instance, meta: dict[str, Any], data: bytes, digest: str,
           source: str, origin: str):
    """Decide and apply what a resend of a stored SOP Instance UID does (see the module)."""
    from .catalog import ALREADY_PRESENT, StoreResult
    sop_uid, study_uid = existing.sop_uid, meta.get("study_uid") or ""
    if InstanceVersion.select().where((InstanceVersion.instance == existing.id)
                                      & (InstanceVersion.sha256 == digest)).exists():
        # the very bytes of an earlier version (a folder imported again): already seen
        return StoreResult(ALREADY_PRESENT, sop_uid, study_uid, extra={"resend": EARLIER})
    compare: Callable | None = getattr(catalog, "compare", None)
    if compare is None:
        return catalog._conflict(data, sop_uid, study_uid, source, origin,
                                 "SOP Instance UID already stored with different content; "
                                 "the original is kept")
    try:
        old = catalog.storage.read(existing.file_path)
        cmp = compare(old, data)
    except Exception as exc:  # noqa: BLE001 - an unreadable original or newcomer
        log.warning("resend of SOP %s: cannot compare (%s)", sop_uid, type(exc).__name__)
        return catalog._conflict(data, sop_uid, study_uid, source, origin,
                                 "SOP Instance UID already stored and the files cannot be "
                                 "compared; the original is kept")
    if cmp.same:
        return StoreResult(ALREADY_PRESENT, sop_uid, study_uid, extra={"resend": SAME})
    moved = [n for n in cmp.changed if n in IDENTITY]
    if moved:
        return catalog._conflict(data, sop_uid, study_uid, source, origin,
                                 "a resend may not change " + ", ".join(moved) +
                                 "; correct it at the PACS/HIS or ask an administrator")
    change = "attributes" if cmp.same_pixels else "pixels"
    if change == "pixels":
        policy = _policy(catalog)
        if policy == "quarantine":
            return catalog._conflict(data, sop_uid, study_uid, source, origin,
                                     "SOP Instance UID already stored with different pixel "
                                     "data; the original is kept (dicom_conflict_policy = "
                                     "quarantine)")
        if policy == "keep_first":
            why = ("SOP Instance UID already stored with different pixel data; the first "
                   "is kept (dicom_conflict_policy = keep_first)")
            catalog.quarantine(data, f"{why} ({sop_uid})", source, origin)
            _auditor(catalog).record("instance.resend_refused", actor_kind="system",
                                     actor_id=(origin or source)[:64],
                                     object_type="instance", object_id=sop_uid,
                                     outcome="refused",
                                     detail=f"from {source} {origin}: pixel data differs; "
                                            "kept the first (keep_first)"[:2000])
            log.info("resend of SOP %s from %s: pixel data differs, first kept", sop_uid,
                     origin or source)
            return StoreResult(ALREADY_PRESENT, sop_uid, study_uid, why,
                               extra={"resend": KEPT_FIRST})
    return _new_version(catalog, existing, meta, data, digest, source, origin, change,
                        cmp.changed)


def _policy(catalog) -> str:
    config = getattr(catalog, "config", None)
    policy = getattr(config, "dicom_conflict_policy", None) if config is not None else None
    return policy if policy in POLICIES else "quarantine"


def _auditor(catalog):
    auditor = getattr(catalog, "auditor", None)
    if auditor is None:
        from .audit import Auditor
        auditor = catalog.auditor = Auditor(catalog._id_key)
    return auditor


def _new_version(catalog, existing, meta, data, digest, source, origin, change, changed):
    from .catalog import STORED, StoreResult
    series = existing.series
    exam = series.exam
    sop_uid = existing.sop_uid
    number = InstanceVersion.select().where(InstanceVersion.instance == existing.id).count() + 2
    rel = catalog.storage.instance_relpath(exam.study_uid, series.series_uid, sop_uid,
                                           version=number)
    wrote = catalog.storage.put_atomic(rel, data).written
    if not wrote and catalog.storage.sha256(rel) != digest:
        return catalog._conflict(data, sop_uid, exam.study_uid, source, origin,
                                 "another resend of this SOP Instance UID is being stored")
    try:
        with write_transaction():
            current = Instance.get_by_id(existing.id)
            if current.sha256 != existing.sha256:
                raise pw.IntegrityError("instance changed meanwhile")
            previous = (InstanceVersion.select(InstanceVersion.replaced_at)
                        .where(InstanceVersion.instance == current.id)
                        .order_by(InstanceVersion.number.desc()).first())
            InstanceVersion.create(
                instance=current, study_uid=exam.study_uid, sop_uid=sop_uid,
                number=number - 1, file_path=current.file_path, file_size=current.file_size,
                sha256=current.sha256, transfer_syntax=current.transfer_syntax,
                received_at=previous.replaced_at if previous else current.created_at,
                replaced_by_source=source[:32], replaced_by_origin=(origin or "")[:255],
                change=change, changed_tags=",".join(changed)[:4000])
            updates = {f: meta.get(f) for f in INSTANCE_FIELDS if f in meta}
            for f in ("rows", "columns", "bits_allocated"):
                updates[f] = updates.get(f) or 0
            updates["frames"] = updates.get("frames") or 1
            Instance.update(file_path=rel, file_size=len(data), sha256=digest,
                            **updates).where(Instance.id == current.id).execute()
            _apply_corrections(exam, series, meta, changed)
            _auditor(catalog).record(
                "instance.version", actor_kind="system", actor_id=(origin or source)[:64],
                object_type="instance", object_id=sop_uid,
                detail=(f"version {number} from {source} {origin}: {change}; changed: "
                        f"{', '.join(changed) or 'encoding only'}")[:2000])
    except pw.IntegrityError:
        if wrote:
            catalog.storage.remove(rel)
        return catalog._conflict(data, sop_uid, exam.study_uid, source, origin,
                                 "another resend of this SOP Instance UID is being stored")
    except BaseException:
        if wrote:
            catalog.storage.remove(rel)
        raise
    log.info("SOP %s: version %d from %s (%s; %s)", sop_uid, number, origin or source,
             change, ", ".join(changed) or "-")
    for listener in list(getattr(catalog, "version_listeners", ())):
        try:
            listener(exam.study_uid, series.series_uid, sop_uid)
        except Exception:  # noqa: BLE001 - a cache hook must not undo a stored version
            log.exception("version listener failed")
    return StoreResult(STORED, sop_uid, exam.study_uid,
                       extra={"resend": VERSION, "version": number, "change": change,
                              "changed": list(changed), "previous": existing.file_path,
                              "file_path": rel, "sha256": digest})


def _apply_corrections(exam: Exam, series: Series, meta: dict, changed: list[str]) -> None:
    """The corrected values of the changed attributes reach the patient, exam and series
    (a correction sent by the PACS for this very image)."""
    rows = {"patient": exam.patient, "exam": exam, "series": series}
    dirty = set()
    for name in changed:
        target = CORRECTIONS.get(name)
        if target is None:
            continue
        model, fieldname, key, length = target
        value = meta.get(key)
        if isinstance(value, str):
            value = value[:length] if length else value
            if fieldname == "accession_number":
                value = value or None
                if value and Exam.select().where((Exam.accession_number == value)
                                                 & (Exam.id != exam.id)).exists():
                    continue        # another exam has it: left to the HIS
        elif value is None and fieldname in ("name", "sex", "description", "institution",
                                             "referring_physician", "body_part"):
            value = ""
        setattr(rows[model], fieldname, value)
        dirty.add(model)
    now = utcnow()
    if "patient" in dirty:
        rows["patient"].updated_at = now
        rows["patient"].save()
    if "exam" in dirty:
        exam.updated_at = now
        exam.save()
    if "series" in dirty:
        series.save()


# staff view --------------------------------------------------------------------------------
def versions_of_study(study_uid: str, sop_uid: str | None = None) -> list[dict]:
    """The versions of a study's instances that have any (or of one instance): for each, the
    current file and every kept one, newest first, with time, source and the names of the
    changed attributes. No attribute values."""
    q = InstanceVersion.select().where(InstanceVersion.study_uid == study_uid)
    if sop_uid:
        q = q.where(InstanceVersion.sop_uid == sop_uid)
    rows: dict[int, list[InstanceVersion]] = {}
    for r in q.order_by(InstanceVersion.instance, InstanceVersion.number):
        rows.setdefault(r.instance_id, []).append(r)
    out = []
    for inst in (Instance.select().where(Instance.id.in_(list(rows))).order_by(Instance.id)
                 if rows else []):
        kept = rows[inst.id]
        entries = []
        for i, r in enumerate(kept):
            entries.append({
                "number": r.number, "current": False, "received_at": _iso(r.received_at),
                "source": kept[i - 1].replaced_by_source if i else "",
                "origin": kept[i - 1].replaced_by_origin if i else "",
                "change": kept[i - 1].change if i else "",
                "changed": _names(kept[i - 1].changed_tags) if i else [],
                "replaced_at": _iso(r.replaced_at), "transfer_syntax": r.transfer_syntax,
                "file_size": r.file_size, "file_kept": r.file_removed_at is None})
        last = kept[-1]
        entries.append({
            "number": last.number + 1, "current": True, "received_at": _iso(last.replaced_at),
            "source": last.replaced_by_source, "origin": last.replaced_by_origin,
            "change": last.change, "changed": _names(last.changed_tags),
            "replaced_at": None, "transfer_syntax": inst.transfer_syntax,
            "file_size": inst.file_size, "file_kept": True})
        out.append({"sop_uid": inst.sop_uid, "series_uid": inst.series.series_uid,
                    "versions": list(reversed(entries))})
    return out


def _names(text: str) -> list[str]:
    return [n for n in (text or "").split(",") if n]


def _iso(t: dt.datetime | None) -> str | None:
    return t.replace(tzinfo=dt.timezone.utc).isoformat() if t else None


# retention -----------------------------------------------------------------------------------
def prune_versions(storage, retention_days: int, *, now: dt.datetime | None = None) -> int:
    """Delete the files of versions replaced more than retention_days ago (0: keep forever).
    The rows stay (the history), marked file_removed_at. Returns the files removed."""
    if not retention_days or retention_days <= 0:
        return 0
    cutoff = (now or utcnow()) - dt.timedelta(days=retention_days)
    removed = 0
    rows = list(InstanceVersion.select().where((InstanceVersion.replaced_at < cutoff)
                                               & InstanceVersion.file_removed_at.is_null())
                .limit(10_000))
    for r in rows:
        # a kept file is never the current one, but check: never delete what is served
        if Instance.select().where(Instance.file_path == r.file_path).exists():
            continue
        storage.remove(r.file_path)
        storage.remove(storage.fast_copy_of(r.file_path))
        storage.remove(storage.metadata_of(r.file_path))
        InstanceVersion.update(file_removed_at=utcnow()).where(
            InstanceVersion.id == r.id).execute()
        removed += 1
    if removed:
        log.info("instance versions: %d superseded files removed after %d days", removed,
                 retention_days)
    return removed
