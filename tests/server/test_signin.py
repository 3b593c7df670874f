"""server/signin.py, the one sign-in service, called directly (no HTTP): one lock-out counter
for wrong passwords and wrong codes in any mix, unknown and locked accounts, the signed
tickets, and a session start that ends the browser's previous session."""
import time

import pytest

from models.schema import AuditEvent, StaffUser
from models.sessions import load_session
from server import signin
from tests.conftest import make_staff

pytestmark = pytest.mark.db

PW = "Doctor-Pass-1"
IP = "127.0.0.1"


def events(action, **match):
    q = AuditEvent.select().where(AuditEvent.action == action).order_by(AuditEvent.id)
    return [e for e in q if all(getattr(e, k) == v for k, v in match.items())]


def policy(ctx):
    return signin._policy(ctx)


def test_lockout_counts_passwords_and_codes_on_one_counter(ctx):
    user = make_staff("doc1", ("doctor",), PW)
    n = int(policy(ctx)["lockout_failures"])
    ticket = signin.make_ticket(ctx, user, "totp")
    # alternate: wrong password, wrong code, ... — all on the same counter
    for k in range(n - 1):
        if k % 2 == 0:
            r = signin.password_step(ctx, "doc1", "wrong", ip=IP)
            assert (r.outcome, r.step) == ("bad", "password")
        else:
            r = signin.code_step(ctx, ticket, code="000000", ip=IP)
            assert (r.outcome, r.step) == ("bad", "code")
        assert StaffUser.get_by_id(user.id).failed_logins == k + 1
    r = signin.code_step(ctx, ticket, recovery_code="aaaaa-bbbbb", ip=IP)
    assert r.outcome == "locked" and r.refusal().status == 423
    assert "验证码错误次数过多" in r.refusal().message
    fresh = StaffUser.get_by_id(user.id)
    assert fresh.failed_logins == 0 and fresh.locked_until is not None
    locked = events("account.locked", object_id="doc1")
    assert len(locked) == 1 and locked[0].detail == f"{n} failed sign-ins"
    assert [e.detail for e in events("login", actor_id="doc1", outcome="fail")] == \
        ["wrong password"] * (n // 2)
    assert {e.detail for e in events("login.second_factor", actor_id="doc1")} == \
        {"wrong TOTP code", "wrong recovery code"}
    # locked: the right password is refused (same scrypt work), the ticket too
    r = signin.password_step(ctx, "doc1", PW, ip=IP)
    assert r.outcome == "locked" and r.refusal().status == 423
    assert "连续" in r.refusal().message and events("login", outcome="refused")[-1].detail == \
        "account locked"
    with pytest.raises(signin.SignInRefused) as exc:
        signin.read_ticket(ctx, ticket, ("totp",))
    assert exc.value.status == 423


def test_password_failures_lock_then_success_clears(ctx):
    make_staff("doc2", ("doctor",), PW)
    n = int(policy(ctx)["lockout_failures"])
    for _ in range(n - 1):
        assert signin.password_step(ctx, "doc2", "nope", ip=IP).outcome == "bad"
    r = signin.password_step(ctx, "doc2", PW, ip=IP)
    assert r.outcome == "ok" and r.session is not None and r.refusal() is None
    assert StaffUser.get(StaffUser.username == "doc2").failed_logins == 0
    for _ in range(n - 1):
        signin.password_step(ctx, "doc2", "nope", ip=IP)
    assert signin.password_step(ctx, "doc2", "nope", ip=IP).outcome == "locked"


def test_unknown_disabled_and_missing(ctx):
    r = signin.password_step(ctx, "nobody", "whatever", ip=IP)
    assert r.outcome == "bad" and r.refusal().status == 401
    assert r.refusal().message == signin.MSG_BAD_PASSWORD
    assert events("login", actor_id="nobody")[-1].detail == "unknown or disabled user"
    u = make_staff("gone", ("doctor",), PW)
    StaffUser.update(active=False).where(StaffUser.id == u.id).execute()
    assert signin.password_step(ctx, "gone", PW, ip=IP).outcome == "bad"
    with pytest.raises(signin.SignInRefused) as exc:
        signin.password_step(ctx, "", "x", ip=IP)
    assert exc.value.status == 400


def test_admin_network_and_second_factor(ctx):
    make_staff("sec9", ("secadmin",), "Sec-Admin-Pass-9")
    r = signin.password_step(ctx, "sec9", "Sec-Admin-Pass-9", ip="203.0.113.9")
    assert r.outcome == "network" and r.refusal().status == 403
    r = signin.password_step(ctx, "sec9", "Sec-Admin-Pass-9", ip=IP)
    assert (r.outcome, r.second_factor, r.session) == ("second-factor", "enrol", None)
    assert signin.read_ticket(ctx, r.ticket, ("enrol",)).username == "sec9"


def test_ticket_tamper_purpose_expiry_and_password_change(ctx, monkeypatch):
    user = make_staff("doc3", ("doctor",), PW)
    t = signin.make_ticket(ctx, user, "totp")
    assert signin.read_ticket(ctx, t, ("totp",)).id == user.id
    for bad in (t[:-2] + ("00" if not t.endswith("00") else "11"), "x" + t, "garbage", "",
                "a.b"):
        with pytest.raises(signin.SignInRefused) as exc:
            signin.read_ticket(ctx, bad, ("totp",))
        assert exc.value.status == 401
    with pytest.raises(signin.SignInRefused):
        signin.read_ticket(ctx, t, ("enrol",))            # another step's ticket
    later = time.time() + signin.TICKET_TTL_S + 5
    monkeypatch.setattr(signin.time, "time", lambda: later)
    with pytest.raises(signin.SignInRefused):
        signin.read_ticket(ctx, t, ("totp",))             # expired
    monkeypatch.undo()
    signin.change_password(ctx, user.id, PW, "Doctor-Pass-2-New", ip=IP)
    with pytest.raises(signin.SignInRefused):
        signin.read_ticket(ctx, t, ("totp",))             # the password changed since


def test_session_start_ends_the_previous_one_and_sign_out(ctx):
    user = make_staff("doc4", ("doctor",), PW)
    first = signin.password_step(ctx, "doc4", PW, ip=IP).session
    assert load_session(first.token) is not None
    second = signin.start_staff_session(ctx, user, old=first.token, ip=IP, how="test")
    assert load_session(first.token) is None and load_session(second.token) is not None
    assert events("login", actor_id="doc4", outcome="ok")[-1].detail == "test"
    life = second.session.expires_at - second.session.created_at
    assert life.total_seconds() == int(policy(ctx)["session_absolute_hours"]) * 3600
    assert signin.sign_out(ctx, (second.token,), actor=("staff", "doc4"), ip=IP) == 1
    assert load_session(second.token) is None
    assert len(events("logout", actor_id="doc4")) == 1
    assert signin.sign_out(ctx, (second.token,), actor=("staff", "doc4"), ip=IP) == 0
    assert len(events("logout", actor_id="doc4")) == 1


def test_change_password_rules(ctx):
    user = make_staff("doc5", ("doctor",), PW)
    for old, new, status in ((PW + "x", "Another-Pass-1", 400), (PW, PW, 400),
                             (PW, "short", 400)):
        with pytest.raises(signin.SignInRefused) as exc:
            signin.change_password(ctx, user.id, old, new, ip=IP)
        assert exc.value.status == status
    signin.change_password(ctx, user.id, PW, "Another-Pass-1", ip=IP)
    assert signin.password_step(ctx, "doc5", "Another-Pass-1", ip=IP).outcome == "ok"
    assert events("password.change", actor_id="doc5")
