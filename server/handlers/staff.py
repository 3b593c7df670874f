"""Staff workspace: the staff pages (login, front desk, doctor, admin pages) and their JSON
APIs: accounts and roles, API tokens, patient search and history for doctors, audited
unmasking, run-time settings that override conf defaults, and system health.

Pages are static files of viewer_static/staff/; the server decides who may load which page
(anonymous visitors are sent to /login, other roles get 403) and every API re-checks the
permission, so hiding a link is never the only protection.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from urllib.parse import quote

import tornado.ioloop

from models import db as dbmod
from models import staff as svc
from models.storage import valid_uid
from models.versions import versions_of_study

from .. import policy, settings
from ..config import ROOT
from .base import ApiError, BaseHandler

log = logging.getLogger(__name__)

STATIC = ROOT / "viewer_static" / "staff"
STARTED = time.time()
USERNAME = r"([A-Za-z0-9_.-]{1,64})"
PATIENT_ID = r"([^/]{1,64})"

# (page, path, zh title, en title, permission that opens it)
PAGES = (
    ("frontdesk", "/staff/frontdesk", "前台", "Front desk", "exam.switch_images"),
    ("doctor", "/staff/doctor", "医生工作台", "Doctor", "patient.history"),
    ("admin", "/staff/admin", "系统管理", "System admin", "user.manage"),
    ("security", "/staff/security", "安全管理", "Security admin", "security.manage"),
    ("audit", "/staff/audit", "安全审计", "Audit", "audit.read"),
)


def pages_for(principal) -> list[dict]:
    if principal is None or principal.kind != "staff":
        return []
    return [{"page": k, "path": path, "title": zh, "title_en": en}
            for k, path, zh, en, perm in PAGES if principal.can(perm)]


def actor_of(handler: BaseHandler) -> svc.Actor:
    p = handler.principal
    return svc.Actor("staff", p.subject, handler.client_ip(), p.staff_user_id)


class StaffHandler(BaseHandler):
    def guard(self, permission: str):
        """Route-level permission (BaseHandler.require also applies the admin allow-list to
        admin-only permissions)."""
        return self.require(permission)

    def policy_now(self) -> dict:
        return settings.policy(self.ctx)


# pages --------------------------------------------------------------------------------------
class StaffPageHandler(StaffHandler):
    """One HTML file of viewer_static/staff/, for the roles holding `permission`."""

    def initialize(self, ctx, page: str, permission: str | None = None) -> None:
        super().initialize(ctx)
        self.page = page
        self.permission = permission

    def html(self, name: str, status: int = 200) -> None:
        from .pages import page_bytes
        data = page_bytes(f"staff/{name}", debug=bool(self.settings.get("debug")))
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(data)

    async def get(self) -> None:
        if self.permission is None:
            return self.html(self.page)
        p = self.principal
        here = self.request.uri
        if p is None or p.kind != "staff":
            return self.redirect("/login?next=" + quote(here, safe=""))
        if p.must_change_password and not p.via_token:
            return self.redirect("/login?change=1&next=" + quote(here, safe=""))
        try:
            self.guard(self.permission)
        except (policy.AccessError, ApiError):
            return self.html("forbidden.html", 403)
        self.html(self.page)


class StaffHomeHandler(StaffHandler):
    """/staff: the first page of the signed-in user's roles."""

    async def get(self) -> None:
        p = self.principal
        if p is None or p.kind != "staff":
            return self.redirect("/login?next=%2Fstaff")
        pages = pages_for(p)
        if not pages:
            raise ApiError(403, "没有可用的页面 / no page for your role")
        self.redirect(pages[0]["path"])


# who am I, which pages -----------------------------------------------------------------------
class NavHandler(StaffHandler):
    async def get(self) -> None:
        p = self.principal
        if p is None or p.kind != "staff":
            raise policy.Unauthenticated("请先登录 / please sign in")
        pol = self.policy_now()
        self.write_json({"ok": True, "username": p.subject,
                         "roles": sorted(p.roles), "role_names": [policy.ROLES[r] for r in
                                                                  sorted(p.roles)
                                                                  if r in policy.ROLES],
                         "must_change_password": p.must_change_password,
                         "csrf_token": p.csrf_token, "pages": pages_for(p),
                         "password_rules": {"min_length": pol["password_min_length"],
                                            "min_classes": pol["password_min_classes"]}})


