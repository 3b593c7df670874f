"""Strong authentication: TOTP for admin roles (enrolment with QR, recovery codes, replay),
password history, forced change after the maximum age, lock-out on wrong codes."""
import base64
import datetime as dt
import time

import pyotp
import pytest
import requests

from models.db import database
from models.schema import AuditEvent, StaffUser
from tests.conftest import make_staff

pytestmark = pytest.mark.db


def post(live, path, body, session=None, headers=None):
    s = session or requests.Session()
    return s.post(live.url + path, json=body, headers=headers or {}, timeout=30)


def code_for(secret, offset_steps=0):
    totp = pyotp.TOTP(secret)
    return totp.at(time.time() + offset_steps * totp.interval)


def enrol_admin(live, username, password):
    """Sign in an admin the first time: password, enrol, confirm. Returns (session, secret,
    recovery codes, csrf)."""
    s = requests.Session()
    r = post(live, "/api/auth/login", {"username": username, "password": password}, s)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["second_factor"] == "enrol" and "cf_session" not in s.cookies
    r = post(live, "/api/auth/totp/enrol", {"ticket": j["ticket"]}, s)
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["otpauth_uri"].startswith("otpauth://totp/") and e["secret"] in e["otpauth_uri"]
    svg = base64.b64decode(e["qr_svg"].split(",", 1)[1])
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
    r = post(live, "/api/auth/totp/confirm", {"ticket": j["ticket"], "code": "000000"}, s)
    assert r.status_code == 401
    r = post(live, "/api/auth/totp/confirm", {"ticket": j["ticket"],
                                              "code": code_for(e["secret"])}, s)
    assert r.status_code == 200, r.text
    c = r.json()
    assert len(c["recovery_codes"]) == 10 and len(set(c["recovery_codes"])) == 10
    assert "cf_session" in s.cookies
    return s, e["secret"], c["recovery_codes"], c["csrf_token"]


def test_admin_must_enrol_then_needs_code(live):
    make_staff("sec1", ("secadmin",), "Sec-Admin-Pass-1")
    s, secret, codes, csrf = enrol_admin(live, "sec1", "Sec-Admin-Pass-1")
    me = s.get(live.url + "/api/auth/me", timeout=30).json()
    assert me["user"]["username"] == "sec1"
    st = s.get(live.url + "/api/security/totp", timeout=30).json()
    assert st["enabled"] and st["required"] and st["recovery_codes_left"] == 10

    # next sign-in: the password alone gives no session
    s2 = requests.Session()
    r = post(live, "/api/auth/login", {"username": "sec1", "password": "Sec-Admin-Pass-1"}, s2)
    j = r.json()
    assert j["second_factor"] == "totp" and "cf_session" not in s2.cookies
    assert s2.get(live.url + "/api/auth/me", timeout=30).status_code == 401
    # the code used at enrolment cannot be replayed
    r = post(live, "/api/auth/totp", {"ticket": j["ticket"], "code": code_for(secret)}, s2)
    assert r.status_code == 401
    # a forged or altered ticket is refused
    bad = j["ticket"][:-2] + ("00" if not j["ticket"].endswith("00") else "11")
    r = post(live, "/api/auth/totp", {"ticket": bad, "code": code_for(secret, 1)}, s2)
    assert r.status_code == 401
    # the next step's code works once
    r = post(live, "/api/auth/totp", {"ticket": j["ticket"], "code": code_for(secret, 1)}, s2)
    assert r.status_code == 200, r.text
    assert s2.get(live.url + "/api/auth/me", timeout=30).json()["user"]["username"] == "sec1"
    s3 = requests.Session()
    j3 = post(live, "/api/auth/login", {"username": "sec1", "password": "Sec-Admin-Pass-1"},
              s3).json()
    assert post(live, "/api/auth/totp", {"ticket": j3["ticket"], "code": code_for(secret, 1)},
                s3).status_code == 401
    # a recovery code works once
    r = post(live, "/api/auth/totp", {"ticket": j3["ticket"], "recovery_code": codes[0]}, s3)
    assert r.status_code == 200 and r.json()["recovery_codes_left"] == 9
    s4 = requests.Session()
    j4 = post(live, "/api/auth/login", {"username": "sec1", "password": "Sec-Admin-Pass-1"},
              s4).json()
    assert post(live, "/api/auth/totp", {"ticket": j4["ticket"], "recovery_code": codes[0]},
                s4).status_code == 401
    with database.connection_context():
        actions = [a.action for a in AuditEvent.select().order_by(AuditEvent.id)]
    assert "totp.enrol" in actions and "login.second_factor" in actions


