"""The one access policy: who may read which exam's report, images and original files.

Three kinds of principal: a staff user (roles), a verified patient, a share visitor.
Every read of a report, an image or a download goes through `check_exam`; route-level
permissions go through `require`. A per-exam switch turns patient/share image access off
while the report stays readable; staff still see everything.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from models.accounts import ADMIN_ROLES as _ACCOUNT_ADMIN_ROLES
from models.clock import utcnow
from models.errors import DomainError

ROLES = {
    "frontdesk": "前台",
    "doctor": "医生",
    "sysadmin": "系统管理员",
    "secadmin": "安全管理员",
    "auditadmin": "审计管理员",
}
ADMIN_ROLES = set(_ACCOUNT_ADMIN_ROLES)     # they never hold API tokens (models/accounts.py)

PERMISSIONS: dict[str, set[str]] = {
    "frontdesk": {"exam.search", "exam.report", "exam.images", "exam.switch_images",
                  "share.manage", "download.read", "patient.unmask", "exam.import"},
    "doctor": {"exam.search", "exam.report", "exam.images", "exam.download",
               "patient.history", "share.manage", "patient.unmask", "exam.import",
               "exam.send", "exam.measure"},
    "sysadmin": {"user.manage", "settings.manage", "integration.manage", "health.read",
                 "verification.manage"},
    "secadmin": {"security.manage"},
    "auditadmin": {"audit.read", "download.read"},
}

# Permissions held only by admin roles: their routes answer only from the admin network
# allow-list of the security policy (checked in BaseHandler.require).
ADMIN_ONLY_PERMISSIONS = ({p for r in ADMIN_ROLES for p in PERMISSIONS[r]}
                          - {p for r in set(ROLES) - ADMIN_ROLES for p in PERMISSIONS[r]})

FRESH_VERIFICATION = dt.timedelta(minutes=10)


class AccessError(DomainError):
    status = 403

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message, status=status)


class Unauthenticated(AccessError):
    status = 401


@dataclass(frozen=True)
class Principal:
    kind: str                                  # staff / patient / share
    subject: str                               # username / hospital patient ID / share id
    roles: frozenset = frozenset()
    session_id: int | None = None
    csrf_token: str | None = None
    via_token: bool = False                    # staff API token (no cookie, no CSRF)
    staff_user_id: int | None = None
    must_change_password: bool = False
    patient_db_id: int | None = None
    share_id: int | None = None
    share_exam_id: int | None = None
    share_include_images: bool = False
    share_allow_download: bool = False
    share_expires_at: dt.datetime | None = None
    verified_at: dt.datetime | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def can(self, permission: str) -> bool:
        if self.kind != "staff":
            return False
        return any(permission in PERMISSIONS.get(r, ()) for r in self.roles)

    def masks_personal_data(self) -> bool:
        return self.kind != "staff"

    def freshly_verified(self, now: dt.datetime | None = None) -> bool:
        if self.verified_at is None:
            return False
        return (now or utcnow()) - self.verified_at <= FRESH_VERIFICATION

    def audit_actor(self) -> tuple[str, str]:
        return self.kind, self.subject


def require(principal: Principal | None, permission: str) -> Principal:
    """Route-level check for staff permissions."""
    if principal is None:
        raise Unauthenticated("请先登录 / please sign in")
    if principal.kind == "staff" and principal.must_change_password:
        raise AccessError("请先修改初始密码 / change your password first")
    if not principal.can(permission):
        raise AccessError("没有权限执行此操作 / your role does not allow this")
    return principal


NEEDS = ("report", "images", "download")


def check_exam(principal: Principal | None, *, exam_id: int, patient_db_id: int,
               images_enabled: bool, need: str) -> None:
    """Raise unless principal may `need` (report / images / download) this exam.

    Patients and share visitors asking for an exam that is not theirs get 404, the same
    answer as for an exam that does not exist, so nothing reveals whether it exists.
    """
    if need not in NEEDS:
        raise ValueError(need)
    if principal is None:
        raise Unauthenticated("请先登录或验证身份 / please sign in or verify your identity")
    if principal.kind == "staff":
        if principal.must_change_password:
            raise AccessError("请先修改初始密码 / change your password first")
        perm = {"report": "exam.report", "images": "exam.images",
                "download": "exam.download"}[need]
        if not principal.can(perm):
            raise AccessError("没有权限查看患者资料 / your role does not give access to "
                              "patient data")
        return
    if principal.kind == "patient":
        if principal.patient_db_id != patient_db_id:
            raise AccessError("没有找到该检查 / no such exam", status=404)
    elif principal.kind == "share":
        if principal.share_exam_id != exam_id:
            raise AccessError("没有找到该检查 / no such exam", status=404)
        if principal.share_expires_at and utcnow() >= principal.share_expires_at:
            raise Unauthenticated("分享已过期 / this share has expired")
        if need in ("images", "download") and not principal.share_include_images:
            raise AccessError("此分享仅包含报告 / this share includes the report only")
        if need == "download" and not principal.share_allow_download:
            raise AccessError("此分享不允许下载 / this share does not allow downloads")
    else:
        raise AccessError("unknown principal")
    if need in ("images", "download") and not images_enabled:
        raise AccessError("该检查的影像已关闭，报告仍可查看 / images of this exam are switched "
                          "off; the report can still be read")
    if need == "download" and not principal.freshly_verified():
        raise AccessError("下载原始影像前请重新验证身份 / verify your identity again (within "
                          "10 minutes) before downloading", status=403)


def check_share(principal: Principal | None, *, exam_id: int, patient_db_id: int,
                images_enabled: bool, allow_download: bool) -> None:
    """A share never grants more than its creator may do at creation time: a share that
    allows downloads needs a creator who may download this exam now (staff with
    exam.download; a patient freshly verified, not merely a WeChat visit). The report and
    the images are checked by the share visitor's own rules (check_exam)."""
    if not allow_download:
        return
    try:
        check_exam(principal, exam_id=exam_id, patient_db_id=patient_db_id,
                   images_enabled=images_enabled, need="download")
    except Unauthenticated:
        raise
    except AccessError as exc:
        if exc.status == 404:
            raise
        zh, _, en = exc.message.partition(" / ")
        raise AccessError(f"分享的权限不能超过您本人：不能创建允许下载的分享（{zh}） / a share cannot "
                          f"grant more than you may do: no downloadable share ({en or zh})"
                          ) from None


