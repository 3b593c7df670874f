"""Integration routes: the private import API (per-client HMAC auth), the admin status view
with the outbox resend button, and the PACS history (C-FIND) and retrieve-on-demand.

Handlers are thin: authenticate, call one function of adapters/ or models/, write JSON.
"""
from __future__ import annotations

import asyncio
import functools

from adapters.dicom_net import PacsError, PacsNode, find_patient_studies
from adapters.import_api import AuthError, verify
from models.integration import (outbox_resend, record_remote_studies, report_history,
                                retrieve_progress, status_summary)
from models.peers import delete_peer, list_peers, save_peer
from models.staff import Actor
from models.storage import valid_uid

from .. import integration as svc
from .base import UID, ApiError, BaseHandler



class IntegrationHandler(BaseHandler):
    def guard(self, permission: str) -> None:
        self.require(permission)

    async def db(self, fn, *args, **kwargs):
        return await self.in_db(fn, *args, **kwargs)

    def actor(self) -> Actor:
        """The signed-in admin, for audit records."""
        p = self.principal
        return Actor("staff", p.subject, self.client_ip(), p.staff_user_id)


class ImportApiHandler(IntegrationHandler):
    """POST /api/import/v1/{patient|order|report|image}: one signed JSON document."""

    async def prepare(self) -> None:
        # The import API has its own per-client authentication (HMAC of the body). A request
        # that carries a browser session or a staff token still goes through the staff
        # checks (CSRF, token validity) first.
        h = self.request.headers
        if h.get("Cookie") or h.get("Authorization"):
            await super().prepare()

    async def post(self, kind: str) -> None:
        found = svc.import_api_for(self.ctx)
        if found is None:
            raise ApiError(404, "the import API is off (set import_api_clients_file)")
        api, clients = found
        h = self.request.headers
        body = self.request.body or b""
        if len(body) > 64 << 20:
            raise ApiError(413, "document larger than 64 MiB")
        refused = await self.db(api.admit, self.client_ip(), kind)
        if refused is not None:                 # not in the peer table: 403, audited
            raise ApiError(refused[0], refused[1]["error"])
        try:
            client = verify(clients, h.get("X-CloudFilm-Client"), h.get("X-CloudFilm-Timestamp"),
                            h.get("X-CloudFilm-Signature"), self.request.method,
                            self.request.path, body, self.ctx.config.import_api_max_skew_s)
        except AuthError as exc:
            raise ApiError(401, str(exc)) from None
        status, answer = await self.db(api.handle, client, kind, body, self.client_ip())
        if svc.SERVICES.outbox:
            svc.SERVICES.outbox.poke()
        self.write_json(answer, status=status)


class IntegrationStatusHandler(IntegrationHandler):
    """GET /api/admin/integration: peers, last messages, queue depths, failures."""

    async def get(self) -> None:
        self.guard("integration.manage")
        summary = await self.db(status_summary)
        c = self.ctx.config
        summary["services"] = svc.SERVICES.describe()
        summary["peers"] = {
            "pacs": {"ae_title": c.pacs_ae_title, "host": c.pacs_host, "port": c.pacs_port,
                     "retrieve": c.pacs_retrieve} if c.pacs_ae_title else None,
            "hl7_receivers": svc.receivers(c),
            "dicom_allowed_aets": [a.strip() for a in c.dicom_allowed_aets.split(",")
                                   if a.strip()],
        }
        self.write_json(summary)


class OutboxResendHandler(IntegrationHandler):
    """POST /api/admin/integration/outbox/{id}/resend: the admin's resend button."""

    async def post(self, row_id: str) -> None:
        self.guard("integration.manage")
        row = await self.db(outbox_resend, int(row_id))
        if svc.SERVICES.outbox:
            svc.SERVICES.outbox.poke()
        self.write_json({"ok": True, "id": row.id, "status": row.status})