def test_wrong_codes_lock_the_account(live):
    make_staff("audit1", ("auditadmin",), "Audit-Admin-Pass-1")
    _s, secret, _codes, _ = enrol_admin(live, "audit1", "Audit-Admin-Pass-1")
    s = requests.Session()
    j = post(live, "/api/auth/login", {"username": "audit1", "password": "Audit-Admin-Pass-1"},
             s).json()
    statuses = [post(live, "/api/auth/totp", {"ticket": j["ticket"], "code": "123456"},
                     s).status_code for _ in range(5)]
    assert statuses[:4] == [401] * 4 and statuses[4] == 423
    # even the right code does not help while locked
    assert post(live, "/api/auth/totp", {"ticket": j["ticket"], "code": code_for(secret, 1)},
                s).status_code == 423
    with database.connection_context():
        assert AuditEvent.select().where(AuditEvent.action == "account.locked").exists()


def test_doctor_optional_enrolment_and_reset_by_secadmin(live):
    make_staff("doc9", ("doctor",), "Doctor-Pass-9")
    s = requests.Session()
    r = post(live, "/api/auth/login", {"username": "doc9", "password": "Doctor-Pass-9"}, s)
    assert r.status_code == 200 and "second_factor" not in r.json()
    csrf = r.json()["csrf_token"]
    h = {"X-CSRF-Token": csrf}
    assert s.get(live.url + "/api/security/totp", timeout=30).json()["enabled"] is False
    e = post(live, "/api/security/totp/recovery-codes", {"password": "Doctor-Pass-9"}, s, h)
    assert e.status_code == 409
    e = post(live, "/api/auth/totp/enrol", {}, s, h).json()
    r = post(live, "/api/auth/totp/confirm", {"code": code_for(e["secret"])}, s, h)
    assert r.status_code == 200 and len(r.json()["recovery_codes"]) == 10
    j = post(live, "/api/auth/login", {"username": "doc9", "password": "Doctor-Pass-9"},
             requests.Session()).json()
    assert j["second_factor"] == "totp"
    # a security admin (signed in; admins hold no API token) resets it; the doctor signs in
    # with the password again
    from tests.conftest import staff_headers
    r = requests.post(live.url + "/api/security/users/doc9/totp/reset",
                      headers=staff_headers("secx", ("secadmin",)), timeout=30)
    assert r.status_code == 200 and r.json()["was_enabled"] is True
    r = requests.post(live.url + "/api/security/users/doc9/totp/reset",
                      headers={"Authorization": f"Bearer {live.token}"}, timeout=30)
    assert r.status_code == 403              # a doctor may not
    r = post(live, "/api/auth/login", {"username": "doc9", "password": "Doctor-Pass-9"})
    assert "second_factor" not in r.json()


def _login_session(live, user, password):
    s = requests.Session()
    r = post(live, "/api/auth/login", {"username": user, "password": password}, s)
    assert r.status_code == 200, r.text
    return s, {"X-CSRF-Token": r.json()["csrf_token"]}


def test_password_history_forbids_last_five(live):
    make_staff("doc5", ("doctor",), "First-Pass-0")
    s, h = _login_session(live, "doc5", "First-Pass-0")
    current = "First-Pass-0"
    for i in range(1, 5):
        new = f"Next-Pass-{i}"
        r = post(live, "/api/auth/password", {"old_password": current, "new_password": new},
                 s, h)
        assert r.status_code == 200, r.text
        current = new
    # the current password and the four before it are refused ...
    for old in ("First-Pass-0", "Next-Pass-1", "Next-Pass-3"):
        r = post(live, "/api/auth/password", {"old_password": current, "new_password": old},
                 s, h)
        assert r.status_code == 400 and "reuse" in r.json()["error"], old
    # ... a weak one by the complexity rule ...
    r = post(live, "/api/auth/password", {"old_password": current, "new_password": "abcdefgh"},
             s, h)
    assert r.status_code == 400
    # ... and after a fifth change the oldest one is allowed again
    r = post(live, "/api/auth/password", {"old_password": current, "new_password": "Next-Pass-5"},
             s, h)
    assert r.status_code == 200
    r = post(live, "/api/auth/password", {"old_password": "Next-Pass-5",
                                          "new_password": "First-Pass-0"}, s, h)
    assert r.status_code == 200, r.text


def test_password_expires_after_max_age(live):
    u = make_staff("doc6", ("doctor",), "Aging-Pass-6")
    with database.connection_context():
        StaffUser.update(password_changed_at=dt.datetime.utcnow() - dt.timedelta(days=91)).where(
            StaffUser.id == u.id).execute()
    s = requests.Session()
    r = post(live, "/api/auth/login", {"username": "doc6", "password": "Aging-Pass-6"}, s)
    assert r.status_code == 200 and r.json()["user"]["must_change_password"] is True
    # nothing but the password change is allowed now
    assert s.get(live.url + "/api/studies", timeout=30).status_code == 403
    r = post(live, "/api/auth/password", {"old_password": "Aging-Pass-6",
                                          "new_password": "Fresh-Pass-7"}, s,
             {"X-CSRF-Token": r.json()["csrf_token"]})
    assert r.status_code == 200
    assert s.get(live.url + "/api/studies", timeout=30).status_code == 200
    with database.connection_context():
        assert AuditEvent.select().where(AuditEvent.action == "password.expired").exists()
