"""Staff accounts, roles, sessions, settings and masking through the HTTP API, as the staff
pages use it (cookie session + CSRF header)."""
from __future__ import annotations

import datetime as dt
import re

import pytest

from tests.conftest import make_staff

pytestmark = pytest.mark.db

CJK = re.compile(r"[\u4e00-\u9fff]")
ADMIN_PW = "Admin-Pass-1"


def chinese(body) -> str:
    assert body["ok"] is False and CJK.search(body["error"]), body
    return body["error"]


@pytest.fixture
def admin(live, browser):
    make_staff("root1", ("sysadmin",), ADMIN_PW, must_change=False)
    b = browser()
    b.login("root1", ADMIN_PW)
    return b


def audit_actions(**where):
    from models.schema import AuditEvent
    q = AuditEvent.select()
    for k, v in where.items():
        q = q.where(getattr(AuditEvent, k) == v)
    return [e.action for e in q.order_by(AuditEvent.id)]


def test_first_admin_must_change_password_then_creates_accounts(live, browser):
    make_staff("admin", ("sysadmin",), "First-Pass-1", must_change=True)
    b = browser()
    me = b.login("admin", "First-Pass-1")
    assert me["user"]["must_change_password"] is True
    st, body = b.call("GET", "/api/staff/users")
    assert st == 403 and "修改初始密码" in chinese(body)
    st, body = b.call("POST", "/api/auth/password", {"old_password": "First-Pass-1",
                                                     "new_password": "short"})
    assert st == 400 and "至少" in chinese(body)
    st, _ = b.call("POST", "/api/auth/password", {"old_password": "First-Pass-1",
                                                  "new_password": "Better-Pass-2"})
    assert st == 200
    st, body = b.call("POST", "/api/staff/users", {"username": "fd1", "roles": ["frontdesk"],
                                                   "display_name": "前台一"})
    assert st == 201, body
    temp = body["temporary_password"]
    assert body["user"]["must_change_password"] is True
    fd = browser()
    fd.login("fd1", temp)
    st, nav = fd.call("GET", "/api/staff/nav")
    assert nav["must_change_password"] and [p["page"] for p in nav["pages"]] == ["frontdesk"]
    assert "user.create" in audit_actions(object_id="fd1")


def test_account_rules_and_bad_input(admin):
    cases = [
        ({"username": "x", "roles": ["doctor"]}, 400, "用户名"),
        ({"username": "ok_name", "roles": []}, 400, "角色"),
        ({"username": "ok_name", "roles": ["nurse"]}, 400, "未知角色"),
        ({"username": "ok_name", "roles": ["sysadmin", "auditadmin"]}, 400, "两个管理员角色"),
        ({"username": "ok_name", "roles": ["secadmin", "doctor"]}, 400, "管理员账号"),
        ({"username": "ok_name", "roles": ["doctor"], "password": "abc"}, 400, "至少"),
        ({"username": "ok_name", "roles": ["doctor"], "password": "ok_name-Aa1x"}, 400,
         "用户名"),
        ({"username": "ok_name", "roles": ["doctor"], "display_name": "x" * 40}, 400, "姓名"),
    ]
    for body, status, word in cases:
        st, out = admin.call("POST", "/api/staff/users", body)
        assert st == status and word in chinese(out), (body, out)
    st, out = admin.call("POST", "/api/staff/users", {"username": "doc1", "roles": ["doctor"]})
    assert st == 201
    st, out = admin.call("POST", "/api/staff/users", {"username": "DOC1", "roles": ["doctor"]})
    assert st == 409 and "已存在" in chinese(out)
    for body, word in [({"shoe": 1}, "不能修改"), ({}, "没有"), ({"active": "no"}, "true"),
                       ({"roles": ["doctor", "auditadmin"]}, "管理员")]:
        st, out = admin.call("PATCH", "/api/staff/users/doc1", body)
        assert st == 400 and word in chinese(out), (body, out)
    st, out = admin.call("PATCH", "/api/staff/users/nobody", {"active": False})
    assert st == 404 and chinese(out)
    # the last system administrator stays
    st, out = admin.call("PATCH", "/api/staff/users/root1", {"active": False})
    assert st == 409 and "自己" in chinese(out)
    st, out = admin.call("PATCH", "/api/staff/users/root1", {"roles": ["doctor"]})
    assert st == 409 and chinese(out)
    st, out = admin.call("POST", "/api/staff/users/root1/password-reset", {})
    assert st == 409 and chinese(out)


