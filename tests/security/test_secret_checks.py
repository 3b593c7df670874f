"""Every secret check is atomic, limited, audited and uniform (issue 14 item 8).

The penetration test found: 40 parallel wrong sign-ins checked 16 passwords (limit 5), a
share's lock reset after 15 minutes for ever (about 480 code guesses a day), the current
password on a change could be guessed without limit and without audit, and answers told
unknown accounts from known ones. Here, through the real HTTP server (threads against a live
Tornado server), we count how many secrets were really compared (the comparison functions
wrapped in-process) and assert at most the limit; SQLite and, with -m db, MariaDB.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyotp
import pytest
import requests

import models.shares as shares_mod
import server.signin as signin
from models.db import database
from models.schema import AuditEvent, Share, StaffUser
from tests.access import conftest as access
from tests.access.conftest import create_share, nid, staff
from tests.conftest import make_staff

pytestmark = pytest.mark.db

people = access.people        # two patients with an exam each (fixture)
sms = access.sms              # the hospital's SMS platform, faked (fixture)
OTHER_ID = nid("11010119900307447")

PARALLEL = 40
LIMIT = 5        # lockout_failures (default) = MAX_CODE_FAILURES = SMS_MAX_TRIES
PW = "Sesame-Open-123"


@pytest.fixture
def config(tmp_path, database_url):
    """As the shared fixture, with the per-address limit out of the way: these tests count
    the per-account, per-share and per-code limits alone."""
    from server.config import load_config
    return load_config(path=tmp_path / "none.toml", env={}, overrides={
        "database_url": database_url, "data_dir": str(tmp_path / "data"),
        "secret_key_file": str(tmp_path / "secret.key"), "demo_data": False,
        "render_threads": 2, "access_ip_max_failures": 100000})


class Counter:
    """Wraps module.name; counts the calls for which `which(*args)` is true. `slow`: each
    counted call takes 50 ms more, as long as a scrypt comparison (a fast comparison such as a
    TOTP code otherwise leaves a race too narrow to show reliably)."""

    def __init__(self, monkeypatch, module, name, which=lambda *a, **k: True, slow=False):
        self.n = 0
        self.lock = threading.Lock()
        inner = getattr(module, name)

        def wrapped(*a, **k):
            if which(*a, **k):
                with self.lock:
                    self.n += 1
                if slow:
                    time.sleep(0.05)
            return inner(*a, **k)
        monkeypatch.setattr(module, name, wrapped)


def parallel(fn, n=PARALLEL):
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, range(n)))


def audit_count(action, outcome=None, actor_id=None, object_id=None):
    with database.connection_context():
        q = AuditEvent.select().where(AuditEvent.action == action)
        if outcome:
            q = q.where(AuditEvent.outcome == outcome)
        if actor_id:
            q = q.where(AuditEvent.actor_id == actor_id)
        if object_id:
            q = q.where(AuditEvent.object_id == object_id)
        return q.count()


def login(live, username, password, session=None):
    return (session or requests).post(live.url + "/api/auth/login",
                                      json={"username": username, "password": password},
                                      timeout=120)


# staff: password, TOTP, recovery codes ----------------------------------------------------
def test_parallel_wrong_passwords_check_at_most_limit(live, monkeypatch):
    with database.connection_context():
        make_staff("racer", ("doctor",), PW)
    real = Counter(monkeypatch, signin, "verify_password",
                   lambda pw, stored: stored != signin._DUMMY_HASH)
    statuses = parallel(lambda i: login(live, "racer", f"Wrong-Guess-{i}").status_code)
    assert set(statuses) <= {401, 423} and 423 in statuses, statuses
    assert real.n <= LIMIT, f"{real.n} passwords compared under {PARALLEL} parallel guesses"
    assert audit_count("login", "fail", "racer") == real.n
    assert audit_count("account.locked") == 1
    r = login(live, "racer", PW)
    assert r.status_code == 423, "the right password must not open a locked account"
    assert real.n <= LIMIT


def _enrolled(ctx, username, password):
    from models.security import begin_enrolment, confirm_enrolment
    with database.connection_context():
        user = make_staff(username, ("doctor",), password)
        secret, _ = begin_enrolment(user, ctx.secret_key)
        codes = confirm_enrolment(user, ctx.secret_key, pyotp.TOTP(secret).now())
        assert codes
    return secret, codes


def _wrong_totp(secret):
    totp = pyotp.TOTP(secret)
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    valid = {totp.at(now + d * 30) for d in (-1, 0, 1)}
    return next(c for c in (f"{i:06d}" for i in range(1, 1000)) if c not in valid)


@pytest.mark.parametrize("field", ["code", "recovery_code"])
def test_parallel_wrong_second_factor_checks_at_most_limit(live, ctx, monkeypatch, field):
    secret, _ = _enrolled(ctx, "totpracer", PW)
    r = login(live, "totpracer", PW)
    assert r.status_code == 200 and r.json()["second_factor"] == "totp", r.text
    ticket = r.json()["ticket"]
    name = "verify_totp" if field == "code" else "use_recovery_code"
    real = Counter(monkeypatch, signin, name, slow=True)
    wrong = _wrong_totp(secret) if field == "code" else "abcde-fghjk"
    statuses = parallel(lambda i: requests.post(
        live.url + "/api/auth/totp", json={"ticket": ticket, field: wrong},
        timeout=120).status_code)
    assert set(statuses) <= {401, 423} and 423 in statuses, statuses
    assert real.n <= LIMIT, f"{real.n} codes compared under {PARALLEL} parallel guesses"
    assert audit_count("login.second_factor", "fail", "totpracer") == real.n
    assert audit_count("account.locked") == 1
    # the right code is refused now: the account is locked
    r = requests.post(live.url + "/api/auth/totp",
                      json={"ticket": ticket, "code": pyotp.TOTP(secret).now()}, timeout=60)
    assert r.status_code == 423


def test_change_password_guesses_lock_and_audit(live, monkeypatch):
    with database.connection_context():
        make_staff("changer", ("doctor",), PW)
    s = requests.Session()
    r = login(live, "changer", PW, s)
    assert r.status_code == 200, r.text
    s.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    real = Counter(monkeypatch, signin, "verify_password",
                   lambda pw, stored: stored != signin._DUMMY_HASH)
    statuses = [s.post(live.url + "/api/auth/password",
                       json={"old_password": f"Guess-Old-{i}", "new_password": "New-Pass-456!"},
                       timeout=60).status_code for i in range(7)]
    assert statuses == [400] * (LIMIT - 1) + [423] * 3, statuses
    assert real.n == LIMIT
    assert audit_count("password.change", "fail", "changer") == LIMIT
    assert audit_count("password.change", "refused", "changer") == 2
    assert audit_count("account.locked") == 1
    # the lock is the account's: the right password does not sign in either
    assert login(live, "changer", PW).status_code == 423
    r = s.post(live.url + "/api/auth/password",
               json={"old_password": PW, "new_password": "New-Pass-456!"},
               timeout=60)
    assert r.status_code == 423


@pytest.mark.parametrize("path,action", [("/api/security/totp/disable", "totp.disable"),
                                         ("/api/security/totp/recovery-codes",
                                          "totp.recovery_codes")])
def test_password_confirmations_count_and_audit(live, path, action):
    with database.connection_context():
        make_staff("confirmer", ("doctor",), PW)
    s = requests.Session()
    r = login(live, "confirmer", PW, s)
    s.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    statuses = [s.post(live.url + path, json={"password": f"Guess-{i}"}, timeout=60).status_code
                for i in range(LIMIT + 1)]
    assert statuses == [400] * (LIMIT - 1) + [423, 423], statuses
    assert audit_count(action, "fail", "confirmer") == LIMIT
    assert audit_count("account.locked") == 1


def test_parallel_change_password_guesses_check_at_most_limit(live, monkeypatch):
    with database.connection_context():
        make_staff("pchanger", ("doctor",), PW)
    s = requests.Session()
    r = login(live, "pchanger", PW, s)
    s.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    cookies = s.cookies.get_dict()
    headers = dict(s.headers)
    real = Counter(monkeypatch, signin, "verify_password",
                   lambda pw, stored: stored != signin._DUMMY_HASH)
    statuses = parallel(lambda i: requests.post(
        live.url + "/api/auth/password", cookies=cookies, headers=headers,
        json={"old_password": f"Guess-Old-{i}", "new_password": "New-Pass-456!"},
        timeout=120).status_code)
    assert set(statuses) <= {400, 423} and 423 in statuses, statuses
    assert real.n <= LIMIT


# shares: access codes, escalation, the front desk's unlock ---------------------------------
def _wrong(code):
    return f"{(int(code) + 1) % 10 ** len(code):06d}"


def test_parallel_wrong_share_codes_check_at_most_limit(live, people, monkeypatch):
    a, _ = people
    token, code, created = create_share(live, a.study_uid)
    compared = Counter(monkeypatch, shares_mod, "share_code_hash", slow=True)
    wrong = _wrong(code)
    statuses = parallel(lambda i: requests.post(
        live.url + "/api/share/open", json={"token": token, "code": wrong},
        timeout=120).status_code)
    assert set(statuses) <= {403, 429} and 429 in statuses, statuses
    assert compared.n <= LIMIT, f"{compared.n} codes compared under {PARALLEL} parallel guesses"
    sid = str(created["share"]["id"])
    assert audit_count("share.open", "fail", object_id=sid) == compared.n
    assert audit_count("share.locked", object_id=sid) == 1
    r = requests.post(live.url + "/api/share/open", json={"token": token, "code": code},
                      timeout=60)
    assert r.status_code == 429


class Clock:
    """models/shares.py's clock, moved forward by the test."""

    def __init__(self, monkeypatch):
        self.offset = dt.timedelta(0)
        real = shares_mod.utcnow
        monkeypatch.setattr(shares_mod, "utcnow", lambda: real() + self.offset)

    def forward(self, **kw):
        self.offset += dt.timedelta(**kw)


