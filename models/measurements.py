"""Saved measurements (issue 18): a doctor's measurements on the images of an exam.

Each staff user keeps their own per exam: listed, created, changed and deleted by their
author only (`MeasurementError` 403 for anyone else). A measurement names one frame of one
stored image of the exam; its points are image pixel coordinates (x = column, y = row),
checked against the image's size. The viewer computes the values (length, area, mean ...);
they are checked for shape and stored as given. `sr_source` hands the DICOM Structured
Report export (adapters/measurement_sr.py) what it needs. No patient data here.
"""
from __future__ import annotations

import json
import math

from .catalog import CatalogError
from .clock import utcnow
from .db import write_transaction
from .schema import Exam, Instance, Measurement, Series, StaffUser

KINDS = {"length": 2, "arrow": 2, "rect": 2, "ellipse": 2, "angle": 3, "cobb": 4, "text": 1}
VALUE_KEYS = ("length_mm", "mean", "sd", "min", "max", "area_mm2", "angle_deg",
              "length_px", "area_px", "n")     # px: an image without pixel spacing; n: pixels
UNITS = ("HU", "")
MAX_TEXT = 500
MAX_PER_EXAM = 200          # per user and exam
MAX_COORD = 1e7


class MeasurementError(CatalogError):
    status = 400


def _bad(zh: str, en: str) -> MeasurementError:
    return MeasurementError(f"{zh} / {en}")


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or abs(v) > MAX_COORD:
        raise _bad(f"{what} 应为有限数值", f"{what} must be a finite number")
    return float(v)


def _uid(body: dict, key: str) -> str:
    from .storage import valid_uid
    v = body.get(key)
    if not isinstance(v, str) or not valid_uid(v):
        raise _bad(f"{key} 不是有效的 DICOM UID", f"{key} is not a valid DICOM UID")
    return v


def _points(kind: str, raw) -> list[list[float]]:
    n = KINDS[kind]
    if not isinstance(raw, list) or len(raw) != n:
        raise _bad(f"“{kind}” 需要 {n} 个点", f"a '{kind}' measurement needs {n} points")
    out = []
    for p in raw:
        if not isinstance(p, list) or len(p) != 2:
            raise _bad("每个点应为 [x, y]", "each point must be [x, y]")
        out.append([_number(p[0], "x"), _number(p[1], "y")])
    return out


def _values(raw) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad("values 应为对象", "values must be an object")
    unknown = set(raw) - set(VALUE_KEYS) - {"unit"}
    if unknown:
        raise _bad("values 含未知字段", "values has unknown fields: "
                   + ", ".join(sorted(str(k)[:20] for k in unknown)[:5]))
    out = {k: (None if raw[k] is None else _number(raw[k], k)) for k in VALUE_KEYS if k in raw}
    unit = raw.get("unit", "")
    if unit not in UNITS:
        raise _bad("unit 应为 “HU” 或空", "unit must be 'HU' or ''")
    out["unit"] = unit
    return out


def parse(body: dict) -> dict:
    """The measurement of a request body, its shape checked (not yet against the image)."""
    kind = body.get("kind")
    if kind not in KINDS:
        raise _bad("kind 无效", "kind must be one of " + ", ".join(KINDS))
    frame = body.get("frame", 1)
    if isinstance(frame, bool) or not isinstance(frame, int) or not 1 <= frame <= 100000:
        raise _bad("frame 应为从 1 开始的整数", "frame must be a whole number from 1")
    text = body.get("text", "")
    if text is None:
        text = ""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise _bad(f"text 应为不超过 {MAX_TEXT} 字的文字",
                   f"text must be a string of at most {MAX_TEXT} characters")
    return {"study_uid": _uid(body, "study_uid"), "series_uid": _uid(body, "series_uid"),
            "sop_uid": _uid(body, "sop_uid"), "frame": frame, "kind": kind,
            "points": _points(kind, body.get("points")), "text": text,
            "values": _values(body.get("values"))}


def _check_image(exam: Exam, m: dict) -> None:
    """The measurement's image belongs to the exam and its points and frame lie on it."""
    if m["study_uid"] != exam.study_uid:
        raise _bad("测量不能移到其他检查", "study_uid differs: a measurement cannot move to another exam")
    inst = (Instance.select(Instance.rows, Instance.columns, Instance.frames).join(Series)
            .where((Instance.sop_uid == m["sop_uid"]) & (Series.series_uid == m["series_uid"])
                   & (Series.exam == exam)).first())
    if inst is None:
        raise _bad("该图像不属于此检查", "this image (series_uid, sop_uid) is not part of the exam")
    if not inst.rows or not inst.columns:
        raise _bad("该对象不是图像，不能测量", "this object is not an image")
    if m["frame"] > max(1, inst.frames or 1):
        raise _bad("帧号超出范围", "frame is beyond the image's number of frames")
    for x, y in m["points"]:
        if not (0 <= x <= inst.columns and 0 <= y <= inst.rows):
            raise _bad("点超出图像范围", "a point lies outside the image "
                       f"({inst.columns} x {inst.rows} pixels)")