def visible_exams(principals, query: dict | None = None, *, level: str = "study", **kw):
    """The one list policy: the exams (QIDO rows) the held sessions may list.

    `principals`: one Principal or the sessions a browser holds. Staff with exam.search see
    every exam; a verified patient their own; a share visitor exactly the shared exam (until
    it expires). Below the study level (series, instances) patients and share visitors see
    only exams whose images are switched on (and, for a share, included). Runs in the db pool.
    """
    from models.qido import search
    return search(exam_scope(principals), level, query or {}, **kw)


def exam_scope(principals):
    """The exams the held sessions may list, as a models.qido.Scope: what visible_exams
    (QIDO, C-FIND's callers) and every other exam list (the portal and WeChat list, the
    staff search and a doctor's patient history) filter by."""
    from models.qido import Scope
    if isinstance(principals, Principal) or principals is None:
        principals = [principals]
    principals = [p for p in principals if p is not None]
    if not principals:
        raise Unauthenticated("请先登录或验证身份 / please sign in or verify your identity")
    staff = [p for p in principals if p.kind == "staff"]
    if staff:
        require(staff[0], "exam.search")
        return Scope(all=True)
    now = utcnow()
    patients = tuple(p.patient_db_id for p in principals
                     if p.kind == "patient" and p.patient_db_id is not None)
    exams = tuple((p.share_exam_id, p.share_include_images) for p in principals
                  if p.kind == "share" and p.share_exam_id is not None
                  and not (p.share_expires_at and now >= p.share_expires_at))
    return Scope(patients=patients, exams=exams)