def test_share_lock_escalates_until_the_front_desk_unlocks(live, people, monkeypatch):
    a, _ = people
    token, code, created = create_share(live, a.study_uid, expires="30d")
    sid = created["share"]["id"]
    clock = Clock(monkeypatch)

    def try_code(c):
        return requests.post(live.url + "/api/share/open", json={"token": token, "code": c},
                             timeout=60)

    def five_wrong():
        out = [try_code(_wrong(code)) for _ in range(LIMIT)]
        assert [r.status_code for r in out] == [403] * (LIMIT - 1) + [429], \
            [r.status_code for r in out]
        return out[-1].json()["error"]

    first = five_wrong()
    assert "15 分钟" in first and "15 minutes" in first
    clock.forward(minutes=14)
    assert try_code(code).status_code == 429
    clock.forward(minutes=2)                         # the first lock lasted 15 minutes
    second = five_wrong()
    assert "1 小时" in second and "an hour" in second
    clock.forward(minutes=30)
    assert try_code(code).status_code == 429         # not after 15 minutes this time
    clock.forward(minutes=31)
    third = five_wrong()
    assert "服务台" in third and "front desk" in third
    clock.forward(days=20)
    r = try_code(code)
    assert r.status_code == 429 and "front desk" in r.json()["error"]
    # the front desk sees it and unlocks it (audited)
    desk = staff(live)
    listed = requests.get(live.url + f"/api/shares?study_uid={a.study_uid}", headers=desk,
                          timeout=30).json()["shares"]
    mine = next(s for s in listed if s["id"] == sid)
    assert mine["state"] == "locked" and mine["locked_until"] == "desk"
    assert mine["lock_count"] == 3
    auditor = staff(live, ("auditadmin",), "auditor1")     # no share.manage (route matrix)
    assert requests.post(live.url + f"/api/shares/{sid}/unlock", json={}, headers=auditor,
                         timeout=30).status_code == 403
    r = requests.post(live.url + f"/api/shares/{sid}/unlock", json={}, headers=desk, timeout=30)
    assert r.status_code == 200 and r.json()["share"]["state"] == "open", r.text
    assert audit_count("share.unlock", "ok", object_id=str(sid)) == 1
    assert audit_count("share.locked", object_id=str(sid)) == 3
    assert try_code(code).status_code == 200
    with database.connection_context():
        assert Share.get_by_id(sid).lock_count == 3      # the next lock again needs the desk


