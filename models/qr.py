"""Query/Retrieve matching for our C-FIND / C-MOVE / C-GET SCP (adapters/dicom_net.py).

The adapter turns the request identifier into a plain dict of match keys (DICOM keywords →
string values, as in the identifier); this module answers with plain dicts of the stored
values per level, and the instance files to send for a retrieve."""
from __future__ import annotations

import datetime as dt
from typing import Any, Iterator

import peewee as pw

from .dicom_match import QueryError, date_match, ilike, like_pattern, text_match, uid_match
from .schema import Exam, Instance, Patient, Series

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


def _match(field: pw.Field, value: str | None, *, uid_list: bool = False) -> Any:
    return uid_match(field, value) if uid_list else text_match(field, value, 128)


def _where(q, conds):
    conds = [c for c in conds if c is not None]
    for c in conds:
        q = q.where(c)
    return q


def _patient_conds(keys: dict) -> list:
    return [_match(Patient.patient_id, keys.get("PatientID")),
            _match(Patient.name, keys.get("PatientName")),
            date_match(Patient.birth_date, keys.get("PatientBirthDate")),
            _match(Patient.sex, keys.get("PatientSex"))]


def _study_conds(keys: dict) -> list:
    conds = [_match(Exam.study_uid, keys.get("StudyInstanceUID"), uid_list=True),
             _match(Exam.accession_number, keys.get("AccessionNumber")),
             date_match(Exam.exam_date, keys.get("StudyDate")),
             _match(Exam.description, keys.get("StudyDescription"))]
    mods = keys.get("ModalitiesInStudy")
    if mods and str(mods).strip() and str(mods).strip() != "*":
        any_of = None
        for m in str(mods).split("\\"):
            m = m.strip()
            if not m:
                continue
            p = like_pattern(m)
            c = (Exam.modality == m) | ilike(Exam.modality, f"{p}\\%") | \
                ilike(Exam.modality, f"%\\{p}") | ilike(Exam.modality, f"%\\{p}\\%")
            any_of = c if any_of is None else (any_of | c)
        conds.append(any_of)
    return conds


def _series_conds(keys: dict) -> list:
    conds = [_match(Series.series_uid, keys.get("SeriesInstanceUID"), uid_list=True),
             _match(Series.modality, keys.get("Modality"))]
    num = keys.get("SeriesNumber")
    if num not in (None, "") and str(num).strip().isdigit():
        conds.append(Series.series_number == int(str(num).strip()))
    return conds


def _image_conds(keys: dict) -> list:
    conds = [_match(Instance.sop_uid, keys.get("SOPInstanceUID"), uid_list=True),
             _match(Instance.sop_class_uid, keys.get("SOPClassUID"), uid_list=True)]
    num = keys.get("InstanceNumber")
    if num not in (None, "") and str(num).strip().isdigit():
        conds.append(Instance.instance_number == int(str(num).strip()))
    return conds


def _d(v: dt.date | None) -> str:
    return v.strftime("%Y%m%d") if v else ""


def _patient_row(p: Patient) -> dict:
    return {"PatientID": p.patient_id, "PatientName": p.name or "",
            "PatientBirthDate": _d(p.birth_date), "PatientSex": p.sex or ""}


def _study_row(e: Exam) -> dict:
    row = _patient_row(e.patient)
    row.update({"StudyInstanceUID": e.study_uid or "", "StudyDate": _d(e.exam_date),
                "StudyTime": e.exam_time.strftime("%H%M%S") if e.exam_time else "",
                "AccessionNumber": e.accession_number or "",
                "StudyDescription": e.description or "",
                "ModalitiesInStudy": e.modality or "",
                "ReferringPhysicianName": e.referring_physician or "",
                "InstitutionName": e.institution or "",
                "NumberOfStudyRelatedSeries": str(e.num_series or 0),
                "NumberOfStudyRelatedInstances": str(e.num_instances or 0)})
    return row


