"""Send to workstation: a doctor sends an exam (or one series) to a DICOM node configured in
dicom_peers. The request queues an outbox job (models/sending.py); the outbox worker
delivers it by C-STORE (adapters/dicom_net.py send_instances) with retries; the page polls
the user's jobs for progress. Audited as exam.send (destination and counts, no patient data).
"""
from __future__ import annotations

from adapters.dicom_qr import parse_peers
from adapters.outbox import make_dicom_sender, register_sender
from models import sending
from models.storage import valid_uid

from .base import UID, ApiError, BaseHandler

PERMISSION = "exam.send"


def destinations(ctx) -> dict:
    try:
        return parse_peers(ctx.config.dicom_peers)
    except ValueError:
        return {}


def _poke_outbox() -> None:
    from .. import integration
    if integration.SERVICES.outbox is not None:
        integration.SERVICES.outbox.poke()


class DestinationsHandler(BaseHandler):
    """The DICOM destinations a doctor may send exams to (AE titles only)."""

    async def get(self) -> None:
        self.require(PERMISSION)
        names = sorted(destinations(self.ctx))
        self.write_json({"ok": True, "destinations": [{"name": n} for n in names]})


class SendHandler(BaseHandler):
    """Send an exam, or one of its series, to a configured DICOM destination."""

    async def post(self, study_uid: str) -> None:
        self.require(PERMISSION)
        body = self.json_body(4096)
        dest, series = body.get("destination"), body.get("series_uid") or None
        if not isinstance(dest, str) or dest not in destinations(self.ctx):
            raise ApiError(400, "未知的发送目的地 / unknown destination")
        if series is not None and (not isinstance(series, str) or not valid_uid(series)):
            raise ApiError(400, "series_uid 不是有效的 DICOM UID / series_uid is not a "
                                "valid DICOM UID")
        job = await self.in_db(self.queue, study_uid, dest, series)
        _poke_outbox()
        self.write_json({"ok": True, "job": job}, status=202)

    def queue(self, study_uid: str, dest: str, series: str | None) -> dict:
        exam = self.ctx.catalog.exam_by_uid(study_uid)
        p = self.check_exam(exam_id=exam.id, patient_db_id=exam.patient_id,
                            images_enabled=exam.images_enabled, need="images")
        job = sending.queue_send(user_id=p.staff_user_id, exam_id=exam.id,
                                 study_uid=study_uid, destination=dest, series_uid=series)
        self.ctx.auditor.record(
            "exam.send", actor_kind="staff", actor_id=p.subject, ip=self.client_ip(),
            object_type="exam", object_id=str(exam.id),
            detail=f"destination={dest} scope={'series' if series else 'exam'} "
                   f"instances={job['total']} job={job['id']}")
        return job


class SendsHandler(BaseHandler):
    """The signed-in user's send jobs, newest first, with progress."""

    async def get(self) -> None:
        p = self.require(PERMISSION)
        jobs = await self.in_db(sending.send_jobs, p.staff_user_id)
        self.write_json({"ok": True, "jobs": jobs})


def startup(ctx) -> None:
    """Register the 'dicom_send' outbox channel (the lease holder's worker delivers it)."""
    register_sender(sending.CHANNEL, make_dicom_sender(
        ctx.catalog.storage.read, lambda: destinations(ctx),
        lambda: ctx.config.dicom_ae_title or "CLOUDFILM"))


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/api/staff/dicom-destinations", DestinationsHandler, d),
        (rf"/api/staff/studies/{UID}/send", SendHandler, d),
        (r"/api/staff/sends", SendsHandler, d),
    ]