def test_wrong_code_answers_do_not_depend_on_the_share(live, people):
    a, b = people
    ta, ca, _ = create_share(live, a.study_uid)
    tb, cb, _ = create_share(live, b.study_uid)
    ra = requests.post(live.url + "/api/share/open", json={"token": ta, "code": _wrong(ca)},
                       timeout=30)
    rb = requests.post(live.url + "/api/share/open", json={"token": tb, "code": _wrong(cb)},
                       timeout=30)
    assert (ra.status_code, ra.json()) == (rb.status_code, rb.json())


# SMS codes ----------------------------------------------------------------------------------
def test_parallel_wrong_sms_codes_check_at_most_limit(live, people, sms, monkeypatch):
    a, _ = people
    r = requests.post(live.url + "/api/verify/sms", json={"phone": a.phone}, timeout=30)
    assert r.status_code == 200, r.text
    good = sms.code_for(a.phone)
    compared = Counter(monkeypatch, shares_mod, "_mac", lambda key, kind, *p: kind == "sms",
                       slow=True)
    wrong = _wrong(good)
    statuses = parallel(lambda i: requests.post(
        live.url + "/api/verify", json={"phone": a.phone, "sms_code": wrong},
        timeout=120).status_code)
    assert all(400 <= s < 500 for s in statuses), statuses
    assert compared.n <= LIMIT, f"{compared.n} SMS codes compared in {PARALLEL} parallel tries"
    r = requests.post(live.url + "/api/verify", json={"phone": a.phone, "sms_code": good},
                      timeout=30)
    assert r.status_code in (403, 429), "the code is void after the limit"
    with database.connection_context():
        row = shares_mod.SmsCode.select().order_by(shares_mod.SmsCode.id.desc()).first()
        assert row.voided and row.used_at is None and row.attempts == LIMIT


