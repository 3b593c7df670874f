"""Bad input and attack, over EVERY route of the running app (enumerated from its route
table, so routes added later are covered): SQL injection and XSS payloads in every path
parameter, query parameter and JSON body field; path traversal; oversized bodies; CSRF;
session fixation; IDOR across patients, shares and exams; brute force; open redirects; error
pages. None may produce a 500, leak internals, or reach another patient's data."""
from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest
import requests

from models.db import database
from models.schema import Exam, Instance, Patient, Series
from models.sessions import create_session
from tests.conftest import make_staff, staff_session, staff_token
from tests.dicom_factory import ct_bytes
from tests.security.routes import (GENERIC_QUERY, KNOWN_FINDINGS, PAYLOADS, SQLI, TRAVERSAL,
                                   XSS, World, check_response, fill_path, known_finding,
                                   operations)

pytestmark = pytest.mark.db


@pytest.fixture
def live(ctx, monkeypatch):
    """The live server as `serve` builds it (hardened static file handler)."""
    import functools

    import server.app
    from server.handlers.base import StaticFiles
    from tests.conftest import LiveServer
    monkeypatch.setattr(server.app, "make_app", functools.partial(
        server.app.make_app, static_handler_class=StaticFiles))
    s = LiveServer(ctx)
    s.token = staff_token()
    yield s
    s.stop()


@pytest.fixture
def world(live, catalog, tmp_path):
    from adapters.importer import Importer
    src = tmp_path / "in"
    src.mkdir()
    for tag, pid, acc in (("1", "PA001", "ACC-A"), ("2", "PB002", "ACC-B")):
        for i in range(2):
            (src / f"{tag}{i}.dcm").write_bytes(ct_bytes(
                patient_id=pid, accession=acc, study_uid=f"1.2.99.{tag}",
                series_uid=f"1.2.99.{tag}.1", sop_uid=f"1.2.99.{tag}.1.{i}", z=float(i)))
    Importer(catalog).run([src])
    with database.connection_context():
        for tag in ("1", "2"):
            exam = Exam.get(Exam.study_uid == f"1.2.99.{tag}")
            catalog.store_report(exam, findings="所见", impression="印象",
                                 pdf=b"%PDF-1.4 x\n%%EOF\n")
    return World("1.2.99.1", "1.2.99.1.1", "1.2.99.1.1.0", "1.2.99.2", "1.2.99.2.1",
                 "1.2.99.2.1.0", "PA001", "PB002")


def _session_cookie(kind, **kw):
    with database.connection_context():
        new = create_session(kind, verified=True, **kw)
    return new.token, new.session.csrf_token


def patient_session(pid):
    with database.connection_context():
        p = Patient.get(Patient.patient_id == pid)
    return _session_cookie("patient", patient=p)


def share_session(study_uid):
    from models.schema import Share
    import datetime as dt
    import secrets
    with database.connection_context():
        exam = Exam.get(Exam.study_uid == study_uid)
        sh = Share.create(exam=exam, token_hash=secrets.token_hex(32),
                          code_hash=secrets.token_hex(32), include_images=True,
                          allow_download=True, max_opens=5, opens=1,
                          expires_at=dt.datetime.utcnow() + dt.timedelta(days=1),
                          created_by_kind="staff", created_by="doctor1")
    return _session_cookie("share", share=sh)


def send(live, method, path, *, body=None, raw=None, headers=None, cookie=None, csrf=None,
         token=None):
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    if cookie:
        h["Cookie"] = f"cf_session={cookie}"
    if csrf:
        h["X-CSRF-Token"] = csrf
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
    try:
        conn.request(method.upper(), path, body=data, headers=h)
        try:
            r = conn.getresponse()
        except http.client.RemoteDisconnected:
            # Tornado's HTTP layer drops requests whose header block passes 64 KiB
            assert len(path) + sum(len(k) + len(v) for k, v in h.items()) > 60_000, path[:200]
            return 431, {}, b""
        return r.status, r.headers, r.read()
    finally:
        conn.close()


PATH_PAYLOADS = set(SQLI[:3] + XSS[:2] + TRAVERSAL + ["", "A" * 5000, "\x00", "-1"])