def to_json(row: Measurement, study_uid: str) -> dict:
    return {"id": row.id, "study_uid": study_uid, "series_uid": row.series_uid,
            "sop_uid": row.sop_uid, "frame": row.frame, "kind": row.kind,
            "points": json.loads(row.points), "text": row.text,
            "values": json.loads(row.values or "{}")}


def list_measurements(exam: Exam, user_id: int) -> list[dict]:
    """The user's measurements of the exam, by id."""
    rows = (Measurement.select().where((Measurement.exam == exam)
                                       & (Measurement.staff_user == user_id))
            .order_by(Measurement.id))
    return [to_json(r, exam.study_uid) for r in rows]


def create_measurement(exam: Exam, user_id: int, body: dict) -> dict:
    m = parse(body)
    _check_image(exam, m)
    with write_transaction():
        n = (Measurement.select().where((Measurement.exam == exam)
                                        & (Measurement.staff_user == user_id)).count())
        if n >= MAX_PER_EXAM:
            raise _bad(f"每个检查最多保存 {MAX_PER_EXAM} 个测量",
                       f"at most {MAX_PER_EXAM} measurements per exam")
        row = Measurement.create(
            staff_user=user_id, exam=exam, series_uid=m["series_uid"], sop_uid=m["sop_uid"],
            frame=m["frame"], kind=m["kind"], points=json.dumps(m["points"]), text=m["text"],
            values=json.dumps(m["values"]))
    return to_json(row, exam.study_uid)


def measurement_exam_id(measurement_id: int) -> int:
    """The exam of a measurement (for the access check before any change); 404 if none."""
    row = (Measurement.select(Measurement.exam).where(Measurement.id == measurement_id)
           .tuples().first())
    if row is None:
        raise MeasurementError("没有找到该测量 / no such measurement", status=404)
    return row[0]


def _own(measurement_id: int, user_id: int) -> Measurement:
    row = Measurement.get_or_none(Measurement.id == measurement_id)
    if row is None:
        raise MeasurementError("没有找到该测量 / no such measurement", status=404)
    if row.staff_user_id != user_id:
        raise MeasurementError("只能修改自己的测量 / only its author may change a measurement",
                               status=403)
    return row


def update_measurement(exam: Exam, measurement_id: int, user_id: int, body: dict) -> dict:
    m = parse(body)
    with write_transaction():
        row = _own(measurement_id, user_id)
        if row.exam_id != exam.id:
            raise _bad("测量不能移到其他检查", "a measurement cannot move to another exam")
        _check_image(exam, m)
        row.series_uid, row.sop_uid, row.frame, row.kind = (
            m["series_uid"], m["sop_uid"], m["frame"], m["kind"])
        row.points, row.text, row.values = (json.dumps(m["points"]), m["text"],
                                            json.dumps(m["values"]))
        row.updated_at = utcnow()
        row.save()
    return to_json(row, exam.study_uid)


def delete_measurement(measurement_id: int, user_id: int) -> None:
    with write_transaction():
        _own(measurement_id, user_id).delete_instance()


def sr_source(exam: Exam, user_id: int) -> dict:
    """What the Structured Report export needs: the user's measurements of the exam, the
    referenced images (series, SOP class), one stored file of the exam to copy the patient
    and study attributes from, the observer's name and the next free series number."""
    ms = list_measurements(exam, user_id)
    if not ms:
        raise _bad("此检查没有已保存的测量", "no saved measurements for this exam")
    sops = sorted({m["sop_uid"] for m in ms})
    images, template = {}, None
    for sop, se, cls, frames, path in (
            Instance.select(Instance.sop_uid, Series.series_uid, Instance.sop_class_uid,
                            Instance.frames, Instance.file_path)
            .join(Series).where((Series.exam == exam) & Instance.sop_uid.in_(sops))
            .order_by(Instance.id).tuples()):
        images[sop] = {"series_uid": se, "sop_class_uid": cls, "frames": frames or 1}
        template = template or path
    if template is None:
        raise _bad("测量所在的图像已不在此检查中",
                   "the measured images are no longer part of this exam")
    user = StaffUser.get_by_id(user_id)
    top = max((s or 0 for (s,) in Series.select(Series.series_number)
               .where(Series.exam == exam).tuples()), default=0)
    return {"study_uid": exam.study_uid, "measurements": ms, "images": images,
            "template_path": template, "observer": user.display_name or user.username,
            "series_number": top + 1}
