"""Saved measurements (issue 18): a doctor's measurements on the images of an exam, kept per
exam and user (models/measurements.py), exported as a DICOM Structured Report.

    GET    /api/measurements?study_uid=UID      the caller's measurements of the exam, by id
    POST   /api/measurements                    save one (201)
    PUT    /api/measurements/{id}               change one of one's own
    DELETE /api/measurements/{id}               delete one of one's own
    POST   /api/measurements/sr?study_uid=UID   export them as a new SR series of the exam
                                                (201; adapters/measurement_sr.py; audited)

Doctors (exam.measure) who may view the exam's images (policy.check_exam, need="images");
patients, share visitors and the other roles get 403. Nothing of the patient is logged.
"""
from __future__ import annotations

from adapters.measurement_sr import export_sr
from models import measurements as svc
from models.storage import valid_uid

from .base import ApiError, BaseHandler

PERMISSION = "exam.measure"
BODY_MAX = 64 * 1024


class MeasurementAccess(BaseHandler):
    def staff_user(self) -> int:
        p = self.require(PERMISSION)
        if p.staff_user_id is None:
            raise ApiError(403, "没有权限执行此操作 / your role does not allow this")
        return p.staff_user_id

    def study_uid_arg(self, study_uid: str | None) -> str:
        if not study_uid or not valid_uid(study_uid):
            raise ApiError(400, "需要有效的 study_uid / study_uid must be a valid DICOM UID")
        return study_uid

    def viewable(self, exam):
        """The exam, if this doctor may view its images (runs in the db pool)."""
        self.check_exam(exam_id=exam.id, patient_db_id=exam.patient_id,
                        images_enabled=exam.images_enabled, need="images")
        return exam

    def exam_by_uid(self, study_uid: str):
        return self.viewable(self.ctx.catalog.exam_by_uid(study_uid))

    def exam_of_measurement(self, measurement_id: int):
        return self.viewable(self.ctx.catalog.exam_by_id(
            svc.measurement_exam_id(measurement_id)))


class MeasurementBody(MeasurementAccess):
    def measurement_body(self) -> dict:
        body = self.json_body(BODY_MAX)
        return {"study_uid": body.get("study_uid"), "series_uid": body.get("series_uid"),
                "sop_uid": body.get("sop_uid"), "frame": body.get("frame", 1),
                "kind": body.get("kind"), "points": body.get("points"),
                "text": body.get("text", ""), "values": body.get("values")}


class MeasurementsHandler(MeasurementBody):
    """The caller's measurements of an exam (GET ?study_uid=) or save one (POST, 201)."""

    async def get(self) -> None:
        user_id = self.staff_user()
        study_uid = self.study_uid_arg(self.str_arg("study_uid", 64))

        def load():
            return svc.list_measurements(self.exam_by_uid(study_uid), user_id)
        self.write_json({"ok": True, "measurements": await self.in_db(load)})

    async def post(self) -> None:
        user_id = self.staff_user()
        m = self.measurement_body()
        study_uid = self.study_uid_arg(m["study_uid"] if isinstance(m["study_uid"], str)
                                       else None)

        def save():
            return svc.create_measurement(self.exam_by_uid(study_uid), user_id, m)
        self.write_json({"ok": True, "measurement": await self.in_db(save)}, status=201)


class MeasurementHandler(MeasurementBody):
    """Change (PUT) or delete (DELETE) one of the caller's own measurements."""

    async def put(self, measurement_id: str) -> None:
        user_id = self.staff_user()
        m = self.measurement_body()

        def save():
            exam = self.exam_of_measurement(int(measurement_id))
            return svc.update_measurement(exam, int(measurement_id), user_id, m)
        self.write_json({"ok": True, "measurement": await self.in_db(save)})

    async def delete(self, measurement_id: str) -> None:
        user_id = self.staff_user()

        def remove():
            self.exam_of_measurement(int(measurement_id))
            svc.delete_measurement(int(measurement_id), user_id)
        await self.in_db(remove)
        self.write_json({"ok": True})


class MeasurementSrHandler(MeasurementAccess):
    """Export the caller's measurements of an exam as a DICOM Structured Report (TID 1500),
    stored with the exam as a new series (201)."""

    async def post(self) -> None:
        user_id = self.staff_user()
        study_uid = self.study_uid_arg(self.str_arg("study_uid", 64))
        p = self.principal
        ip = self.client_ip()

        def export():
            exam = self.exam_by_uid(study_uid)
            out = export_sr(self.ctx.catalog, exam, user_id, origin=f"measurements:{p.subject}")
            self.ctx.auditor.record(
                "exam.measurements_sr", actor_kind="staff", actor_id=p.subject, ip=ip,
                object_type="exam", object_id=str(exam.id),
                detail=f"series={out['series_uid']} measurements={out['count']}")
            return out
        out = await self.in_db(export)
        self.write_json({"ok": True, **out}, status=201)


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/api/measurements", MeasurementsHandler, d),
        (r"/api/measurements/sr", MeasurementSrHandler, d),
        (r"/api/measurements/([0-9]{1,12})", MeasurementHandler, d),
    ]
