"""Separation of duties (三员分立) and level-3 floors (issue 14 item 3), found by the
penetration test: the system admin could issue API tokens to the security admin, the audit
admin and doctors (tokens skipped TOTP and the forced password change, so the system admin
acted as each of them); the policy pages took values below level 3; a phone number alone
could verify a patient; a share could grant a download its creator may not do."""
from __future__ import annotations

import datetime as dt
import json

import pytest
import requests

from models.db import database
from models.schema import ApiToken, AuditEvent, Patient, RuntimeSetting
from models.sessions import TOKEN_PREFIX, create_session, token_hash
from tests.conftest import make_staff, staff_headers, staff_token
from tests.security import test_attacks as _attacks

pytestmark = pytest.mark.db
live = _attacks.live            # the fixtures of test_attacks.py: the served app, two patients
world = _attacks.world


def call(live, method, path, headers, body=None):
    r = requests.request(method, live.url + path, headers=headers,
                         json=body if body is not None else None, timeout=30)
    return r.status_code, (r.json() if r.headers.get("Content-Type", "").startswith(
        "application/json") else r.content)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def _plant_token(username: str) -> str:
    """A token row as an earlier version issued it (before admins were refused tokens)."""
    from models.schema import StaffUser
    token = TOKEN_PREFIX + "planted-" + username
    with database.connection_context():
        ApiToken.create(staff_user=StaffUser.get(StaffUser.username == username),
                        token_hash=token_hash(token), name="old",
                        expires_at=dt.datetime.utcnow() + dt.timedelta(days=30))
    return token


# 1. no account obtains another's credentials ------------------------------------------------
def test_system_admin_cannot_issue_tokens_to_admins_or_people(live):
    sysadmin = staff_headers("sys1", ("sysadmin",))
    with database.connection_context():
        make_staff("sec1", ("secadmin",))
        make_staff("aud1", ("auditadmin",))
        make_staff("doc2", ("doctor",))
    for owner in ("sec1", "aud1", "sys1", "doc2"):
        st, out = call(live, "POST", f"/api/staff/users/{owner}/tokens", sysadmin,
                       {"name": "take over", "days": 30})
        assert st == 403 and "令牌" in out["error"], (owner, st, out)
    with database.connection_context():
        assert not ApiToken.select().join_from(ApiToken, ApiToken.staff_user.rel_model).where(
            ApiToken.staff_user.rel_model.username.in_(["sec1", "aud1", "sys1", "doc2"])).exists()
    # the model refuses too (the command line and any other caller)
    from models.sessions import create_api_token
    from models.staff import staff_user_named
    with database.connection_context(), pytest.raises(ValueError):
        create_api_token(staff_user_named("sec1"))


def test_command_line_issues_no_admin_token_and_audits_owner_and_issuer(ctx, config):
    from tests.security.test_audit_cli_tls import cli
    make_staff("sec9", ("secadmin",))
    make_staff("doc9", ("doctor",), must_change=False)
    r = cli(config, "token", "sec9")
    assert r.returncode == 2 and not r.stdout.strip() and "令牌" in r.stderr
    r = cli(config, "token", "doc9")
    assert r.returncode == 0 and r.stdout.strip().startswith(TOKEN_PREFIX), r.stderr
    ev = AuditEvent.select().where(AuditEvent.action == "token.create").get()
    assert ev.object_id == "doc9" and "owner=doc9" in ev.detail and "issuer=cli:" in ev.detail


def test_admin_tokens_issued_earlier_are_refused_at_use(live):
    staff_headers("sec2", ("secadmin",))
    staff_headers("aud2", ("auditadmin",))
    staff_headers("sys2", ("sysadmin",))
    for user, path in (("sec2", "/api/admin/security"), ("aud2", "/api/admin/audit"),
                       ("sys2", "/api/staff/users")):
        st, _ = call(live, "GET", path, bearer(_plant_token(user)))
        assert st == 401, (user, st)
    # a doctor's token stops working when the account becomes an admin
    tok = staff_token("doc3", ("doctor",))
    assert call(live, "GET", "/api/studies", bearer(tok))[0] == 200
    with database.connection_context():
        from models.schema import StaffUser
        StaffUser.update(roles="auditadmin").where(StaffUser.username == "doc3").execute()
    live.ctx.principals.clear()
    assert call(live, "GET", "/api/admin/audit", bearer(tok))[0] == 401