def test_deactivate_and_reset_password_end_sessions(admin, browser, live):
    make_staff("doc2", ("doctor",), "Doctor-Pass-2")
    d = browser()
    d.login("doc2", "Doctor-Pass-2")
    assert d.call("GET", "/api/studies")[0] == 200
    st, out = admin.call("POST", "/api/staff/users/doc2/password-reset", {})
    assert st == 200
    temp = out["temporary_password"]
    assert d.call("GET", "/api/studies")[0] == 401          # session ended on the server
    d.login("doc2", "Doctor-Pass-2", expect=401)
    d.login("doc2", temp)
    st, out = d.call("GET", "/api/studies")
    assert st == 403 and "修改初始密码" in chinese(out)
    st, _ = admin.call("PATCH", "/api/staff/users/doc2", {"active": False})
    assert st == 200
    assert d.call("GET", "/api/auth/me")[0] == 401
    d.login("doc2", temp, expect=401)
    acts = audit_actions(object_id="doc2")
    assert "user.password_reset" in acts and "user.deactivate" in acts


def test_stale_csrf_expired_session_forbidden_route(admin, browser, live):
    st, out = admin.call("POST", "/api/staff/users", {"username": "fd9", "roles": ["frontdesk"]},
                         headers={"X-CSRF-Token": "stale"})
    assert st == 403 and "页面已过期" in chinese(out)
    st, out = admin.call("POST", "/api/staff/users", {"username": "fd9", "roles": ["frontdesk"]},
                         csrf=False)
    assert st == 403 and "页面已过期" in chinese(out)
    st, out = admin.call("GET", "/api/admin/audit")
    assert st == 403 and "没有权限" in chinese(out)
    # expired: idle longer than the policy allows
    from models.schema import Session
    for row in Session.select():
        Session.update(last_seen_at=row.last_seen_at - dt.timedelta(minutes=31)).where(
            Session.id == row.id).execute()
    live.ctx.principals.clear()
    st, out = admin.call("GET", "/api/staff/users")
    assert st == 401 and "登录" in chinese(out)


def test_pages_by_role(live, browser):
    make_staff("doc3", ("doctor",), "Doctor-Pass-3")
    anon = browser()
    st, _ = anon.call("GET", "/staff/admin")
    assert st == 302 and anon.last_headers["Location"] == "/login?next=%2Fstaff%2Fadmin"
    st, html = anon.call("GET", "/login")
    assert st == 200 and b"<form" in html
    d = browser()
    d.login("doc3", "Doctor-Pass-3")
    assert d.call("GET", "/staff/doctor")[0] == 200
    for page in ("admin", "security", "audit", "frontdesk"):
        st, html = d.call("GET", f"/staff/{page}")
        assert st == 403 and "没有权限".encode() in html
    st, _ = d.call("GET", "/staff")
    assert st == 302 and d.last_headers["Location"] == "/staff/doctor"


def test_security_policy_rules(live, browser):
    make_staff("sec1", ("secadmin",), "Secure-Pass-1")
    s = browser()
    s.login("sec1", "Secure-Pass-1")
    st, out = s.call("GET", "/api/admin/security")
    assert st == 200 and out["policy"]["session_idle_minutes"] == 30
    bad = [
        ({"admin_allow_list": []}, 409, "不能为空"),
        ({"admin_allow_list": "10.0.0.0/8"}, 409, "不包含您当前的地址"),
        ({"admin_allow_list": "10.0.0.0/33"}, 400, "不是有效"),
        ({"password_min_length": 4}, 400, "之间"),
        ({"lockout_failures": "many"}, 400, "整数"),
        ({"session_idle_minutes": 120, "session_absolute_hours": 1}, 400, "空闲超时"),
        ({"totp_required_roles": ["boss"]}, 400, "未知角色"),
        ({"colour": "red"}, 400, "未知"),
    ]
    for policy, status, word in bad:
        st, out = s.call("PUT", "/api/admin/security", {"policy": policy})
        assert st == status and word in chinese(out), (policy, out)
    st, out = s.call("PUT", "/api/admin/security", {"policy": {
        "session_idle_minutes": 10, "lockout_failures": 3,
        "admin_allow_list": "127.0.0.0/8, 192.168.10.0/24"}})
    assert st == 200, out
    assert sorted(out["changed"]) == ["admin_allow_list", "lockout_failures",
                                      "session_idle_minutes"]
    assert audit_actions(action="security.change") == ["security.change"] * 3
    # sessions now idle out after 10 minutes; three failures lock an account
    make_staff("doc4", ("doctor",), "Doctor-Pass-4")
    d = browser()
    d.login("doc4", "Doctor-Pass-4")
    from models.schema import Session, StaffUser
    s4 = Session.select().join(StaffUser).where(StaffUser.username == "doc4").get()
    assert s4.idle_timeout_s == 600
    for i in range(3):
        st, out = d.call("POST", "/api/auth/login", {"username": "doc4", "password": "nope"})
    assert st == 423 and "锁定" in chinese(out)


