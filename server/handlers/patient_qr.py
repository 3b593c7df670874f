"""Patient-level QR codes (R1.4): one QR code that leads to all of a patient's exams, current
and later ones, after identity verification. Opens are counted, the QR expires and can be
revoked (ending the sessions opened with it), like an exam share.

    POST /api/patients/{patient_db_id}/qr  staff share.manage: create {max_opens, expires}
                                           → {url, qr_png, qr_svg, share}
    GET  /api/patients/{patient_db_id}/qr  staff share.manage: the patient's QR codes
    GET  /api/patients/qr?study_uid=       staff share.manage: the same for an exam's patient
                                           (the front-desk page knows the exam)
    POST /api/patients/qr/{id}/revoke      staff share.manage
    GET  /api/patient/qr                   patient: own QR codes (with their links)
    POST /api/patient/qr                   patient: create an own QR code
    POST /api/patient/qr/{id}/revoke       patient: revoke an own QR code
    POST /api/p/status {token}             anyone: state of a QR before verification
    POST /api/p/open {token, phone, sms_code, id_number, accession}
                                           anyone: verify as the QR's patient → one open,
                                           patient session (the portal, 我的检查)
    GET  /p/{token}                        the QR's page: hospital, verification form
"""
from __future__ import annotations

import datetime as dt
import logging

from adapters.qr import png_data_url, qr_png, qr_svg
from models import shares as svc
from models.storage import valid_uid

from .. import signin
from .auth import adopt_session, client
from .base import ApiError, BaseHandler
from .patient import PatientBase

log = logging.getLogger(__name__)

TOKEN = r"([A-Za-z0-9_\-]{16,64})"
FACTORS = ("phone", "sms_code", "id_number", "accession")


def qr_url(ctx, token: str) -> str:
    return f"{ctx.config.base_url}/p/{token}"


def qr_options(ctx, body: dict) -> dict:
    """max_opens and expires of a request body, validated (nothing is stored before)."""
    cfg = ctx.config
    max_opens = body.get("max_opens", cfg.share_default_max_opens)
    if not isinstance(max_opens, int) or isinstance(max_opens, bool):
        raise ApiError(400, "可打开次数应为整数 / max_opens must be a whole number")
    expires = body.get("expires", f"{cfg.share_default_days}d")
    if not isinstance(expires, (str, int)) or isinstance(expires, bool):
        raise ApiError(400, "有效期格式不正确（例如 7d、12h、30m） / expiry must look like 7d, "
                            "12h or 30m")
    return dict(max_opens=max_opens, expires_in=svc.parse_duration(str(expires)),
                max_expiry=dt.timedelta(days=cfg.share_max_days))


def with_url(ctx, d: dict) -> dict:
    """A QR's JSON with its link (while it can be opened) instead of the bare token."""
    token = d.pop("token", None)
    d["url"] = qr_url(ctx, token) if token else None
    return d


def created_json(ctx, new: svc.NewPatientQr) -> dict:
    url = qr_url(ctx, new.token)
    return {"ok": True, "url": url, "qr_png": png_data_url(qr_png(url)), "qr_svg": qr_svg(url),
            "share": with_url(ctx, svc.patient_qr_json(new.qr, ctx.secret_key))}


# staff ---------------------------------------------------------------------------------------
class StaffPatientQrHandler(BaseHandler):
    """Staff (share.manage): create a patient's QR code (POST) or list them (GET)."""

    async def post(self, patient_db_id: str) -> None:
        p = self.require("share.manage")
        body = self.json_body(4096)
        opts = qr_options(self.ctx, body)
        new = await self.in_db(svc.create_patient_qr, int(patient_db_id),
                               key=self.ctx.secret_key, auditor=self.ctx.auditor,
                               created_by_kind="staff", created_by=p.subject,
                               ip=self.client_ip(), **opts)
        self.write_json(created_json(self.ctx, new), status=201)

    async def get(self, patient_db_id: str) -> None:
        self.require("share.manage")

        def load():
            svc._live_patient(int(patient_db_id))          # 404 for an unknown patient
            return svc.list_patient_qrs(int(patient_db_id), key=self.ctx.secret_key)
        rows = await self.in_db(load)
        self.write_json({"ok": True, "patient_db_id": int(patient_db_id),
                         "shares": [with_url(self.ctx, r) for r in rows]})


class StaffPatientQrByStudyHandler(BaseHandler):
    """Staff (share.manage): the QR codes of an exam's patient, and that patient's id."""

    async def get(self) -> None:
        self.require("share.manage")
        study_uid = self.str_arg("study_uid", 64)
        if not study_uid or not valid_uid(study_uid):
            raise ApiError(400, "需要有效的 study_uid / query parameter study_uid is required")

        def load():
            exam = self.ctx.catalog.exam_by_uid(study_uid)
            pid = svc._live_patient(exam.patient_id).id
            return pid, svc.list_patient_qrs(pid, key=self.ctx.secret_key)
        pid, rows = await self.in_db(load)
        self.write_json({"ok": True, "patient_db_id": pid,
                         "shares": [with_url(self.ctx, r) for r in rows]})