def _mutating_skip(op):
    # sign-out would end the session the pass is using; the rest is fair game
    return "logout" in op["path"] or known_finding(op)


def test_injection_payloads_on_every_route(live, world):
    app_ops = operations(live.server.request_callback)
    assert len(app_ops) > 20
    # admins sign in (they hold no API token): a session cookie and its CSRF token each
    admin = {r: staff_session(f"adm_{r}", (r,)) for r in ("sysadmin", "secadmin", "auditadmin")}
    pat_cookie, pat_csrf = patient_session(world.patient_a)
    problems, sent = [], 0
    for op in app_ops:
        if _mutating_skip(op):
            continue
        m = op["method"]
        principals = [("doctor", {"token": live.token}), ("anonymous", {}),
                      ("patient", {"cookie": pat_cookie, "csrf": pat_csrf})]
        if any(k in op["path"] for k in ("/admin", "/staff", "/security")):
            principals += [(r, {"cookie": c, "csrf": x}) for r, (c, x) in admin.items()]
        base_path = fill_path(op, world)
        query_names = list(dict.fromkeys(op["query"] + list(GENERIC_QUERY)))
        for who, cred in principals:
            payloads = PAYLOADS if who == "doctor" else SQLI[:2] + XSS[:1] + TRAVERSAL[:1]
            for payload in payloads:
                # every query parameter at once
                q = urllib.parse.urlencode({n: payload for n in query_names})
                body = {f: payload for f in op["body"]} if m != "get" else None
                if m != "get" and not body:
                    body = {"x": payload}
                st, h, b = send(live, m, f"{base_path}?{q}", body=body, **cred)
                sent += 1
                problems += check_response(f"{who} {m.upper()} {base_path}?<{payload[:20]}>",
                                           st, h, b, payload)
                # every path parameter, one at a time (path patterns refuse most payloads
                # before a handler runs, so a representative subset is enough here)
                if payload not in PATH_PAYLOADS:
                    continue
                for name, _rx in op["path_params"]:
                    p = fill_path(op, world, override={name: payload})
                    st, h, b = send(live, m, p, body=body, **cred)
                    sent += 1
                    problems += check_response(f"{who} {m.upper()} {p[:120]}", st, h, b,
                                               payload)
    assert not problems, f"{len(problems)} problems in {sent} requests:\n" + \
        "\n".join(dict.fromkeys(problems))


def test_json_bodies_of_wrong_shape(live, world):
    problems = []
    for op in operations(live.server.request_callback):
        if op["method"] == "get" or _mutating_skip(op):
            continue
        path = fill_path(op, world)
        for raw in (b"[]", b"\"text\"", b"{", b"\xff\xfe", b"null", b"1e999",
                    json.dumps({f: {"$gt": ""} for f in op["body"] or ["x"]}).encode(),
                    json.dumps({f: ["a", "b"] for f in op["body"] or ["x"]}).encode(),
                    json.dumps({f: 10 ** 40 for f in op["body"] or ["x"]}).encode()):
            st, h, b = send(live, op["method"], path, raw=raw, token=live.token,
                            headers={"Content-Type": "application/json"})
            problems += check_response(f"{op['method'].upper()} {path} {raw[:20]!r}", st, h, b)
    assert not problems, "\n".join(dict.fromkeys(problems))


def test_path_traversal_never_reaches_files(live, world):
    secrets_on_disk = (b"root:x:0:0", b"SETTINGS_BY_NAME", b"[extensions]", b"PRIVATE KEY")
    problems = []
    paths = ["/static/" + t for t in TRAVERSAL] + [
        "/static/..%2f..%2fserver%2fconfig.py", "/static/%2e%2e/%2e%2e/server/config.py",
        "/static/../../server/config.py", "/static//etc/passwd", "/../../etc/passwd",
        "/static/staff/../../../conf/cloudfilm.toml", "/%2e%2e/%2e%2e/etc/passwd"]
    for op in operations(live.server.request_callback):
        for name, _rx in op["path_params"]:
            for t in TRAVERSAL:
                paths.append(fill_path(op, world, override={name: t}))
                paths.append(fill_path(op, world).replace(
                    urllib.parse.quote(fill_path(op, world).split("/")[-1], safe=""), t, 1))
    for p in dict.fromkeys(paths):
        st, h, b = send(live, "GET", p, token=live.token)
        problems += check_response(f"GET {p}", st, h, b)
        if any(s in b for s in secrets_on_disk):
            problems.append(f"GET {p}: served a file outside the web folder")
    assert not problems, "\n".join(problems)