def test_service_account_gets_tokens_and_cannot_sign_in(live):
    sysadmin = staff_headers("sys3", ("sysadmin",))
    st, out = call(live, "POST", "/api/staff/users", sysadmin,
                   {"username": "ris-bridge", "roles": ["sysadmin"], "service_account": True})
    assert st == 400 and "管理员角色" in out["error"]
    st, out = call(live, "POST", "/api/staff/users", sysadmin,
                   {"username": "ris-bridge", "roles": ["doctor"], "service_account": True,
                    "password": "Some-Pass-123"})
    assert st == 400 and "没有密码" in out["error"]
    st, out = call(live, "POST", "/api/staff/users", sysadmin,
                   {"username": "ris-bridge", "roles": ["doctor"], "service_account": True})
    assert st == 201 and out["user"]["service_account"] is True
    assert "temporary_password" not in out and out["user"]["must_change_password"] is False
    st, out = call(live, "POST", "/api/staff/users/ris-bridge/tokens", sysadmin,
                   {"name": "RIS", "days": 30})
    assert st == 201, out
    assert call(live, "GET", "/api/studies", bearer(out["token"]))[0] == 200
    with database.connection_context():
        ev = AuditEvent.select().where(AuditEvent.action == "token.create").order_by(
            AuditEvent.id.desc()).first()
    assert ev.actor_id == "sys3" and ev.object_id == "ris-bridge"
    assert "owner=ris-bridge" in ev.detail and "issuer=sys3" in ev.detail
    # no password: the login page answers as for an unknown account; no reset, no admin role
    r = requests.post(live.url + "/api/auth/login", json={"username": "ris-bridge",
                                                          "password": "Whatever-Pass-1"})
    assert r.status_code == 401
    st, out = call(live, "POST", "/api/staff/users/ris-bridge/password-reset", sysadmin, {})
    assert st == 409 and "没有密码" in out["error"]
    st, out = call(live, "PATCH", "/api/staff/users/ris-bridge", sysadmin,
                   {"roles": ["secadmin"]})
    assert st == 400 and "管理员角色" in out["error"]


def test_people_issue_their_own_tokens_only_from_a_session(live):
    doc = staff_headers("doc4", ("doctor",))
    st, out = call(live, "POST", "/api/staff/me/tokens", doc, {"name": "script", "days": 7})
    assert st == 201 and out["info"]["username"] == "doc4", out
    # a token cannot make another token; an admin cannot make one for themself
    assert call(live, "POST", "/api/staff/me/tokens", bearer(out["token"]),
                {"name": "more", "days": 7})[0] == 403
    st, out = call(live, "POST", "/api/staff/me/tokens", staff_headers("sys4", ("sysadmin",)),
                   {"name": "me", "days": 7})
    assert st == 403 and "令牌" in out["error"]
    assert call(live, "POST", "/api/staff/me/tokens", {}, {"name": "x"})[0] == 401


def test_a_token_does_not_skip_the_forced_password_change(live):
    with database.connection_context():
        make_staff("doc5", ("doctor",), must_change=True)
    tok = staff_token("doc5", ("doctor",))
    st, out = call(live, "GET", "/api/studies", bearer(tok))
    assert st == 403 and "修改初始密码" in out["error"]
    # nor an expired password (password_max_age_days): sign-in would demand a change
    from models.schema import StaffUser
    tok = staff_token("doc6", ("doctor",))
    assert call(live, "GET", "/api/studies", bearer(tok))[0] == 200
    with database.connection_context():
        StaffUser.update(password_changed_at=dt.datetime.utcnow() - dt.timedelta(days=91)
                         ).where(StaffUser.username == "doc6").execute()
    live.ctx.principals.clear()
    st, out = call(live, "GET", "/api/studies", bearer(tok))
    assert st == 403 and "修改" in out["error"]


# 2. level-3 floors ---------------------------------------------------------------------------
BELOW_FLOOR = [
    ({"password_history": 4}, "不得重复"),
    ({"password_history": 0}, "不得重复"),
    ({"password_max_age_days": 0}, "密码有效期"),
    ({"password_max_age_days": 91}, "密码有效期"),
    ({"lockout_failures": 6}, "失败次数"),
    ({"password_min_length": 7}, "最短长度"),
    ({"password_min_classes": 2}, "字符类别"),
    ({"totp_required_roles": ["secadmin", "auditadmin"]}, "系统管理员"),
    ({"totp_required_roles": ""}, "动态口令"),
]


def test_security_admin_cannot_lower_a_level3_floor(live):
    sec = staff_headers("sec5", ("secadmin",))
    for change, word in BELOW_FLOOR:
        st, out = call(live, "PUT", "/api/admin/security", sec, {"policy": change})
        assert st == 400 and "等保三级" in out["error"] and word in out["error"], (change, out)
    st, out = call(live, "GET", "/api/admin/security", sec)
    assert out["limits"]["password_history"]["min"] == 5 and \
        out["limits"]["password_history"]["level3"] is True
    assert out["limits"]["password_max_age_days"]["max"] == 90
    assert out["limits"]["lockout_failures"]["max"] == 5
    assert out["totp_floor"] == ["sysadmin", "secadmin", "auditadmin"]
    # at the floor is fine
    st, out = call(live, "PUT", "/api/admin/security", sec, {"policy": {
        "password_history": 5, "password_max_age_days": 90, "lockout_failures": 5,
        "totp_required_roles": ["sysadmin", "secadmin", "auditadmin", "doctor"]}})
    assert st == 200, out