class StaffPatientQrRevokeHandler(BaseHandler):
    """Staff (share.manage): revoke a patient QR code; the sessions opened with it end."""

    async def post(self, qr_id: str) -> None:
        p = self.require("share.manage")
        await self.in_db(svc.revoke_patient_qr, int(qr_id), auditor=self.ctx.auditor,
                         actor_kind="staff", actor_id=p.subject, ip=self.client_ip())
        self.ctx.principals.clear()
        self.write_json({"ok": True})


# the patient in the portal ---------------------------------------------------------------------
class OwnPatientQrHandler(PatientBase):
    """Patient: own patient QR codes (GET) or create one (POST {max_opens, expires})."""

    async def get(self) -> None:
        p = self.patient()
        rows = await self.in_db(svc.list_patient_qrs, p.patient_db_id, key=self.ctx.secret_key)
        self.write_json({"ok": True, "shares": [with_url(self.ctx, r) for r in rows]})

    async def post(self) -> None:
        p = self.patient()
        body = self.json_body(4096)
        opts = qr_options(self.ctx, body)
        new = await self.in_db(svc.create_patient_qr, p.patient_db_id,
                               key=self.ctx.secret_key, auditor=self.ctx.auditor,
                               created_by_kind="patient", created_by=p.subject,
                               ip=self.client_ip(), **opts)
        self.write_json(created_json(self.ctx, new), status=201)


class OwnPatientQrRevokeHandler(PatientBase):
    """Patient: revoke an own patient QR code (another patient's answers 404)."""

    async def post(self, qr_id: str) -> None:
        await self.revoke_own(svc.revoke_patient_qr, int(qr_id))


# the QR's visitor ------------------------------------------------------------------------------
class QrVisitorBase(BaseHandler):
    session_free = True

    def holder_of(self, qr) -> object | None:
        """A patient session this browser holds for the QR's patient: reloading, going back
        or scanning the QR again costs no open."""
        if qr is None:
            return None
        try:
            owner = svc._live_patient(qr.patient_id).id
        except svc.AccessRefused:
            return None
        for _, p in self.held:
            if p.kind == "patient" and p.patient_db_id == owner:
                return p
        return None


class PatientQrStatusHandler(QrVisitorBase):
    """Anyone: the state of a patient QR before verification (nothing about the patient)."""

    async def post(self) -> None:
        body = self.json_body(4096)
        token = str(body.get("token") or "")

        def load():
            out = svc.patient_qr_status(token)
            held = self.holder_of(svc.find_patient_qr(token))
            return out, held
        out, held = await self.in_db(load)
        out.update(ok=True, session=held is not None,
                   csrf_token=held.csrf_token if held is not None else None)
        self.write_json(out)


class PatientQrOpenHandler(QrVisitorBase):
    """Anyone: verify identity as the QR's patient; one open, then the portal."""

    async def post(self) -> None:
        body = self.json_body(4096)
        token = str(body.get("token") or "")
        factors = {k: body.get(k) for k in FACTORS
                   if isinstance(body.get(k), (str, int)) and not isinstance(body.get(k), bool)}
        held = await self.in_db(lambda: self.holder_of(svc.find_patient_qr(token)))
        if held is not None:
            self.write_json({"ok": True, "reused": True, "csrf_token": held.csrf_token,
                             "next": "/portal"})
            return
        old = self.held_creds("patient")     # the browser's share sessions stay usable
        opened = await self.in_db(signin.open_patient_qr, self.ctx, token, factors, old=old,
                                  **client(self))
        adopt_session(self, opened.session, ended=old, drop=old)
        self.write_json({"ok": True, "reused": False,
                         "csrf_token": opened.session.session.csrf_token,
                         "methods": opened.methods, "opens": opened.qr.opens,
                         "max_opens": opened.qr.max_opens, "next": "/portal"})


class PatientQrPage(BaseHandler):
    """The page a patient QR leads to: the hospital, "验证身份后查看您的全部检查" and the
    verification form (the portal page in its QR mode); a QR that cannot be opened gets the
    same page with its status, which then shows what happened and the next steps."""

    async def get(self, token: str) -> None:
        def load():
            q = svc.find_patient_qr(token)
            if q is None:
                return 404
            if QrVisitorBase.holder_of(self, q) is not None:
                return 200
            state = svc.share_state(q)
            return 200 if state == "open" else 429 if state == "locked" else 410
        status = await self.in_db(load)
        from .pages import page_bytes
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(page_bytes("portal/index.html"))


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/api/patients/([0-9]{1,12})/qr", StaffPatientQrHandler, d),
        (r"/api/patients/qr", StaffPatientQrByStudyHandler, d),
        (r"/api/patients/qr/([0-9]{1,12})/revoke", StaffPatientQrRevokeHandler, d),
        (r"/api/patient/qr", OwnPatientQrHandler, d),
        (r"/api/patient/qr/([0-9]{1,12})/revoke", OwnPatientQrRevokeHandler, d),
        (r"/api/p/status", PatientQrStatusHandler, d),
        (r"/api/p/open", PatientQrOpenHandler, d),
        (rf"/p/{TOKEN}", PatientQrPage, d),
    ]