# accounts -----------------------------------------------------------------------------------
class UsersHandler(StaffHandler):
    async def get(self) -> None:
        self.guard("user.manage")
        users = await self.in_db(svc.list_users)
        self.write_json({"ok": True, "users": users,
                         "roles": [{"role": r, "name": n} for r, n in policy.ROLES.items()],
                         "admin_roles": sorted(policy.ADMIN_ROLES)})

    async def post(self) -> None:
        self.guard("user.manage")
        body = self.json_body(8192)
        pol = self.policy_now()
        user, generated = await self.in_db(
            svc.create_staff, body.get("username"), body.get("roles"),
            display_name=body.get("display_name"), password=body.get("password"),
            actor=actor_of(self), auditor=self.ctx.auditor, known_roles=policy.ROLES,
            admin_roles=policy.ADMIN_ROLES, min_length=pol["password_min_length"],
            min_classes=pol["password_min_classes"],
            service_account=body.get("service_account", False))
        out = {"ok": True, "user": user}
        if generated:
            out["temporary_password"] = generated
        self.write_json(out, status=201)


class UserHandler(StaffHandler):
    async def get(self, username: str) -> None:
        self.guard("user.manage")
        self.write_json({"ok": True, "user": await self.in_db(svc.get_user, username)})

    async def patch(self, username: str) -> None:
        self.guard("user.manage")
        body = self.json_body(8192)
        user = await self.in_db(svc.update_staff, username, body, actor=actor_of(self),
                                auditor=self.ctx.auditor, known_roles=policy.ROLES,
                                admin_roles=policy.ADMIN_ROLES)
        self.ctx.principals.clear()          # roles and active flag apply at once
        self.write_json({"ok": True, "user": user})


class PasswordResetHandler(StaffHandler):
    async def post(self, username: str) -> None:
        self.guard("user.manage")
        temp = await self.in_db(svc.reset_password, username, actor=actor_of(self),
                                auditor=self.ctx.auditor,
                                min_length=self.policy_now()["password_min_length"])
        self.ctx.principals.clear()
        self.write_json({"ok": True, "temporary_password": temp})


class TokensHandler(StaffHandler):
    async def get(self) -> None:
        self.guard("user.manage")
        username = self.str_arg("username", 64)
        self.write_json({"ok": True, "tokens": await self.in_db(svc.list_tokens, username)})


class UserTokensHandler(StaffHandler):
    async def post(self, username: str) -> None:
        self.guard("user.manage")
        body = self.json_body(4096)
        info, token = await self.in_db(svc.issue_token, username, name=body.get("name"),
                                       days=body.get("days", 90), actor=actor_of(self),
                                       auditor=self.ctx.auditor)
        self.write_json({"ok": True, "token": token, "info": info}, status=201)


class MyTokensHandler(StaffHandler):
    """Issue an API token to oneself (front desk, doctor) from a signed-in session; admin
    accounts hold no token, a token cannot make another token."""

    async def post(self) -> None:
        p = self.require_principal()
        if p.kind != "staff" or p.via_token:
            raise ApiError(403, "请登录后为自己签发令牌 / sign in to issue yourself a token")
        if p.roles & policy.ADMIN_ROLES:
            raise ApiError(403, "管理员账号不能持有 API 令牌 / admin accounts cannot hold API "
                                "tokens")
        if p.must_change_password:
            raise policy.AccessError("请先修改初始密码 / change your password first")
        body = self.json_body(4096)
        info, token = await self.in_db(svc.issue_token, p.subject, name=body.get("name"),
                                       days=body.get("days", 90), actor=actor_of(self),
                                       auditor=self.ctx.auditor)
        self.write_json({"ok": True, "token": token, "info": info}, status=201)


class TokenRevokeHandler(StaffHandler):
    async def post(self, token_id: str) -> None:
        self.guard("user.manage")
        info = await self.in_db(svc.revoke_token, int(token_id), actor=actor_of(self),
                                auditor=self.ctx.auditor)
        self.ctx.principals.clear()
        self.write_json({"ok": True, "info": info})


