"""Every route of the application x every staff role (and anonymous) -> expected status.

Routes come from server.app.make_routes, so a route added later fails this test until it is
classified in EXPECTED. Parameterised paths are filled with the demo exam's UIDs. Unsafe
methods send an empty JSON object with a valid CSRF token: an allowed role then gets the
route's validation error (400), a refused one 401/403, which is what this test is about.
Print the observed table with MATRIX_DRAFT=1 when classifying new routes.
"""
from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

import pytest

from .demo_server import drop_mysql, session_cookie, start_demo_server

pytestmark = pytest.mark.db

WHO = ("anon", "frontdesk", "doctor", "sysadmin", "secadmin", "auditadmin")
METHODS = ("get", "post", "put", "patch", "delete")
STUDY = "1.2.826.0.1.3680043.10.1373.1.1"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    server, ctx, name = start_demo_server(tmp_path_factory.mktemp("matrix"))
    yield server, ctx
    server.stop()
    ctx.close()
    drop_mysql(name)


def fill(pattern: str, ids: dict) -> str:
    """A concrete path for a route pattern (groups filled in order)."""
    uids = iter([ids["study"], ids["series"], ids["sop"]])
    out, i = [], 0
    pat = pattern.rstrip("$").lstrip("^")
    while i < len(pat):
        c = pat[i]
        if c == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(pat[j], 0) if pat[j - 1] != "\\" else 0
                j += 1
            group = pat[i:j]
            if group.startswith("([0-9][0-9.]{0,63}(?:"):
                value = ids["study"]
            elif group == "([0-9][0-9.]{0,63})":
                value = next(uids)
            elif group == "([a-z]{1,16})":
                value = "axial" if "/mpr/" in pat else "patient"
            elif group == "([^/]{1,64})":
                value = ids["patient_id"]
            elif group.startswith("([A-Za-z0-9_.-]"):
                value = "matrix_target"
            elif group.startswith("([A-Za-z0-9_\\-]"):
                value = "x" * 20
            elif group in ("([0-9]{1,12})",):
                value = "999999"
            else:
                m = re.match(r"\(\[0-9-?\]\{(\d),", group)
                value = "0" if m and "{1,2}" in group or "{1,5}" in group else "1"
            out.append(value)
            i = j
        elif c == "\\":
            out.append(pat[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def call(base, method, path, cookie=None, csrf=None):
    headers = {"Accept": "*/*"}
    data = None
    if method not in ("GET",):
        data = b"{}"
        headers["Content-Type"] = "application/json"
    if cookie:
        headers["Cookie"] = cookie
        if csrf:
            headers["X-CSRF-Token"] = csrf

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    opener = urllib.request.build_opener(NoRedirect())
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with opener.open(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_every_route_by_role(demo):
    server, ctx = demo
    from models.accounts import create_user
    from models.schema import Exam, Instance, Patient, RuntimeSetting, Series
    exam = Exam.get(Exam.study_uid == STUDY)
    series = Series.select().where(Series.exam == exam).order_by(Series.id).first()
    inst = Instance.select().where(Instance.series == series).order_by(Instance.id).first()
    ids = {"study": STUDY, "series": series.series_uid, "sop": inst.sop_uid,
           "patient_id": Patient.get_by_id(exam.patient_id).patient_id}
    create_user("matrix_target", "Target-Pass-1", ["doctor"], must_change_password=False)
    from server.app import make_routes
    observed, missing = {}, []
    for spec in make_routes(ctx):
        pattern, handler = spec[0], spec[1]
        for m in METHODS:
            if not any(m in c.__dict__ for c in handler.__mro__
                       if c.__module__.startswith("server.")):
                continue
            path = fill(pattern, ids)
            row = []
            for who in WHO:
                cookie = csrf = None
                if who != "anon":
                    cookie, csrf = session_cookie(f"matrix_{who}", [who])
                row.append(call(server.url, m.upper(), path, cookie, csrf))
            observed[(m.upper(), pattern)] = tuple(row)
    if os.environ.get("MATRIX_DRAFT"):
        for k, v in observed.items():
            print(f"    ({k[0]!r}, {k[1]!r}): {v},")
    unknown = [k for k in observed if k not in EXPECTED]
    assert not unknown, f"routes not classified in EXPECTED (add them): {unknown}"
    wrong = {k: (observed[k], EXPECTED[k]) for k in observed if observed[k] != EXPECTED[k]}
    assert not wrong, "route (observed, expected) by " + ",".join(WHO) + ":\n" + \
        "\n".join(f"{k}: {v}" for k, v in wrong.items())
    stale = [k for k in EXPECTED if k not in observed]
    assert not stale, f"EXPECTED names routes that no longer exist: {stale}"
    # admin pages and APIs: never reachable by the non-admin roles, and vice versa
    for (method, pattern), row in observed.items():
        if pattern.startswith(("/api/admin/", "/api/staff/users", "/api/staff/tokens")) or \
                pattern in ("/staff/admin", "/staff/security", "/staff/audit"):
            if pattern != "/api/admin/downloads":
                assert row[1] in (401, 403, 404) and row[2] in (401, 403, 404), (pattern, row)


# (method, pattern): statuses for anon, frontdesk, doctor, sysadmin, secadmin, auditadmin
EXPECTED = {
    ('GET', '/healthz'): (200, 200, 200, 200, 200, 200),
    ('GET', '/readyz'): (200, 200, 200, 200, 200, 200),
    # from loopback and the admin allow-list only, whoever asks (tests/server/test_metrics.py)
    ('GET', '/metrics'): (200, 200, 200, 200, 200, 200),
    ('GET', '/api/studies'): (401, 200, 200, 403, 403, 403),
    ('GET', '/api/studies/([0-9][0-9.]{0,63})'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances/([0-9][0-9.]{0,63})/frames/([0-9-]{1,7})/rendered'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances/([0-9][0-9.]{0,63})/rendered'): (401, 200, 200, 403, 403, 403),
    ('GET', '/wado'): (401, 400, 400, 400, 400, 400),   # no query: requestType missing
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances/([0-9][0-9.]{0,63})/thumbnail'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/thumbnail'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/thumbnail'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances/([0-9][0-9.]{0,63})/frames/([0-9]{1,7})/tiles/([0-9]{1,2})/([0-9]{1,5})/([0-9]{1,5})'): (401, 200, 200, 403, 403, 403),
    # DICOMweb QIDO/WADO/STOW (server/handlers/dicomweb.py); bulkdata's tag is not filled
    ('GET', '/dicomweb/studies'): (401, 200, 200, 403, 403, 403),
    ('POST', '/dicomweb/studies'): (401, 415, 415, 403, 403, 403),
    ('GET', '/dicomweb/series'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/instances'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/instances'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})'): (401, 200, 200, 403, 403, 403),
    ('POST', '/dicomweb/studies/([0-9][0-9.]{0,63})'): (401, 415, 415, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances/([0-9][0-9.]{0,63})'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/metadata'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/metadata'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances/([0-9][0-9.]{0,63})/metadata'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances/([0-9][0-9.]{0,63})/frames/([0-9]{1,7}(?:,[0-9]{1,7}){0,99})'): (401, 200, 200, 403, 403, 403),
    ('GET', '/dicomweb/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances/([0-9][0-9.]{0,63})/bulkdata/([0-9A-Fa-f]{8})'): (404, 404, 404, 404, 404, 404),
    # OHIF viewer (server/handlers/ohif.py): ohif_enabled is off here, so 404 for everyone;
    # staff-only when on (tests/e2e/test_ohif.py). /api/ohif tells the doctor page.
    ('GET', '/ohif/?'): (404, 404, 404, 404, 404, 404),
    ('GET', '/ohif/(.+)'): (404, 404, 404, 404, 404, 404),
    ('GET', '/api/ohif'): (401, 200, 200, 200, 200, 200),
    ('GET', '/api/render/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances/([0-9][0-9.]{0,63})/info'): (401, 200, 200, 403, 403, 403),
    ('GET', '/api/render/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances/([0-9][0-9.]{0,63})/frames/([0-9]{1,7})/values'): (401, 200, 200, 403, 403, 403),
    ('GET', '/api/render/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/mpr/([a-z]{1,16})'): (401, 200, 200, 403, 403, 403),
    ('GET', '/api/render/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/mpr/([a-z]{1,16})/geometry'): (401, 200, 200, 403, 403, 403),
    ('GET', '/api/render/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/mip'): (401, 200, 200, 403, 403, 403),
    ('GET', '/api/render/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/volume'): (401, 200, 200, 403, 403, 403),
    ('GET', '/api/studies/([0-9][0-9.]{0,63})/report\\.pdf'): (401, 200, 200, 403, 403, 403),
    ('GET', '/api/studies/([0-9][0-9.]{0,63})/report/pages'): (401, 200, 200, 403, 403, 403),
    ('GET', '/api/studies/([0-9][0-9.]{0,63})/report/pages/([0-9]{1,3})'): (401, 200, 200, 403, 403, 403),
    ('GET', '/'): (302, 200, 200, 200, 200, 200),
    ('GET', '/film/([0-9][0-9.]{0,63})'): (200, 200, 200, 200, 200, 200),
    ('GET', '/film/exam/([0-9]{1,12})'): (200, 200, 200, 200, 200, 200),
    ('GET', '/api/exams/([0-9]{1,12})'): (401, 404, 404, 404, 404, 404),
    ('GET', '/entry'): (200, 200, 200, 200, 200, 200),
    ('GET', '/api/session/csrf'): (200, 200, 200, 200, 200, 200),
    ('GET', '/api/film/context/([0-9][0-9.]{0,63})'): (401, 200, 200, 403, 403, 403),
    ('GET', '/api/film/context/exam/([0-9]{1,12})'): (401, 404, 404, 404, 404, 404),
    ('GET', '/api/hospital'): (200, 200, 200, 200, 200, 200),
    ('GET', '/hospital/logo'): (404, 404, 404, 404, 404, 404),
    ('GET', '/workspace'): (200, 200, 200, 200, 200, 200),
    ('GET', '/workspace/([0-9][0-9.]{0,63}(?:,[0-9][0-9.]{0,63}){0,7})'): (200, 200, 200, 200, 200, 200),
    ('POST', '/api/auth/login'): (400, 400, 400, 400, 400, 400),
    ('POST', '/api/auth/logout'): (200, 200, 200, 200, 200, 200),
    ('GET', '/api/auth/me'): (401, 200, 200, 200, 200, 200),
    ('POST', '/api/auth/password'): (401, 400, 400, 400, 400, 400),
    ('GET', '/login'): (200, 200, 200, 200, 200, 200),
    ('GET', '/staff'): (302, 302, 302, 302, 302, 302),
    ('GET', '/api/staff/nav'): (401, 200, 200, 200, 200, 200),
    ('GET', '/api/staff/users'): (401, 403, 403, 200, 403, 403),
    ('POST', '/api/staff/users'): (401, 403, 403, 400, 403, 403),
    ('GET', '/api/staff/users/([A-Za-z0-9_.-]{1,64})'): (401, 403, 403, 200, 403, 403),
    ('PATCH', '/api/staff/users/([A-Za-z0-9_.-]{1,64})'): (401, 403, 403, 400, 403, 403),
    ('POST', '/api/staff/users/([A-Za-z0-9_.-]{1,64})/password-reset'): (401, 403, 403, 200, 403, 403),
    ('POST', '/api/staff/users/([A-Za-z0-9_.-]{1,64})/tokens'): (401, 403, 403, 400, 403, 403),
    ('GET', '/api/staff/tokens'): (401, 403, 403, 200, 403, 403),
    ('POST', '/api/staff/me/tokens'): (401, 400, 400, 403, 403, 403),
    ('POST', '/api/staff/tokens/([0-9]{1,12})/revoke'): (401, 403, 403, 404, 403, 403),
    ('GET', '/api/staff/patients'): (401, 403, 400, 403, 403, 403),
    ('GET', '/api/staff/patients/([^/]{1,64})/exams'): (401, 403, 200, 403, 403, 403),
    ('GET', '/api/staff/studies/([0-9][0-9.]{0,63})/versions'): (401, 200, 200, 403, 403, 403),
    # send to workstation (server/handlers/send.py): doctors only
    ('GET', '/api/staff/dicom-destinations'): (401, 403, 200, 403, 403, 403),
    ('POST', '/api/staff/studies/([0-9][0-9.]{0,63})/send'): (401, 403, 400, 403, 403, 403),
    ('GET', '/api/staff/sends'): (401, 403, 200, 403, 403, 403),
    # saved measurements and their SR export (server/handlers/measurements.py): doctors only;
    # no study_uid / an empty body: 400; measurement 999999: 404
    ('GET', '/api/measurements'): (401, 403, 400, 403, 403, 403),
    ('POST', '/api/measurements'): (401, 403, 400, 403, 403, 403),
    ('PUT', '/api/measurements/([0-9]{1,12})'): (401, 403, 404, 403, 403, 403),
    ('DELETE', '/api/measurements/([0-9]{1,12})'): (401, 403, 404, 403, 403, 403),
    ('POST', '/api/measurements/sr'): (401, 403, 400, 403, 403, 403),
    ('POST', '/api/staff/patients/([^/]{1,64})/unmask'): (401, 400, 400, 403, 403, 403),
    ('POST', '/api/staff/patients/([^/]{1,64})/check-id'): (401, 400, 400, 403, 403, 403),
    ('GET', '/api/admin/settings'): (401, 403, 403, 200, 403, 403),
    ('PUT', '/api/admin/settings'): (401, 403, 403, 400, 403, 403),
    ('GET', '/api/admin/health'): (401, 403, 403, 200, 403, 403),
    ('GET', '/staff/frontdesk'): (302, 200, 403, 403, 403, 403),
    ('GET', '/staff/doctor'): (302, 403, 200, 403, 403, 403),
    ('GET', '/staff/admin'): (302, 403, 403, 200, 403, 403),
    ('GET', '/staff/security'): (302, 403, 403, 403, 200, 403),
    ('GET', '/staff/audit'): (302, 403, 403, 403, 403, 200),
    ('GET', '/api/shares'): (401, 400, 400, 403, 403, 403),
    ('POST', '/api/shares'): (401, 400, 400, 403, 403, 403),
    ('POST', '/api/shares/([0-9]{1,12})/revoke'): (401, 404, 404, 403, 403, 403),
    ('POST', '/api/shares/([0-9]{1,12})/unlock'): (401, 404, 404, 403, 403, 403),
    ('POST', '/api/share/status'): (404, 404, 404, 404, 404, 404),
    ('POST', '/api/share/open'): (404, 404, 404, 404, 404, 404),
    ('GET', '/api/share/me'): (401, 403, 403, 403, 403, 403),
    ('POST', '/api/share/reverify'): (401, 403, 403, 403, 403, 403),
    ('POST', '/api/qr'): (401, 400, 400, 400, 400, 400),
    ('POST', '/api/exams/([0-9][0-9.]{0,63})/images'): (401, 400, 403, 403, 403, 403),
    ('GET', '/s/([A-Za-z0-9_\\-]{16,64})'): (200, 200, 200, 200, 200, 200),
    ('GET', '/share/desk'): (200, 200, 200, 200, 200, 200),
    ('GET', '/pacs/a/([A-Za-z0-9._\\-]{1,200})'): (302, 302, 302, 302, 302, 302),
    ('GET', '/pacs/u/([A-Za-z0-9._\\-]{1,200})'): (302, 302, 302, 302, 302, 302),
    ('GET', '/pacs/t/([A-Za-z0-9._\\-]{1,200})'): (404, 404, 404, 404, 404, 404),
    ('GET', '/api/verify/methods'): (200, 200, 200, 200, 200, 200),
    ('POST', '/api/verify/sms'): (400, 400, 400, 400, 400, 400),
    ('POST', '/api/verify'): (400, 400, 400, 400, 400, 400),
    ('GET', '/api/patient/me'): (401, 403, 403, 403, 403, 403),
    ('GET', '/api/patient/shares'): (401, 403, 403, 403, 403, 403),
    ('POST', '/api/patient/shares'): (401, 403, 403, 403, 403, 403),
    ('POST', '/api/patient/shares/([0-9]{1,12})/revoke'): (401, 403, 403, 403, 403, 403),
    ('GET', '/api/patient/downloads'): (401, 403, 403, 403, 403, 403),
    ('POST', '/api/patient/logout'): (200, 200, 200, 200, 200, 200),
    ('GET', '/api/admin/verification'): (401, 403, 403, 200, 403, 403),
    ('PUT', '/api/admin/verification'): (401, 403, 403, 400, 403, 403),
    ('GET', '/portal'): (200, 200, 200, 200, 200, 200),
    # patient-level QR codes (R1.4; the matrix uses patient 999999: unknown)
    ('GET', '/api/patients/([0-9]{1,12})/qr'): (401, 404, 404, 403, 403, 403),
    ('POST', '/api/patients/([0-9]{1,12})/qr'): (401, 404, 404, 403, 403, 403),
    ('GET', '/api/patients/qr'): (401, 400, 400, 403, 403, 403),
    ('POST', '/api/patients/qr/([0-9]{1,12})/revoke'): (401, 404, 404, 403, 403, 403),
    ('GET', '/api/patient/qr'): (401, 403, 403, 403, 403, 403),
    ('POST', '/api/patient/qr'): (401, 403, 403, 403, 403, 403),
    ('POST', '/api/patient/qr/([0-9]{1,12})/revoke'): (401, 403, 403, 403, 403, 403),
    ('POST', '/api/p/status'): (404, 404, 404, 404, 404, 404),
    ('POST', '/api/p/open'): (404, 404, 404, 404, 404, 404),
    ('GET', '/p/([A-Za-z0-9_\\-]{16,64})'): (404, 404, 404, 404, 404, 404),
    # wechat (issue 9; WeChat not configured in this demo: its endpoints answer 404)
    ('GET', '/wechat/?'): (200, 200, 200, 200, 200, 200),
    ('GET', '/wechat/oauth/start'): (302, 302, 302, 302, 302, 302),
    ('GET', '/wechat/oauth/callback'): (404, 404, 404, 404, 404, 404),
    ('GET', '/wechat/callback'): (404, 404, 404, 404, 404, 404),
    ('POST', '/wechat/callback'): (404, 404, 404, 404, 404, 404),
    ('GET', '/wechat/admin'): (200, 200, 200, 200, 200, 200),
    ('GET', '/api/wechat/me'): (200, 200, 200, 200, 200, 200),
    ('POST', '/api/wechat/bind'): (404, 404, 404, 404, 404, 404),
    ('POST', '/api/wechat/switch'): (401, 401, 401, 401, 401, 401),
    ('POST', '/api/wechat/unbind'): (401, 401, 401, 401, 401, 401),
    ('POST', '/api/wechat/notify'): (401, 401, 401, 401, 401, 401),
    ('POST', '/api/wechat/logout'): (200, 200, 200, 200, 200, 200),
    ('GET', '/api/wechat/jssdk'): (404, 404, 404, 404, 404, 404),
    ('GET', '/api/admin/wechat'): (401, 403, 403, 200, 403, 403),
    ('POST', '/api/admin/wechat/check'): (401, 403, 403, 200, 403, 403),
    ('GET', '/api/download/studies/([0-9][0-9.]{0,63})\\.zip'): (401, 403, 200, 403, 403, 403),
    ('GET', '/api/download/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})\\.zip'): (401, 403, 200, 403, 403, 403),
    ('GET', '/api/download/studies/([0-9][0-9.]{0,63})/series/([0-9][0-9.]{0,63})/instances/([0-9][0-9.]{0,63})\\.zip'): (401, 403, 200, 403, 403, 403),
    ('GET', '/api/downloads'): (401, 200, 403, 403, 403, 200),
    ('POST', '/api/import/v1/([a-z]{1,16})'): (404, 404, 404, 404, 404, 404),
    ('GET', '/api/admin/integration'): (401, 403, 403, 200, 403, 403),
    ('GET', '/api/admin/peers'): (401, 403, 403, 200, 403, 403),
    ('POST', '/api/admin/peers'): (401, 403, 403, 400, 403, 403),
    ('DELETE', '/api/admin/peers/([^/]{1,64})'): (401, 403, 403, 404, 403, 403),
    ('GET', '/api/studies/([0-9][0-9.]{0,63})/report/versions'): (401, 200, 200, 403, 403, 403),
    ('POST', '/api/admin/integration/outbox/([0-9]{1,12})/resend'): (401, 403, 403, 404, 403, 403),
    ('GET', '/api/pacs/patients/([^/]{1,64})/studies'): (401, 403, 404, 403, 403, 403),
    ('GET', '/api/pacs/studies/([0-9][0-9.]{0,63})/retrieve'): (401, 200, 200, 403, 403, 403),
    ('POST', '/api/pacs/studies/([0-9][0-9.]{0,63})/retrieve'): (401, 404, 404, 403, 403, 403),
    ('GET', '/api/admin/audit'): (401, 403, 403, 403, 403, 200),
    ('GET', '/api/admin/audit\\.csv'): (401, 403, 403, 403, 403, 200),
    ('GET', '/api/admin/audit/verify'): (401, 403, 403, 403, 403, 200),
    ('GET', '/api/admin/downloads'): (401, 200, 403, 403, 403, 200),
    ('GET', '/api/admin/security'): (401, 403, 403, 403, 200, 403),
    ('PUT', '/api/admin/security'): (401, 403, 403, 403, 400, 403),
    ('POST', '/api/auth/totp'): (400, 400, 400, 400, 400, 400),
    ('POST', '/api/auth/totp/enrol'): (401, 200, 200, 200, 200, 200),
    ('POST', '/api/auth/totp/confirm'): (401, 401, 401, 401, 401, 401),
    ('GET', '/api/security/totp'): (401, 200, 200, 200, 200, 200),
    ('POST', '/api/security/totp/disable'): (401, 400, 400, 400, 400, 400),
    ('POST', '/api/security/totp/recovery-codes'): (401, 400, 400, 400, 400, 400),
    ('POST', '/api/security/users/([A-Za-z0-9_.-]{2,32})/totp/reset'): (401, 403, 403, 403, 200, 403),
    ('GET', '/api/security/integrity'): (401, 403, 403, 200, 200, 403),
    ('POST', '/api/security/integrity/([0-9]{1,12})/resolve'): (401, 403, 403, 404, 404, 403),
    ('GET', '/api/openapi\\.json'): (200, 200, 200, 200, 200, 200),
}