def test_zip_entries_cannot_escape(ctx, catalog, tmp_path):
    import zipfile
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i, name in enumerate(("../../../evil.dcm", "/tmp/abs-evil.dcm",
                                  "..\\..\\win-evil.dcm", "ok/good.dcm")):
            zf.writestr(name, ct_bytes(study_uid="1.2.98.1", series_uid="1.2.98.2",
                                       sop_uid=f"1.2.98.3.{i}"))
    from adapters.importer import Importer
    before = {p for p in tmp_path.parent.rglob("*evil*")}
    summary = Importer(catalog).run([z])
    after = {p for p in tmp_path.parent.rglob("*evil*")}
    assert after == before, after - before
    import pathlib
    assert not pathlib.Path("/tmp/abs-evil.dcm").exists()
    with database.connection_context():
        paths = [i.file_path for i in Instance.select()]
    assert all(p.startswith("dicom/1.2.98.1/1.2.98.2/") and ".." not in p for p in paths)
    # the safe entry is imported (stored by its UIDs, never by the entry's name); the three
    # unsafe entries are refused with the reason, not silently dropped
    assert summary.imported == 1 and len(summary.rejected) == 3, summary
    assert all("unsafe path" in why for _name, why in summary.rejected)


def test_oversized_bodies_refused_on_every_route(live, world):
    big = json.dumps({"x": "A" * (3 << 20)}).encode()        # 3 MiB of JSON
    problems = []
    for op in operations(live.server.request_callback):
        if op["method"] == "get" or _mutating_skip(op):
            continue
        path = fill_path(op, world)
        st, h, b = send(live, op["method"], path, raw=big, token=live.token,
                        headers={"Content-Type": "application/json"})
        problems += check_response(f"{op['method'].upper()} {path} 3 MiB", st, h, b)
        if st < 400 and "/import/" not in path:
            problems.append(f"{op['method'].upper()} {path}: accepted a 3 MiB JSON body")
    assert not problems, "\n".join(problems)


