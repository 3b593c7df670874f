"""Admin pages' APIs: the audit log (read, filter, CSV export, chain check) for the audit
admin, the download log, and the security policy for the security admin.

A security policy change that would lock everyone out (an empty admin allow-list, one that
excludes the admin making the change) is refused with the reason; every accepted change
is audited in the same transaction.
"""
from __future__ import annotations

import datetime as dt
import logging

from models.audit import FIELDS, AuditFilter, audit_page, audit_rows

from .. import policy, settings
from .base import ApiError
from .download import DownloadLogHandler    # the one download log, also at /api/downloads
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


class SecurityPolicyHandler(StaffHandler):
    """The security admin's run-time settings (group "security" of server/config.py)."""
    GROUPS = frozenset({settings.SECURITY})

    def answer(self, changed: list[str] | None = None) -> dict:
        rows = settings.describe(self.ctx, self.GROUPS)[0]["settings"]
        out = {"ok": True, "policy": settings.policy(self.ctx),
               "stored": settings.stored_rows(settings.SECURITY),
               "limits": {s["name"]: {"min": s["minimum"], "max": s["maximum"],
                                      "label": s["label"],
                                      "level3": s["name"] in settings.LEVEL3_LIMITS}
                          for s in rows if s["type"] == "int"},
               # 等保三级: these roles always need TOTP (the page cannot untick them)
               "totp_floor": list(settings.LEVEL3_TOTP_ROLES),
               "roles": [{"role": r, "name": n} for r, n in policy.ROLES.items()],
               "client_ip": self.client_ip()}
        if changed is not None:
            out["changed"] = changed
        return out

    async def get(self) -> None:
        self.guard("security.manage")
        self.write_json(await self.in_db(self.answer))

    async def put(self) -> None:
        self.guard("security.manage")
        changes = self.json_body(16384).get("policy")

        def save():
            return self.answer(settings.change(self.ctx, changes, groups=self.GROUPS,
                                               actor=actor_of(self)))
        self.write_json(await self.in_db(save))


def routes(ctx) -> list:
    d = {"ctx": ctx}
    return [
        (r"/api/admin/audit", AuditLogHandler, d),
        (r"/api/admin/audit\.csv", AuditCsvHandler, d),
        (r"/api/admin/audit/verify", AuditVerifyHandler, d),
        (r"/api/admin/downloads", DownloadLogHandler, d),
        (r"/api/admin/security", SecurityPolicyHandler, d),
    ]
