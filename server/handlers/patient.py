"""Identity verification and the patient portal.

    GET  /api/verify/methods               anyone: enabled methods and combinations
    POST /api/verify/sms {phone}           anyone: send an SMS code (same answer whether or not
                                           the number is on record)
    POST /api/verify {phone, sms_code, id_number, accession, exam_ref}
                                           anyone: verify → patient session (verified now);
                                           a patient session verifies again before downloads
    GET  /api/patient/me                   patient: masked personal data + exams, newest first
    GET  /api/patient/shares               patient: own shares with open counts
    POST /api/patient/shares               patient: create a share of an own exam
    POST /api/patient/shares/{id}/revoke   patient: revoke an own share
    GET  /api/patient/downloads            patient: own download log
    POST /api/patient/logout
    GET  /api/admin/verification           staff verification.manage: current settings
    PUT  /api/admin/verification           staff verification.manage: switch methods and
                                           combinations (applies to the next request)
    GET  /portal                           the patient portal page
"""
from __future__ import annotations

import logging

from models import shares as svc
from models.catalog import download_log, find_patient_exam, mask_phone
from models.storage import valid_uid

from .. import policy, signin
from .auth import adopt_session, clear_session_cookie, client, write_keep_cookie
from .base import ApiError, BaseHandler
from .pages import PageHandler
from .shares import created_json, creator_may_share, share_options

log = logging.getLogger(__name__)


def sms_gateway(ctx):
    gw = getattr(ctx, "sms_gateway", None)
    if gw is None:
        from adapters.sms import make_gateway
        c = ctx.config
        gw = make_gateway(c.sms_gateway, c.sms_http_url, c.sms_http_token_file,
                          c.sms_http_timeout_s)
        ctx.sms_gateway = gw
    return gw


class VerifyMethodsHandler(BaseHandler):
    async def get(self) -> None:
        out = await self.in_db(svc.public_verification_config)
        out["ok"] = True
        self.write_json(out)


class SmsSendHandler(BaseHandler):
    session_free = True

    async def post(self) -> None:
        body = self.json_body(2048)
        cfg = await self.in_db(svc.verification_config)
        if not cfg["methods"].get("sms"):
            raise ApiError(400, "短信验证已停用 / SMS verification is switched off")
        c = self.ctx.config
        req = await self.in_db(svc.request_sms_code, str(body.get("phone") or ""),
                               key=self.ctx.secret_key, auditor=self.ctx.auditor,
                               ip=self.client_ip(), per_phone_day=c.sms_per_phone_day,
                               per_ip_hour=c.sms_per_ip_hour)
        if req.phone:
            from adapters.sms import SmsError
            text = c.sms_template.replace("{code}", req.code)
            try:
                await self.in_db(sms_gateway(self.ctx).send, req.phone, text)
            except SmsError as exc:
                log.error("verification SMS not delivered: %s", exc)
                raise ApiError(503, "短信发送失败，请稍后再试或改用其他验证方式 / the SMS could "
                                    "not be sent; try again later or use another method") \
                    from None
        self.write_json({"ok": True, "retry_after_s": req.retry_after_s,
                         "message": "如该手机号已在本院登记，验证码已发送，5分钟内有效 / if this "
                                    "number is on record, a code was sent (valid 5 minutes)"})


def parse_exam_ref(ref) -> tuple[str, str] | None:
    if not ref:
        return None
    kind, _, value = str(ref).partition(":")
    if kind not in ("accession", "study_uid") or not value or len(value) > 64:
        raise ApiError(400, "检查信息无效 / exam reference is not valid")
    return kind, value


class VerifyHandler(BaseHandler):
    session_free = True

    async def post(self) -> None:
        body = self.json_body(4096)
        ref = parse_exam_ref(body.get("exam_ref"))
        old = self.held_creds("patient")     # the browser's share sessions stay usable
        r = await self.in_db(signin.verify_patient, self.ctx, body, exam_ref=ref, old=old,
                             **client(self))
        adopt_session(self, r.session, ended=old, drop=old)
        self.write_json({"ok": True, "csrf_token": r.session.session.csrf_token,
                         "methods": r.methods, "open_study_uid": r.open_study_uid})