def test_admin_allow_list_applies_to_admin_sign_in(live, browser):
    from models import staff as svc
    from models.schema import RuntimeSetting
    make_staff("aud1", ("auditadmin",), "Audit-Pass-1")
    make_staff("doc5", ("doctor",), "Doctor-Pass-5")
    RuntimeSetting.create(key="conf.admin_allow_list", value='"10.1.0.0/16"')
    svc.forget_settings_cache()
    st, out = browser().call("POST", "/api/auth/login", {"username": "aud1",
                                                          "password": "Audit-Pass-1"})
    assert st == 403 and "白名单" in chinese(out)
    browser().login("doc5", "Doctor-Pass-5")        # not an admin: unaffected
    assert "address not on the admin allow-list" in [
        e.detail for e in __import__("models.schema").schema.AuditEvent.select()]


def test_tokens_issue_list_revoke(admin, live):
    # the system admin issues tokens to integration service accounts only
    # (tests/security/test_duties.py)
    st, out = admin.call("POST", "/api/staff/users", {"username": "script1",
                                                      "roles": ["doctor"],
                                                      "service_account": True})
    assert st == 201 and out["user"]["service_account"] is True, out
    for body, word in [({"name": ""}, "用途"), ({"name": "x", "days": 999}, "365"),
                       ({"name": "x", "days": "7"}, "365")]:
        st, out = admin.call("POST", "/api/staff/users/script1/tokens", body)
        assert st == 400 and word in chinese(out)
    st, out = admin.call("POST", "/api/staff/users/script1/tokens", {"name": "bench", "days": 7})
    assert st == 201 and out["token"].startswith("cft_")
    token, tid = out["token"], out["info"]["id"]
    h = {"Authorization": f"Bearer {token}"}
    assert live.get("/api/studies", headers=h)[0] == 200
    st, out = admin.call("GET", "/api/staff/tokens?username=script1")
    assert [t["state"] for t in out["tokens"]] == ["active"]
    assert token not in str(out)
    st, out = admin.call("POST", f"/api/staff/tokens/{tid}/revoke", {})
    assert st == 200 and out["info"]["state"] == "revoked"
    assert live.get("/api/studies", headers=h)[0] == 401
    st, out = admin.call("POST", f"/api/staff/tokens/{tid}/revoke", {})
    assert st == 409 and chinese(out)
    assert {"token.create", "token.revoke"} <= set(audit_actions())