class PacsStudiesHandler(IntegrationHandler):
    """GET /api/pacs/patients/{patient_id}/studies: the patient's exams in the PACS; the
    ones not held here are listed as exams without images (source 'pacs')."""

    async def get(self, patient_id: str) -> None:
        self.guard("patient.history")
        node = PacsNode.from_config(self.ctx.config)
        if node is None:
            raise ApiError(404, "no PACS configured (pacs_ae_title, pacs_host)")
        if not 0 < len(patient_id) <= 64:
            raise ApiError(400, "patient ID must have 1 to 64 characters")
        loop = asyncio.get_running_loop()
        try:
            patient, studies = await loop.run_in_executor(
                self.ctx.db_executor, functools.partial(
                    find_patient_studies, node, patient_id, self.ctx.config.charset_fallback))
        except PacsError as exc:
            raise ApiError(502, str(exc)) from None
        out = await self.db(record_remote_studies, self.ctx.catalog, patient, studies)
        self.write_json({"patient_id": patient_id, "studies": out})


class PacsRetrieveHandler(IntegrationHandler):
    """POST starts fetching a study from the PACS; GET reports its progress (the first
    image can be shown as soon as instances_here > 0)."""

    async def post(self, study_uid: str) -> None:
        self.guard("exam.images")
        try:
            started = await self.db(svc.start_retrieve, self.ctx, study_uid)
        except ValueError as exc:
            raise ApiError(404, str(exc)) from None
        progress = await self.db(retrieve_progress, study_uid)
        self.write_json({**progress, "started": started["started"]}, status=202)

    async def get(self, study_uid: str) -> None:
        self.guard("exam.images")
        self.write_json(await self.db(retrieve_progress, study_uid))


class PeersHandler(IntegrationHandler):
    """The trusted integration peers (HL7, DICOM, import API): GET lists them, POST
    creates or updates one by name (audited peer.create / peer.update)."""

    async def get(self) -> None:
        self.guard("settings.manage")
        self.write_json({"ok": True, "peers": await self.db(list_peers)})

    async def post(self) -> None:
        self.guard("settings.manage")
        body = self.json_body(16384)
        peer, created = await self.db(save_peer, body, actor=self.actor(),
                                      auditor=self.ctx.auditor)
        self.write_json({"ok": True, "peer": peer, "created": created},
                        status=201 if created else 200)


class PeerHandler(IntegrationHandler):
    """DELETE /api/admin/peers/{name}: remove one integration peer (audited peer.delete)."""

    async def delete(self, name: str) -> None:
        self.guard("settings.manage")
        await self.db(delete_peer, name, actor=self.actor(), auditor=self.ctx.auditor)
        self.write_json({"ok": True, "deleted": name})


class ReportHistoryHandler(IntegrationHandler):
    """GET /api/studies/{uid}/report/versions: the earlier contents of the exam's report,
    kept when it was replaced (staff only)."""

    async def get(self, study_uid: str) -> None:
        self.guard("exam.report")
        if not valid_uid(study_uid):
            raise ApiError(400, "the study UID is not a valid DICOM UID")

        def load():
            exam = self.ctx.catalog.exam_by_uid(study_uid)
            self.check_exam(exam_id=exam.id, patient_db_id=exam.patient_id,
                            images_enabled=exam.images_enabled, need="report")
            return report_history(exam.id)
        self.write_json({"ok": True, "study_uid": study_uid, "versions": await self.db(load)})


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/api/import/v1/([a-z]{1,16})", ImportApiHandler, d),
        (r"/api/admin/peers", PeersHandler, d),
        (r"/api/admin/peers/([^/]{1,64})", PeerHandler, d),
        (rf"/api/studies/{UID}/report/versions", ReportHistoryHandler, d),
        (r"/api/admin/integration", IntegrationStatusHandler, d),
        (r"/api/admin/integration/outbox/([0-9]{1,12})/resend", OutboxResendHandler, d),
        (r"/api/pacs/patients/([^/]{1,64})/studies", PacsStudiesHandler, d),
        (rf"/api/pacs/studies/{UID}/retrieve", PacsRetrieveHandler, d),
    ]