def test_csrf_on_every_unsafe_route(live, world):
    make_staff("csrfdoc", ("doctor",), "Csrf-Doc-Pass-1")
    s = requests.Session()
    r = s.post(live.url + "/api/auth/login",
               json={"username": "csrfdoc", "password": "Csrf-Doc-Pass-1"}, timeout=30)
    cookie, csrf = s.cookies["cf_session"], r.json()["csrf_token"]
    problems = []
    from server.handlers.base import BaseHandler
    for op in operations(live.server.request_callback):
        if op["method"] == "get":
            continue
        path = fill_path(op, world)
        body = {f: "x" for f in op["body"]} or {"x": "x"}
        if op["handler"].prepare is not BaseHandler.prepare:
            # its own authentication (e.g. the HMAC-signed import API): cookies do nothing
            st, _, b = send(live, op["method"], path, body=body, cookie=cookie, csrf=csrf,
                            headers={"Origin": "https://evil.example"})
            if st < 400 or st >= 500:
                problems.append(f"{op['method'].upper()} {path}: cookie-only request -> {st}")
            continue
        if not op["handler"].session_free:
            st, _, b = send(live, op["method"], path, body=body, cookie=cookie)
            if st != 403:
                problems.append(f"{op['method'].upper()} {path}: no CSRF token -> {st}")
            st, _, b = send(live, op["method"], path, body=body, cookie=cookie, csrf="wrong")
            if st != 403:
                problems.append(f"{op['method'].upper()} {path}: wrong CSRF token -> {st}")
        # session-free routes (share status/open, identity verification) start a session and
        # act on none: same origin and a JSON body protect them, below and in the form test
        st, _, b = send(live, op["method"], path, body=body, cookie=cookie, csrf=csrf,
                        headers={"Origin": "https://evil.example"})
        if st != 403:
            problems.append(f"{op['method'].upper()} {path}: cross-site Origin -> {st}")
        # without a session: a cross-site HTML form (urlencoded) is refused
        st, _, b = send(live, op["method"], path, raw=b"a=1",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
        if st not in (401, 403, 404, 415) or st < 400:
            problems.append(f"{op['method'].upper()} {path}: form post without session -> {st}")
    assert s.get(live.url + "/api/auth/me", timeout=30).status_code == 200   # still signed in
    assert not problems, "\n".join(problems)


def test_session_fixation(live):
    make_staff("fixdoc", ("doctor",), "Fix-Doc-Pass-1")
    planted = "attacker-chosen-session-id-0123456789abcdef"
    pat_cookie, _ = (None, None)
    r = requests.post(live.url + "/api/auth/login", cookies={"cf_session": planted},
                      json={"username": "fixdoc", "password": "Fix-Doc-Pass-1"}, timeout=30)
    assert r.status_code == 200
    issued = r.cookies["cf_session"]
    assert issued != planted and len(issued) >= 40
    assert requests.get(live.url + "/api/auth/me", cookies={"cf_session": planted},
                        timeout=30).status_code == 401
    # a real session the attacker started in the victim's browser is ended by the login
    with database.connection_context():
        from models.schema import StaffUser
        other = create_session("staff", staff_user=StaffUser.get(StaffUser.username == "fixdoc"))
    r = requests.post(live.url + "/api/auth/login", cookies={"cf_session": other.token},
                      json={"username": "fixdoc", "password": "Fix-Doc-Pass-1"}, timeout=30)
    assert r.status_code == 403            # a signed-in browser needs its CSRF token even here
    r = requests.post(live.url + "/api/auth/login", cookies={"cf_session": other.token},
                      headers={"X-CSRF-Token": other.session.csrf_token},
                      json={"username": "fixdoc", "password": "Fix-Doc-Pass-1"}, timeout=30)
    assert r.status_code == 200 and r.cookies["cf_session"] != other.token
    assert requests.get(live.url + "/api/auth/me", cookies={"cf_session": other.token},
                        timeout=30).status_code == 401
    assert requests.get(live.url + "/api/auth/me", cookies={"cf_session": r.cookies[
        "cf_session"]}, timeout=30).status_code == 200


def test_idor_patient_and_share_cannot_reach_other_exams(live, world):
    """A verified patient A and a share visitor of A's exam ask every route for B's exam."""
    pa, pa_csrf = patient_session(world.patient_a)
    sa, sa_csrf = share_session(world.study_a)
    leaks = []
    b_markers = (world.patient_b.encode(), world.study_b.encode(), b"ACC-B")
    for op in operations(live.server.request_callback):
        if op["method"] != "get" or not op["path_params"] and "study_uid" not in op["query"]:
            continue
        own = fill_path(op, world)
        other = fill_path(op, world, other=True)
        q = "?study_uid=" + world.study_b if "study_uid" in op["query"] else ""
        for who, cookie in (("patient A", pa), ("share of A", sa)):
            st, h, b = send(live, "GET", other + q, cookie=cookie)
            html = (h.get("Content-Type") or "").startswith("text/html")
            # HTML pages are empty shells (their data comes from the API checked here too)
            if 200 <= st < 300 and other != own and not html:
                leaks.append(f"{who}: GET {other}{q} -> {st}")
            markers = b_markers[::2] if html else b_markers
            if any(m in b for m in markers) and st < 400:
                leaks.append(f"{who}: GET {other}{q} shows B's identifiers")
            leaks += check_response(f"{who} GET {other}", st, h, b)
    # the positive control: A's own exam is readable by A (so the test can fail)
    st, _, b = send(live, "GET", f"/api/studies/{world.study_a}", cookie=pa)
    assert st == 200 and world.study_a.encode() in b
    assert not leaks, "\n".join(leaks)


def test_brute_force_share_code_is_locked(live, world):
    routes = {op["path"] for op in operations(live.server.request_callback)}
    assert "/api/share/open" in routes and "/api/shares" in routes, "share routes missing"
    st, _, b = send(live, "POST", "/api/shares", body={"study_uid": world.study_a},
                    token=live.token)
    assert st == 201, b
    created = json.loads(b)
    token = created["url"].rstrip("/").split("/")[-1]
    code = created["code"]
    wrong = f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"
    statuses = [send(live, "POST", "/api/share/open", body={"token": token, "code": wrong})[0]
                for _ in range(8)]
    assert statuses[0] in (401, 403) and statuses[-1] == 429, statuses
    st, _, b = send(live, "POST", "/api/share/open", body={"token": token, "code": code})
    assert st == 429, "the right code must not open a locked share"


def test_brute_force_identity_checks_limited_per_ip(live, world):
    routes = {op["path"] for op in operations(live.server.request_callback)}
    assert "/api/verify" in routes, "patient verification route missing"
    statuses = []
    for i in range(30):
        statuses.append(send(live, "POST", "/api/verify",
                             body={"accession": f"NOPE-{i}", "id_number": "110101199003074477",
                                   "phone": "13800138000", "sms_code": f"{i:06d}"})[0])
    assert all(s < 500 for s in statuses)
    assert statuses[-1] == 429, statuses


def test_password_brute_force_locks(live):
    make_staff("bfdoc", ("doctor",), "Brute-Force-Pass-1")
    codes = [requests.post(live.url + "/api/auth/login", json={"username": "bfdoc",
                                                                "password": f"guess-{i}"},
                           timeout=30).status_code for i in range(6)]
    assert codes[:4] == [401] * 4 and codes[4:] == [423, 423]
    r = requests.post(live.url + "/api/auth/login",
                      json={"username": "bfdoc", "password": "Brute-Force-Pass-1"}, timeout=30)
    assert r.status_code == 423


def test_no_open_redirect(live, world):
    evil = ["https://evil.example/", "//evil.example", "/\\evil.example", "\\\\evil.example",
            "javascript:alert(1)", "https:evil.example", "/%2F%2Fevil.example"]
    problems = []
    for op in operations(live.server.request_callback):
        if op["method"] != "get" or op["media_type"] not in ("text/html", "application/json"):
            continue
        path = fill_path(op, world)
        for e in evil:
            for name in ("next", "redirect", "url"):
                st, h, b = send(live, "GET", f"{path}?{name}={urllib.parse.quote(e)}",
                                token=live.token)
                loc = h.get("Location") or ""
                if 300 <= st < 400 and (urllib.parse.urlsplit(loc).netloc
                                        or loc.startswith(("//", "/\\", "\\", "javascript:"))):
                    problems.append(f"GET {path}?{name}={e} redirects to {loc}")
    # after sign-in the server itself never redirects anywhere
    make_staff("rdoc", ("doctor",), "Landing-Pass-1")
    r = requests.post(live.url + "/api/auth/login?next=https://evil.example",
                      json={"username": "rdoc", "password": "Landing-Pass-1",
                            "next": "https://evil.example"}, allow_redirects=False, timeout=30)
    assert r.status_code == 200 and "Location" not in r.headers
    assert not problems, "\n".join(problems)


def test_error_pages_show_no_internals(live, world):
    problems = []
    ops = operations(live.server.request_callback)
    methods = {}
    for o in ops:
        methods.setdefault(o["pattern"], set()).add(o["method"])
    for op in {o["pattern"]: o for o in ops}.values():
        path = fill_path(op, world)
        allowed = methods[op["pattern"]]
        for m in ("get", "post", "put", "delete", "patch"):
            if m in allowed:
                continue
            st, h, b = send(live, m, path, token=live.token,
                            body={} if m != "get" else None)
            if st != 405:
                problems.append(f"{m.upper()} {path}: expected 405, got {st}")
            problems += check_response(f"{m.upper()} {path}", st, h, b)
    for p in ("/static/nope.js", "/static/staff/nope.css", "/no/such/page", "/api/nope",
              "/favicon.ico", "/robots.txt"):
        st, h, b = send(live, "GET", p)
        problems += check_response(f"GET {p}", st, h, b)
    st, h, b = send(live, "GET", "/", raw=None, headers={"Host": "x" * 5000})
    problems += check_response("GET / huge Host", st, h, b)
    # malformed HTTP is answered by Tornado's HTTP layer without details
    import socket
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(b"GARBAGE / HTTP/9.9\r\nHost: x\r\n\r\n")
        raw = sock.recv(65536)
    assert b"Traceback" not in raw and b"TornadoServer" not in raw
    assert not problems, "\n".join(dict.fromkeys(problems))


def test_security_headers_on_every_route(live, world):
    problems = []
    for op in operations(live.server.request_callback):
        path = fill_path(op, world)
        st, h, b = send(live, op["method"], path, token=live.token,
                        body={} if op["method"] != "get" else None)
        for k, want in (("X-Content-Type-Options", "nosniff"),
                        ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY")):
            if h.get(k) != want:
                problems.append(f"{op['method'].upper()} {path} ({st}): {k}={h.get(k)}")
        csp = h.get("Content-Security-Policy") or ""
        if "default-src 'self'" not in csp or "frame-ancestors 'none'" not in csp:
            problems.append(f"{op['method'].upper()} {path} ({st}): CSP {csp!r}")
        if (h.get("Content-Type") or "").startswith("application/json") and \
                op["path"].startswith("/api/") and "openapi" not in op["path"] and \
                "no-store" not in (h.get("Cache-Control") or ""):
            problems.append(f"{op['method'].upper()} {path} ({st}): JSON without no-store")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("key", sorted(KNOWN_FINDINGS))
@pytest.mark.xfail(strict=True, reason="reported finding in another area, awaiting its fix")
def test_known_findings(live, world, key):
    """Each known finding still reproduces (when fixed, this XPASSes and fails: remove the
    entry from KNOWN_FINDINGS so the generic tests cover the route again)."""
    method, template = key
    op = next(o for o in operations(live.server.request_callback)
              if (o["method"], o["path"]) == key)
    admin = staff_token("kf_admin", ("doctor",))
    problems = []
    for raw in (b'{"field": {"a": 1}, "reason": "x"}', b'{"field": ["a"], "reason": "x"}'):
        st, h, b = send(live, method, fill_path(op, world), raw=raw, token=admin,
                        headers={"Content-Type": "application/json"})
        problems += check_response(f"{method} {template}", st, h, b)
    assert not problems, "\n".join(problems)


def test_default_app_serves_static_files_hardened(ctx):
    """serve uses base.StaticFiles; make_app's default (server/app.py) should too."""
    from server.app import make_app
    from server.handlers.base import StaticFiles
    app = make_app(ctx)
    assert app.settings["static_handler_class"] is StaticFiles


def test_every_navigable_error_is_an_html_page(live, world):
    """A browser that navigates to any GET route (a link, a QR code, a bookmark, a download
    after its 10 minutes) and is refused sees a page in its language with a next step,
    never raw JSON; the same route still answers API clients with the JSON error shape."""
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    problems, pages = [], 0
    for op in operations(live.server.request_callback):
        if op["method"] != "get":
            continue
        for other in (False, True):
            path = fill_path(op, world, other=other)
            st, h, b = send(live, "get", path, headers=browser)
            if st < 400:
                continue
            ctype = h.get("Content-Type", "")
            text = b.decode("utf-8", "replace")
            if op["path"] == "/wechat/callback":
                continue               # Tencent's servers call it, never a browser
            if not ctype.startswith("text/html"):
                problems.append(f"GET {path}: {st} {ctype}: {text[:100]}")
                continue
            if "cf-error-page" in text and 'id="next-steps"' not in text or "CSRF" in text:
                problems.append(f"GET {path}: page without a next step: {text[:100]}")
            pages += 1
    st, h, _ = send(live, "get", f"/api/studies/{world.study_a}",
                    headers={"Accept": "application/json"})
    assert st == 401 and h["Content-Type"].startswith("application/json")
    assert pages > 20
    assert not problems, "\n".join(problems)