def test_patient_search_masking_and_audited_unmask(live, browser, catalog):
    from models.schema import Exam, Patient
    p = Patient.create(patient_id="P0001", name="测试患者", sex="F", phone="13812345678")
    catalog.set_patient_id_number(p, "11010519491231002X")
    p.save()
    Exam.create(patient=p, study_uid="1.2.3.4", accession_number="ACC77", modality="CT",
                exam_date=dt.date(2026, 1, 2))
    Exam.create(patient=p, study_uid="1.2.3.5", accession_number="ACC78", modality="MR",
                exam_date=dt.date(2026, 3, 4), source="pacs")
    make_staff("doc6", ("doctor",), "Doctor-Pass-6")
    d = browser()
    d.login("doc6", "Doctor-Pass-6")
    for q in ("测试", "P0001", "ACC78", "13812345678", "11010519491231002X"):
        st, out = d.call("GET", "/api/staff/patients?q=" + __import__("urllib.parse").parse.quote(q))
        assert st == 200 and [x["patient_id"] for x in out["patients"]] == ["P0001"], q
        assert out["patients"][0]["phone"] == "138****5678"
        assert out["patients"][0]["id_number"] == "1101**********002X"
        assert "13812345678" not in str(out)
    st, out = d.call("GET", "/api/staff/patients?q=")
    assert st == 400 and chinese(out)
    st, out = d.call("GET", "/api/staff/patients/P0001/exams")
    assert [e["study_uid"] for e in out["exams"]] == ["1.2.3.5", "1.2.3.4"]
    assert [e["pacs_only"] for e in out["exams"]] == [True, False]
    for body, word in [({"field": "phone"}, "原因"), ({"field": "name", "reason": "随访"}, "手机号"),
                       ({"field": "id_number", "reason": "随访"}, "摘要")]:
        st, out = d.call("POST", "/api/staff/patients/P0001/unmask", body)
        assert st == 400 and word in chinese(out)
    st, out = d.call("POST", "/api/staff/patients/P0001/unmask",
                     {"field": "phone", "reason": "电话随访"})
    assert st == 200 and out["value"] == "13812345678"
    st, out = d.call("POST", "/api/staff/patients/P0001/check-id", {"id_number": "110105194912310021"})
    assert st == 400 and "校验位" in chinese(out)
    st, out = d.call("POST", "/api/staff/patients/P0001/check-id",
                     {"id_number": "11010519491231002x"})
    assert st == 200 and out["match"] is True
    from models.schema import AuditEvent
    ev = AuditEvent.get(AuditEvent.action == "patient.unmask")
    assert ev.actor_id == "doc6" and "电话随访" in ev.detail and "13812345678" not in ev.detail
    assert AuditEvent.get(AuditEvent.action == "patient.check_id").outcome == "ok"


def test_runtime_settings_override_conf_and_are_audited(admin, live):
    st, out = admin.call("GET", "/api/admin/settings")
    names = {s["name"] for g in out["groups"] for s in g["settings"]}
    assert {"pacs_host", "pacs_port", "hl7_receivers"} <= names
    assert not any("secret" in n or n.endswith("_bind") for n in names)
    for body, word in [({"settings": {"host": "0.0.0.0"}}, "不能在页面上修改"),
                       ({"settings": {"pacs_port": "abc"}}, "无效"),
                       ({"settings": {"pacs_port": 70000}}, "无效"), ({}, "没有")]:
        st, err = admin.call("PUT", "/api/admin/settings", body)
        assert st == 400 and word in chinese(err), body
    st, out = admin.call("PUT", "/api/admin/settings", {"settings": {"pacs_host": "10.0.0.5",
                                                                     "pacs_port": 11112}})
    assert st == 200 and sorted(out["changed"]) == ["pacs_host", "pacs_port"]
    assert live.ctx.config.pacs_host == "10.0.0.5" and live.ctx.config.pacs_port == 11112
    st, out = admin.call("PUT", "/api/admin/settings", {"settings": {"pacs_port": None}})
    assert live.ctx.config.pacs_port == 104
    from models.schema import AuditEvent
    details = [e.detail for e in AuditEvent.select().where(AuditEvent.action == "settings.change")]
    assert details == ['(default) -> "10.0.0.5"', "(default) -> 11112", "11112 -> (default)"]


def test_health_audit_log_and_csv(admin, live, browser):
    st, out = admin.call("GET", "/api/admin/health")
    assert st == 200 and out["database"]["ok"] and out["disk"]["free_bytes"] > 0
    assert {"decoded", "volumes", "encoded"} <= set(out["caches"])
    make_staff("aud2", ("auditadmin",), "Audit-Pass-2")
    a = browser()
    a.login("aud2", "Audit-Pass-2")
    st, out = a.call("GET", "/api/admin/audit?action=login")
    assert st == 200 and out["total"] >= 2 and {e["actor_id"] for e in out["events"]} >= {
        "root1", "aud2"}
    st, out = a.call("GET", "/api/admin/audit?from=2026-13-01")
    assert st == 400 and chinese(out)
    st, raw = a.call("GET", "/api/admin/audit.csv?actor=root1")
    text = raw.decode("utf-8-sig")
    assert text.splitlines()[0].startswith("time,actor_kind,actor_id")
    assert "login" in text and "aud2" not in text
    st, out = a.call("GET", "/api/admin/audit/verify")
    assert out["intact"] is True and out["checked"] >= 3
    st, out = a.call("GET", "/api/admin/downloads")
    assert st == 200 and out["downloads"] == []
    assert admin.call("GET", "/api/admin/audit.csv")[0] == 403