# patients for doctors -------------------------------------------------------------------------
class PatientSearchHandler(StaffHandler):
    async def get(self) -> None:
        self.guard("patient.history")
        q = self.str_arg("q", 64) or ""
        rows = await self.in_db(svc.search_patients, q, self.ctx.catalog.id_number_hash)
        self.write_json({"ok": True, "patients": rows})


class PatientExamsHandler(StaffHandler):
    async def get(self, patient_id: str) -> None:
        self.guard("patient.history")
        out = await self.in_db(svc.patient_history, patient_id,
                               policy.exam_scope(self.principal))   # the one list policy
        self.ctx.views.seen(self, "patient.history", "patient", out["patient"]["patient_id"])
        out["ok"] = True
        out["pacs_configured"] = bool(self.ctx.config.pacs_ae_title and
                                      self.ctx.config.pacs_host)
        self.write_json(out)


class InstanceVersionsHandler(StaffHandler):
    """GET /api/staff/studies/{study_uid}/versions[?sop=UID]: the instances of a study that
    were resent with corrections or other pixels (models/versions.py), each with its
    versions newest first: time, source (DICOM AE or import), what changed (attribute names
    only). For staff who may read the exam's report."""

    async def get(self, study_uid: str) -> None:
        self.guard("exam.report")
        sop = self.get_query_argument("sop", "") or None
        if sop is not None and not valid_uid(sop):
            raise ApiError(400, "sop 不是有效的 DICOM UID / sop is not a valid DICOM UID")

        def load():
            exam = self.ctx.catalog.exam_by_uid(study_uid)
            self.check_exam(exam_id=exam.id, patient_db_id=exam.patient_id,
                            images_enabled=exam.images_enabled, need="report")
            return versions_of_study(study_uid, sop)
        instances = await self.in_db(load)
        self.write_json({"ok": True, "study_uid": study_uid, "instances": instances})


class UnmaskHandler(StaffHandler):
    async def post(self, patient_id: str) -> None:
        self.guard("patient.unmask")
        body = self.json_body(4096)
        out = await self.in_db(svc.unmask, patient_id, body.get("field"), body.get("reason"),
                               actor=actor_of(self), auditor=self.ctx.auditor)
        self.write_json({"ok": True, **out})


class CheckIdHandler(StaffHandler):
    async def post(self, patient_id: str) -> None:
        self.guard("patient.unmask")
        body = self.json_body(4096)
        match = await self.in_db(svc.check_id_number, patient_id, body.get("id_number"),
                                 self.ctx.catalog.id_number_hash, actor=actor_of(self),
                                 auditor=self.ctx.auditor)
        self.write_json({"ok": True, "match": match})


# run-time settings -----------------------------------------------------------------------------
class RuntimeSettingsHandler(StaffHandler):
    """The system admin's run-time settings (every group of server/config.py but security)."""

    async def get(self) -> None:
        self.guard("settings.manage")
        groups = await self.in_db(settings.describe, self.ctx, settings.admin_groups())
        self.write_json({"ok": True, "groups": groups})

    async def put(self) -> None:
        self.guard("settings.manage")
        changes = self.json_body(65536).get("settings")

        def save():
            changed = settings.change(self.ctx, changes, groups=settings.admin_groups(),
                                      actor=actor_of(self))
            return changed, settings.describe(self.ctx, settings.admin_groups())
        changed, groups = await self.in_db(save)
        self.write_json({"ok": True, "groups": groups, "changed": changed})


# system health ---------------------------------------------------------------------------------
class SystemHealthHandler(StaffHandler):
    async def get(self) -> None:
        self.guard("health.read")
        database, extra = await self.in_db(_database_health, self.ctx)
        disk = _disk_health(self.ctx.storage)
        caches = self.ctx.renders.stats() if self.ctx.renders is not None else {}
        try:
            load = os.getloadavg()
        except OSError:
            load = None
        ok = bool(database.get("ok") and disk.get("ok"))
        self.write_json({"ok": True, "healthy": ok, "version": self.ctx.version,
                         "uptime_s": int(time.time() - STARTED), "pid": os.getpid(),
                         "load_average": load, "database": database, "disk": disk,
                         "caches": caches, **extra})