def _series_row(s: Series) -> dict:
    row = _study_row(s.exam)
    row.update({"SeriesInstanceUID": s.series_uid, "Modality": s.modality or "",
                "SeriesNumber": "" if s.series_number is None else str(s.series_number),
                "SeriesDescription": s.description or "",
                "BodyPartExamined": s.body_part or "",
                "NumberOfSeriesRelatedInstances": str(s.num_instances or 0)})
    return row


def _image_row(i: Instance) -> dict:
    row = _series_row(i.series)
    row.update({"SOPInstanceUID": i.sop_uid, "SOPClassUID": i.sop_class_uid or "",
                "InstanceNumber": "" if i.instance_number is None else str(i.instance_number),
                "Rows": str(i.rows or ""), "Columns": str(i.columns or ""),
                "NumberOfFrames": str(i.frames or 1)})
    return row


def find(level: str, keys: dict, *, patient_root: bool = False,
         limit: int = 10000) -> Iterator[dict]:
    """The matches of a C-FIND at `level` (PATIENT, STUDY, SERIES, IMAGE) as dicts of
    keyword → stored value (strings; person names in their display form)."""
    level = (level or "").upper()
    if level not in LEVELS:
        raise QueryError(f"unknown query/retrieve level {level!r}")
    pconds = _patient_conds(keys)
    if level == "PATIENT":
        q = _where(Patient.select().where(Patient.merged_into.is_null()), pconds)
        for p in q.order_by(Patient.id).limit(limit):
            row = _patient_row(p)
            n = Exam.select().where(Exam.patient == p).count()
            row["NumberOfPatientRelatedStudies"] = str(n)
            yield row
        return
    sconds = _study_conds(keys)
    if level == "STUDY":
        q = _where(Exam.select(Exam, Patient).join(Patient)
                   .where(Exam.study_uid.is_null(False)), pconds + sconds)
        for e in q.order_by(Exam.id).limit(limit):
            yield _study_row(e)
        return
    seconds = _series_conds(keys)
    if level == "SERIES":
        q = _where(Series.select(Series, Exam, Patient).join(Exam).join(Patient),
                   pconds + sconds + seconds)
        for s in q.order_by(Series.id).limit(limit):
            yield _series_row(s)
        return
    q = _where(Instance.select(Instance, Series, Exam, Patient).join(Series).join(Exam)
               .join(Patient), pconds + sconds + seconds + _image_conds(keys))
    for i in q.order_by(Series.id, Instance.instance_number, Instance.id).limit(limit):
        yield _image_row(i)


def retrieve_instances(level: str, keys: dict) -> list[dict]:
    """The instances a C-MOVE / C-GET at `level` names (unique keys of that level and above):
    dicts with sop_uid, sop_class_uid, transfer_syntax and file_path (relative)."""
    level = (level or "").upper()
    if level not in LEVELS:
        raise QueryError(f"unknown query/retrieve level {level!r}")
    unique = {"PATIENT": ["PatientID"], "STUDY": ["PatientID", "StudyInstanceUID"],
              "SERIES": ["PatientID", "StudyInstanceUID", "SeriesInstanceUID"],
              "IMAGE": ["PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                        "SOPInstanceUID"]}[level]
    ukeys = {k: keys.get(k) for k in unique if keys.get(k)}
    last = unique[-1]
    if not ukeys.get(last):
        raise QueryError(f"{last} is required for a {level} level retrieve")
    q = _where(Instance.select(Instance, Series, Exam, Patient).join(Series).join(Exam)
               .join(Patient),
               [_match(Patient.patient_id, ukeys.get("PatientID")),
                _match(Exam.study_uid, ukeys.get("StudyInstanceUID"), uid_list=True),
                _match(Series.series_uid, ukeys.get("SeriesInstanceUID"), uid_list=True),
                _match(Instance.sop_uid, ukeys.get("SOPInstanceUID"), uid_list=True)])
    return [{"sop_uid": i.sop_uid, "sop_class_uid": i.sop_class_uid,
             "transfer_syntax": i.transfer_syntax, "file_path": i.file_path}
            for i in q.order_by(Exam.id, Series.id, Instance.instance_number, Instance.id)]