class PatientBase(BaseHandler):
    def patient(self):
        p = self.held_of("patient")
        if p is None:
            self.require_principal()           # 401 without any session
            raise ApiError(403, "请先验证身份 / verify your identity first")
        self.principal = p
        return p

    async def revoke_own(self, revoke, object_id: int) -> None:
        """Revoke one of the patient's own shares or QR codes (another's answers 404); the
        sessions opened with it end at once in this process (principal cache cleared)."""
        p = self.patient()
        await self.in_db(revoke, object_id, auditor=self.ctx.auditor, actor_kind="patient",
                         actor_id=p.subject, ip=self.client_ip(), patient_db_id=p.patient_db_id)
        self.ctx.principals.clear()
        self.write_json({"ok": True})


class PatientMeHandler(PatientBase):
    async def get(self) -> None:
        p = self.patient()
        out = await self.in_db(svc.patient_overview, p.patient_db_id, mask_phone=mask_phone,
                               scope=policy.exam_scope(p))    # the one list policy
        out.update(ok=True, csrf_token=p.csrf_token, freshly_verified=p.freshly_verified())
        self.write_json(out)


class PatientSharesHandler(PatientBase):
    async def get(self) -> None:
        p = self.patient()
        shares = await self.in_db(svc.list_shares, patient_db_id=p.patient_db_id)
        self.write_json({"ok": True, "shares": shares})

    async def post(self) -> None:
        p = self.patient()
        body = self.json_body(8192)
        study_uid = str(body.get("study_uid") or "")
        if not valid_uid(study_uid):
            raise ApiError(400, "study_uid 不是有效的 DICOM UID / study_uid is not a valid UID")
        opts = share_options(self.ctx, body)

        def make():
            exam = find_patient_exam(study_uid, p.patient_db_id)
            if exam is None:
                raise ApiError(404, "没有找到该检查 / no such exam")
            creator_may_share(p, exam, opts)
            return svc.create_share(exam, key=self.ctx.secret_key, auditor=self.ctx.auditor,
                                    created_by_kind="patient", created_by=p.subject,
                                    ip=self.client_ip(), **opts)
        new = await self.in_db(make)
        self.write_json(created_json(self.ctx, new), status=201)


class PatientShareRevokeHandler(PatientBase):
    async def post(self, share_id: str) -> None:
        await self.revoke_own(svc.revoke_share, int(share_id))


class PatientDownloadsHandler(PatientBase):
    async def get(self) -> None:
        p = self.patient()
        log = await self.in_db(download_log, patient_db_id=p.patient_db_id, limit=200)
        rows = log["downloads"]
        for r in rows:
            r.pop("actor_id", None)
        self.write_json({"ok": True, "downloads": rows})


class PatientLogoutHandler(BaseHandler):
    """Sign out on a phone that may be shared: every patient and share session this browser
    holds ends (a staff session of the same browser is left alone)."""

    async def post(self) -> None:
        creds = tuple(cred for cred, p in self.held if p.kind != "staff")
        await self.in_db(signin.sign_out, self.ctx, creds)
        for cred in creds:
            self.ctx.principals.forget(cred)
        if self.principal is None or self.principal.kind != "staff":
            clear_session_cookie(self, keep_others=False)
        else:
            write_keep_cookie(self, [])
        self.write_json({"ok": True})


class VerificationSettingsHandler(BaseHandler):
    async def get(self) -> None:
        self.require("verification.manage")
        cfg = await self.in_db(svc.verification_config)
        self.write_json({"ok": True, **cfg, "known_methods": list(svc.METHODS),
                         "names": svc.METHOD_NAMES})

    async def put(self) -> None:
        p = self.require("verification.manage")
        body = self.json_body(8192)
        cfg = await self.in_db(svc.set_verification_config, body, auditor=self.ctx.auditor,
                               actor_id=p.subject, ip=self.client_ip())
        self.write_json({"ok": True, **cfg})


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/api/verify/methods", VerifyMethodsHandler, d),
        (r"/api/verify/sms", SmsSendHandler, d),
        (r"/api/verify", VerifyHandler, d),
        (r"/api/patient/me", PatientMeHandler, d),
        (r"/api/patient/shares", PatientSharesHandler, d),
        (r"/api/patient/shares/([0-9]{1,12})/revoke", PatientShareRevokeHandler, d),
        (r"/api/patient/downloads", PatientDownloadsHandler, d),
        (r"/api/patient/logout", PatientLogoutHandler, d),
        (r"/api/admin/verification", VerificationSettingsHandler, d),
        (r"/portal", PageHandler, {"ctx": ctx, "page": "portal/index.html"}),
    ]
