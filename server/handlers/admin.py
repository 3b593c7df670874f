"""Admin pages' APIs: the audit log (read, filter, CSV export, chain check) for the audit
admin, the download log, and the security policy for the security admin.

A security policy change that would lock everyone out (an empty admin allow-list, one that
excludes the admin making the change) is refused with the reason; every accepted change
is audited in the same transaction.
"""
from __future__ import annotations

import datetime as dt
import logging

from models import staff as svc
from models.audit import FIELDS, AuditFilter, audit_page, audit_rows

from .. import policy
from .base import ApiError
from .staff import StaffHandler, actor_of

log = logging.getLogger(__name__)

MAX_EXPORT_ROWS = 100_000


def _date(text: str | None, what: str, end: bool = False) -> dt.datetime | None:
    if not text:
        return None
    try:
        d = dt.datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise ApiError(400, f"{what}日期格式应为 YYYY-MM-DD / {what}: expected a date as "
                            "YYYY-MM-DD") from None
    return d + dt.timedelta(days=1) if end else d


class AuditQuery(StaffHandler):
    def query(self):
        action = self.str_arg("action", 64)
        actor = self.str_arg("actor", 64)
        obj = self.str_arg("object", 128)
        outcome = self.str_arg("outcome", 16)
        d_from = _date(self.str_arg("from", 10), "起始 / from")
        d_to = _date(self.str_arg("to", 10), "截止 / to", end=True)
        if d_from and d_to and d_from >= d_to:
            raise ApiError(400, "起始日期晚于截止日期 / the start date is after the end date")
        return AuditFilter(action=action, actor=actor, object_id=obj, outcome=outcome,
                           time_from=d_from, time_to=d_to)


class AuditLogHandler(AuditQuery):
    async def get(self) -> None:
        self.guard("audit.read")
        q = self.query()
        page = self.int_arg("page", 1, 1, 1_000_000)
        per_page = self.int_arg("per_page", 100, 1, 500)

        def load():
            total, rows = audit_page(q, page, per_page)
            return total, [{f: (getattr(r, f).isoformat() if f == "time" else getattr(r, f))
                            for f in FIELDS if f != "prev_hmac"} for r in rows]
        total, rows = await self.in_db(load)
        self.write_json({"ok": True, "total": total, "page": page, "per_page": per_page,
                         "events": rows})


class AuditCsvHandler(AuditQuery):
    async def get(self) -> None:
        self.guard("audit.read")
        q = self.query()
        ip, who = self.client_ip(), self.principal.subject

        def export():
            rows = audit_rows(q, MAX_EXPORT_ROWS)
            text = self.ctx.auditor.export_csv(rows)
            self.ctx.auditor.record("audit.export", actor_kind="staff", actor_id=who, ip=ip,
                                    detail=f"{len(rows)} records")
            return text
        text = await self.in_db(export)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="audit-{stamp}.csv"')
        self.set_header("Cache-Control", "no-store")
        # BOM so that Excel opens the Chinese text as UTF-8
        self.finish("\ufeff" + text)


class AuditVerifyHandler(StaffHandler):
    async def get(self) -> None:
        self.guard("audit.read")
        r = await self.in_db(self.ctx.auditor.verify)
        self.write_json({"ok": True, "intact": r.ok, "checked": r.checked,
                         "problem": r.problem, "record_id": r.record_id})


class DownloadLogHandler(StaffHandler):
    async def get(self) -> None:
        self.guard("download.read")
        study_uid = self.str_arg("study_uid", 64)
        page = self.int_arg("page", 1, 1, 1_000_000)
        per_page = self.int_arg("per_page", 50, 1, 500)
        out = await self.in_db(svc.download_log, study_uid=study_uid, page=page,
                               per_page=per_page)
        self.write_json({"ok": True, **out})


class SecurityPolicyHandler(StaffHandler):
    async def get(self) -> None:
        self.guard("security.manage")

        def load():
            return (svc.security_policy(self.ctx.config.as_dict()),
                    svc.setting_rows(svc.SECURITY_PREFIX))
        pol, rows = await self.in_db(load)
        self.write_json({"ok": True, "policy": pol, "stored": rows,
                         "limits": {k: {"min": lo, "max": hi, "label": label}
                                    for k, (lo, hi, label) in svc.SECURITY_LIMITS.items()},
                         "roles": [{"role": r, "name": n} for r, n in policy.ROLES.items()],
                         "client_ip": self.client_ip()})

    async def put(self) -> None:
        self.guard("security.manage")
        body = self.json_body(16384)
        changes = body.get("policy")

        def save():
            current = svc.security_policy(self.ctx.config.as_dict())
            clean = svc.validate_security(changes, current, client_ip=self.client_ip(),
                                          known_roles=policy.ROLES)
            changed = svc.store_settings({svc.SECURITY_PREFIX + k: v for k, v in clean.items()},
                                         actor=actor_of(self), auditor=self.ctx.auditor,
                                         area="security")
            return changed, svc.security_policy(self.ctx.config.as_dict())
        changed, pol = await self.in_db(save)
        self.write_json({"ok": True, "policy": pol,
                         "changed": [k[len(svc.SECURITY_PREFIX):] for k in changed]})


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/api/admin/audit", AuditLogHandler, d),
        (r"/api/admin/audit\.csv", AuditCsvHandler, d),
        (r"/api/admin/audit/verify", AuditVerifyHandler, d),
        (r"/api/admin/downloads", DownloadLogHandler, d),
        (r"/api/admin/security", SecurityPolicyHandler, d),
    ]