def test_start_up_and_stored_values_below_a_floor(tmp_path, ctx):
    from server import settings
    from server.config import ConfigError, load_config
    for name, value in (("password_history", 0), ("password_max_age_days", 0),
                        ("password_max_age_days", 365), ("lockout_failures", 10),
                        ("password_min_classes", 2), ("totp_required_roles", "doctor")):
        with pytest.raises(ConfigError, match=name):
            load_config(path=tmp_path / "none.toml", env={}, overrides={name: value})
        with pytest.raises(ConfigError, match=name):
            load_config(path=tmp_path / "none.toml",
                        env={f"CLOUDFILM_{name.upper()}": str(value)})
    # a value stored by an older version below the floor is ignored, never applied
    from models.staff import forget_settings_cache
    RuntimeSetting.create(key="conf.password_history", value=json.dumps(0))
    RuntimeSetting.create(key="conf.totp_required_roles", value=json.dumps(""))
    forget_settings_cache()
    pol = settings.policy(ctx)
    assert pol["password_history"] == 5
    assert {"sysadmin", "secadmin", "auditadmin"} <= set(pol["totp_required_roles"])


def test_patient_verification_needs_two_factors_or_sms(live):
    sysadmin = staff_headers("sys6", ("sysadmin",))
    on = {"sms": True, "id_number": True, "phone": True, "accession": True}
    for combos in ([["phone"]], [["id_number"]], [["sms"], ["phone"]]):
        st, out = call(live, "PUT", "/api/admin/verification", sysadmin,
                       {"methods": on, "combinations": combos})
        assert st == 400 and "等保三级" in out["error"], (combos, out)
    for combos in ([["sms"]], [["phone", "accession"]], [["sms", "phone"]]):
        st, out = call(live, "PUT", "/api/admin/verification", sysadmin,
                       {"methods": on, "combinations": combos})
        assert st == 200, (combos, out)
    # a phone-only rule written to the database some other way is not used
    with database.connection_context():
        RuntimeSetting.update(value=json.dumps({"methods": on, "combinations": [["phone"]]})
                              ).where(RuntimeSetting.key == "verification").execute()
    m = requests.get(live.url + "/api/verify/methods", timeout=30).json()
    assert ["phone"] not in m["combinations"]


# 3. a share never grants more than its creator may do ------------------------------------------
def test_front_desk_cannot_share_a_download(live, world):
    desk = bearer(staff_token("desk7", ("frontdesk",)))
    st, out = call(live, "POST", "/api/shares", desk,
                   {"study_uid": world.study_a, "allow_download": True})
    assert st == 403 and "下载" in out["error"], out
    assert call(live, "POST", "/api/shares", desk, {"study_uid": world.study_a})[0] == 201
    assert call(live, "POST", "/api/shares", bearer(live.token),
                {"study_uid": world.study_a, "allow_download": True})[0] == 201


def _patient_headers(pid: str, verified_ago: dt.timedelta | None) -> dict:
    from models.schema import Session
    with database.connection_context():
        p = Patient.get(Patient.patient_id == pid)
        new = create_session("patient", patient=p, verified=verified_ago is not None)
        if verified_ago is not None:
            Session.update(verified_at=dt.datetime.utcnow() - verified_ago).where(
                Session.id == new.session.id).execute()
    return {"Cookie": f"cf_session={new.token}", "X-CSRF-Token": new.session.csrf_token}


def test_unverified_patient_cannot_share_a_download(live, world):
    body = {"study_uid": world.study_a, "allow_download": True}
    # a WeChat visit (bound, not verified now) and a verification 11 minutes old
    for ago in (None, dt.timedelta(minutes=11)):
        st, out = call(live, "POST", "/api/patient/shares", _patient_headers(world.patient_a, ago),
                       body)
        assert st == 403 and "验证" in out["error"], (ago, out)
        assert call(live, "POST", "/api/patient/shares",
                    _patient_headers(world.patient_a, ago),
                    {"study_uid": world.study_a})[0] == 201
    fresh = _patient_headers(world.patient_a, dt.timedelta(minutes=1))
    assert call(live, "POST", "/api/patient/shares", fresh, body)[0] == 201