# enumeration ------------------------------------------------------------------------------
def test_unknown_account_answers_like_a_known_one(live, monkeypatch):
    with database.connection_context():
        make_staff("knownuser", ("doctor",), PW)
    scrypt = Counter(monkeypatch, signin, "verify_password")
    known = [login(live, "knownuser", f"Wrong-{i}") for i in range(LIMIT + 1)]
    n_known = scrypt.n
    unknown = [login(live, "nosuchuser", f"Wrong-{i}") for i in range(LIMIT + 1)]
    assert scrypt.n - n_known == n_known == LIMIT + 1      # the same work, one scrypt each
    assert [(r.status_code, r.json()) for r in known] == \
        [(r.status_code, r.json()) for r in unknown]
    assert known[-1].status_code == 423                    # locked looks the same too
    with database.connection_context():
        assert StaffUser.get_or_none(StaffUser.username == "nosuchuser") is None


def test_forged_pacs_tokens_answer_alike_for_known_and_unknown_exams(live, people):
    """A signed /pacs/t/ token is checked by its HMAC (128 bits: not guessable, so no attempt
    counter); a forged one says nothing about whether the accession number exists."""
    a, _ = people
    exp = int(dt.datetime.now(dt.timezone.utc).timestamp()) + 3600
    answers = [requests.get(live.url + f"/pacs/t/{acc}.{exp}.{'0' * 32}", timeout=30,
                            allow_redirects=False) for acc in (a.accession, "NO-SUCH-ACC")]
    assert [r.status_code for r in answers] == [404, 404]
    assert answers[0].content == answers[1].content


def test_unknown_patient_answers_like_wrong_identity_data(live, people):
    a, _ = people
    known = requests.post(live.url + "/api/verify",
                          json={"phone": a.phone, "id_number": OTHER_ID},
                          timeout=30)
    unknown = requests.post(live.url + "/api/verify",
                            json={"phone": "13700000000", "id_number": a.id_number},
                            timeout=30)
    nobody = requests.post(live.url + "/api/verify",
                           json={"phone": "13700000000", "id_number": OTHER_ID},
                           timeout=30)
    assert known.status_code == unknown.status_code == nobody.status_code == 403
    assert known.json() == unknown.json() == nobody.json()