def _database_health(ctx) -> tuple[dict, dict]:
    """Database reachability, latency, schema version and counts (blocking: db pool)."""
    from models.migrations import current_version
    out = {"backend": "mysql" if dbmod.is_mysql() else "sqlite"}
    t0 = time.perf_counter()
    try:
        dbmod.ping()
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001
        out.update(ok=False, error=type(exc).__name__)
        return out, {}
    out["ping_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    out["schema_version"] = current_version()
    out["counts"] = ctx.catalog.counts()
    path = dbmod.sqlite_path()
    if path and os.path.exists(path):
        out["size_bytes"] = os.path.getsize(path)
    return out, svc.health_figures()


def _disk_health(storage) -> dict:
    root = storage.root
    try:
        du = shutil.disk_usage(root)
    except OSError as exc:
        return {"path": str(root), "ok": False, "error": type(exc).__name__}
    disk = {"path": str(root), "total_bytes": du.total, "used_bytes": du.used,
            "free_bytes": du.free, "used_percent": round(du.used * 100 / du.total, 1),
            "writable": storage.writable()}
    disk["ok"] = disk["writable"] and du.free > 2 * 1024 ** 3 and disk["used_percent"] < 95
    return disk


def startup(ctx) -> None:
    """Apply the stored run-time settings; in a running server (an event loop is running)
    also re-read them every 5 s, for changes made through another worker process."""
    try:
        with dbmod.connection():
            settings.refresh(ctx)
    except Exception as exc:  # noqa: BLE001 - a missing table must not stop the server
        log.warning("stored settings not applied: %s", type(exc).__name__)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass                     # outside a server (tests, tools): no refresh timer
    else:
        if ctx.settings_refresh is None:
            ctx.settings_refresh = tornado.ioloop.PeriodicCallback(lambda: _refresh(ctx),
                                                                 settings.REFRESH_S * 1000)
            ctx.settings_refresh.start()


def routes(ctx) -> list:
    d = {"ctx": ctx}

    def page(name, perm=None):
        return {"ctx": ctx, "page": name, "permission": perm}
    out = [
        (r"/login", StaffPageHandler, page("login.html")),
        (r"/staff", StaffHomeHandler, d),
        (r"/api/staff/nav", NavHandler, d),
        (r"/api/staff/users", UsersHandler, d),
        (rf"/api/staff/users/{USERNAME}", UserHandler, d),
        (rf"/api/staff/users/{USERNAME}/password-reset", PasswordResetHandler, d),
        (rf"/api/staff/users/{USERNAME}/tokens", UserTokensHandler, d),
        (r"/api/staff/tokens", TokensHandler, d),
        (r"/api/staff/me/tokens", MyTokensHandler, d),
        (r"/api/staff/tokens/([0-9]{1,12})/revoke", TokenRevokeHandler, d),
        (r"/api/staff/patients", PatientSearchHandler, d),
        (rf"/api/staff/patients/{PATIENT_ID}/exams", PatientExamsHandler, d),
        (rf"/api/staff/patients/{PATIENT_ID}/unmask", UnmaskHandler, d),
        (rf"/api/staff/patients/{PATIENT_ID}/check-id", CheckIdHandler, d),
        (r"/api/staff/studies/([0-9][0-9.]{0,63})/versions", InstanceVersionsHandler, d),
        (r"/api/admin/settings", RuntimeSettingsHandler, d),
        (r"/api/admin/health", SystemHealthHandler, d),
    ]
    out += [(path, StaffPageHandler, page(f"{name}.html", perm))
            for name, path, _zh, _en, perm in PAGES]
    return out


def _refresh(ctx) -> None:
    """Pick up settings changed by another worker process (runs in the db pool)."""
    def run():
        try:
            with dbmod.connection():
                settings.refresh(ctx)
        except Exception as exc:  # noqa: BLE001
            log.debug("settings refresh failed: %s", exc)
    if ctx.db_executor is not None:
        try:
            ctx.db_executor.submit(run)
        except RuntimeError:
            pass
