"""Shares: code, open count, expiry, revocation, lockout, per-IP limit, messages, audit,
QR codes, concurrency (SQLite and MariaDB), the image switch and the CLI."""
import concurrent.futures
import datetime as dt
import io
import json
import os
import subprocess

import pytest
import requests
from PIL import Image

from models.db import database
from models.schema import AuditEvent, Session, Share, utcnow
from tests.access.conftest import ROOT, create_share, open_share, staff

pytestmark = pytest.mark.db


def audit(action, outcome=None):
    q = AuditEvent.select().where(AuditEvent.action == action)
    if outcome:
        q = q.where(AuditEvent.outcome == outcome)
    return list(q)


def test_share_is_created_with_strong_token_and_hashed_code(live, people):
    a, _ = people
    token, code, d = create_share(live, a.study_uid, max_opens=3, expires="2d")
    assert len(token) >= 32 and len(code) == 6 and code.isdigit()
    sh = Share.get_by_id(d["share"]["id"])
    assert token not in sh.token_hash and code not in sh.code_hash
    assert len(sh.token_hash) == 64 and len(sh.code_hash) == 64
    assert d["share"]["max_opens"] == 3 and d["share"]["opens"] == 0
    exp = dt.datetime.fromisoformat(d["share"]["expires_at"].rstrip("Z"))
    assert abs((exp - utcnow()) - dt.timedelta(days=2)) < dt.timedelta(minutes=1)
    # QR codes: a PNG that decodes as an image and an SVG
    png = d["qr_png"].split(",", 1)[1]
    import base64
    img = Image.open(io.BytesIO(base64.b64decode(png)))
    assert img.size[0] > 100
    assert d["qr_svg"].startswith("<svg") and "path" in d["qr_svg"]
    assert audit("share.create")


def test_only_staff_with_share_manage_create(live, people):
    a, _ = people
    for role in ("sysadmin", "auditadmin"):
        r = requests.post(live.url + "/api/shares", json={"study_uid": a.study_uid},
                          headers=staff(live, (role,), "u_" + role), timeout=30)
        assert r.status_code == 403
    r = requests.post(live.url + "/api/shares", json={"study_uid": a.study_uid}, timeout=30)
    assert r.status_code == 401


def test_bad_share_options_are_refused_with_reason(live, people):
    a, _ = people
    h = staff(live)
    for body, word in (({"max_opens": 0}, "max opens"), ({"expires": "abc"}, "expiry"),
                       ({"expires": "400d"}, "between"), ({"max_opens": "5"}, "whole"),
                       ({"include_images": False, "allow_download": True}, "report-only")):
        r = requests.post(live.url + "/api/shares", json={"study_uid": a.study_uid, **body},
                          headers=h, timeout=30)
        assert r.status_code == 400 and word in r.json()["error"], (body, r.text)


def test_code_opens_counts_and_exhausts(live, people):
    a, _ = people
    token, code, _ = create_share(live, a.study_uid, max_opens=2)
    s1, r = open_share(live, token, code)
    assert r.status_code == 200 and r.json()["study_uid"] == a.study_uid
    assert "HttpOnly" in r.headers["Set-Cookie"]
    assert s1.get(live.url + f"/api/studies/{a.study_uid}").status_code == 200
    s2, r = open_share(live, token, code)
    assert r.status_code == 200 and r.json()["opens"] == 2
    s3, r = open_share(live, token, code)
    assert r.status_code == 410 and "打开次数已用完" in r.json()["error"]
    # the sessions already open keep working
    assert s1.get(live.url + f"/api/studies/{a.study_uid}").status_code == 200
    st = requests.post(live.url + "/api/share/status", json={"token": token}).json()
    assert st["state"] == "exhausted"
    assert len(audit("share.open", "ok")) == 2 and audit("share.open", "refused")


def test_wrong_unknown_expired_revoked_have_distinct_messages(live, people):
    a, _ = people
    token, code, d = create_share(live, a.study_uid, max_opens=5)
    msgs = {}
    _, r = open_share(live, token, "000000" if code != "000000" else "111111")
    msgs["wrong"] = (r.status_code, r.json()["error"])
    _, r = open_share(live, "x" * 32, code)
    msgs["unknown"] = (r.status_code, r.json()["error"])
    _, r = open_share(live, token, "12ab")
    msgs["malformed"] = (r.status_code, r.json()["error"])
    Share.update(expires_at=utcnow() - dt.timedelta(seconds=1)).where(
        Share.id == d["share"]["id"]).execute()
    _, r = open_share(live, token, code)
    msgs["expired"] = (r.status_code, r.json()["error"])
    token2, code2, d2 = create_share(live, a.study_uid)
    r = requests.post(live.url + f"/api/shares/{d2['share']['id']}/revoke", json={},
                      headers=staff(live), timeout=30)
    assert r.status_code == 200
    _, r = open_share(live, token2, code2)
    msgs["revoked"] = (r.status_code, r.json()["error"])
    assert msgs["wrong"][0] == 403 and "访问码错误" in msgs["wrong"][1]
    assert msgs["unknown"][0] == 404 and "分享链接无效" in msgs["unknown"][1]
    assert msgs["malformed"][0] == 400 and "6位数字" in msgs["malformed"][1]
    assert msgs["expired"][0] == 410 and "已过期" in msgs["expired"][1]
    assert msgs["revoked"][0] == 410 and "已被撤销" in msgs["revoked"][1]
    assert len({m for _, m in msgs.values()}) == 5
    for _, m in msgs.values():        # nothing about the patient
        assert "Test" not in m and a.patient_id not in m and "患者" not in m


def test_expiry_and_revocation_end_open_sessions(live, people):
    a, _ = people
    token, code, d = create_share(live, a.study_uid)
    s, r = open_share(live, token, code)
    url = live.url + f"/api/studies/{a.study_uid}"
    assert s.get(url).status_code == 200
    Share.update(expires_at=utcnow() - dt.timedelta(seconds=1)).where(
        Share.id == d["share"]["id"]).execute()
    live.ctx.principals.clear()
    assert s.get(url).status_code in (401, 403)
    token, code, d = create_share(live, a.study_uid)
    s, r = open_share(live, token, code)
    assert s.get(url).status_code == 200
    requests.post(live.url + f"/api/shares/{d['share']['id']}/revoke", json={},
                  headers=staff(live), timeout=30)
    assert s.get(url).status_code == 401
    assert Session.select().where((Session.share == d["share"]["id"])
                                  & Session.ended_at.is_null()).count() == 0
    assert audit("share.revoke")


def test_five_wrong_codes_lock_the_share(live, people):
    a, _ = people
    token, code, d = create_share(live, a.study_uid)
    wrong = "000000" if code != "000000" else "111111"
    for i in range(4):
        _, r = open_share(live, token, wrong)
        assert r.status_code == 403 and f"{4 - i} " in r.json()["error"]
    _, r = open_share(live, token, wrong)
    assert r.status_code == 429 and "锁定 15 分钟" in r.json()["error"]
    _, r = open_share(live, token, code)          # even the right code now waits
    assert r.status_code == 429
    locked = audit("share.locked")
    assert len(locked) == 1 and locked[0].object_id == str(d["share"]["id"])
    sh = Share.get_by_id(d["share"]["id"])
    assert sh.locked_until - utcnow() > dt.timedelta(minutes=14)
    Share.update(locked_until=utcnow() - dt.timedelta(seconds=1)).where(
        Share.id == sh.id).execute()
    _, r = open_share(live, token, code)
    assert r.status_code == 200


def test_per_ip_limit_across_shares(live, people):
    a, _ = people
    limit = live.ctx.config.access_ip_max_failures
    made = [create_share(live, a.study_uid) for _ in range(limit // 4 + 1)]
    fails = 0
    for token, code, _ in made:
        wrong = "000000" if code != "000000" else "111111"
        for _ in range(4):
            if fails == limit:
                break
            _, r = open_share(live, token, wrong)
            assert r.status_code == 403
            fails += 1
    token, code, _ = create_share(live, a.study_uid)
    _, r = open_share(live, token, code)
    assert r.status_code == 429 and "尝试次数过多" in r.json()["error"]


def test_ten_parallel_opens_of_a_three_open_share_give_three_sessions(live, people):
    a, _ = people
    token, code, d = create_share(live, a.study_uid, max_opens=3)

    def one(_):
        return open_share(live, token, code)[1].status_code
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        codes = list(ex.map(one, range(10)))
    assert sorted(codes) == [200] * 3 + [410] * 7, codes
    assert Share.get_by_id(d["share"]["id"]).opens == 3
    assert Session.select().where(Session.share == d["share"]["id"]).count() == 3


def test_open_share_service_is_atomic_under_threads(ctx, people):
    """The service verb itself, 10 threads with their own connections, no HTTP in between."""
    from models import shares as svc
    from models.schema import Exam
    a, _ = people
    new = svc.create_share(Exam.get(Exam.study_uid == a.study_uid), key=ctx.secret_key,
                           auditor=ctx.auditor, max_opens=3)

    def one(_):
        with database.connection_context():
            try:
                svc.open_share(new.token, new.code, key=ctx.secret_key, auditor=ctx.auditor,
                               ip="10.0.0.9", ip_limit=0)
                return "ok"
            except svc.AccessRefused as exc:
                return exc.reason
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        out = list(ex.map(one, range(10)))
    assert out.count("ok") == 3 and out.count("exhausted") == 7, out


def test_report_only_share_has_no_images(live, people):
    a, _ = people
    token, code, _ = create_share(live, a.study_uid, include_images=False)
    s, r = open_share(live, token, code)
    study = s.get(live.url + f"/api/studies/{a.study_uid}").json()
    assert study["report"] is not None
    frame = (f"/dicomweb/studies/{a.study_uid}/series/{a.series_uid}/instances/"
             f"{a.sop_uids[0]}/frames/1/rendered")
    assert s.get(live.url + frame).status_code == 403
    assert s.get(live.url + f"/api/studies/{a.study_uid}/report.pdf").status_code == 200


def test_image_switch(live, people):
    a, _ = people
    token, code, _ = create_share(live, a.study_uid, allow_download=True)
    s, _ = open_share(live, token, code)
    frame = (f"/dicomweb/studies/{a.study_uid}/series/{a.series_uid}/instances/"
             f"{a.sop_uids[0]}/frames/1/rendered")
    assert s.get(live.url + frame).status_code == 200
    url = live.url + f"/api/exams/{a.study_uid}/images"
    doc = {"Authorization": f"Bearer {live.token}"}      # doctors may not switch
    assert requests.post(url, json={"enabled": False}, headers=doc).status_code == 403
    assert requests.post(url, json={"enabled": "no"}, headers=staff(live)).status_code == 400
    r = requests.post(url, json={"enabled": False}, headers=staff(live))
    assert r.status_code == 200 and r.json()["images_enabled"] is False
    import time
    time.sleep(1.1)                                   # render lookups are cached for 1 s
    for path in (frame, f"/dicomweb/studies/{a.study_uid}/thumbnail",
                 f"/api/render/studies/{a.study_uid}/series/{a.series_uid}/mip",
                 f"/api/download/studies/{a.study_uid}.zip"):
        assert s.get(live.url + path).status_code == 403, path
    assert s.get(live.url + f"/api/studies/{a.study_uid}/report.pdf").status_code == 200
    assert s.get(live.url + f"/api/studies/{a.study_uid}").json()["series"] == []
    # staff still see the images
    assert live.get(frame)[0] == 200
    assert [e.detail for e in audit("exam.images")] == ["off"]
    requests.post(url, json={"enabled": True}, headers=staff(live))
    time.sleep(1.1)
    assert s.get(live.url + frame).status_code == 200


def test_qr_endpoint_only_for_our_links(live, people):
    a, _ = people
    h = staff(live)
    r = requests.post(live.url + "/api/qr", json={"text": live.ctx.config.base_url + "/s/abc",
                                                  "format": "svg"}, headers=h)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/svg+xml"
    r = requests.post(live.url + "/api/qr", json={"text": live.ctx.config.base_url + "/s/abc"},
                      headers=h)
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    r = requests.post(live.url + "/api/qr", json={"text": "https://evil.example/"}, headers=h)
    assert r.status_code == 400


def test_pacs_qr_signed_opens_unsigned_needs_verification(live, people):
    from models import shares as svc
    a, _ = people
    tok = svc.sign_pacs_token(live.ctx.secret_key, a.accession,
                              utcnow() + dt.timedelta(days=1))
    s = requests.Session()
    r = s.get(live.url + f"/pacs/t/{tok}", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == f"/film/{a.study_uid}"
    assert s.get(live.url + f"/api/studies/{a.study_uid}").status_code == 200
    # scanned again (or reloaded) in the same browser: no second open is counted
    r = s.get(live.url + f"/pacs/t/{tok}", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == f"/film/{a.study_uid}"
    from models.schema import Share
    assert [sh.opens for sh in Share.select()] == [1]
    bad = tok[:-1] + ("0" if tok[-1] != "0" else "1")
    r = requests.get(live.url + f"/pacs/t/{bad}", allow_redirects=False)
    assert r.status_code == 404
    old = svc.sign_pacs_token(live.ctx.secret_key, a.accession, utcnow() - dt.timedelta(1))
    assert requests.get(live.url + f"/pacs/t/{old}", allow_redirects=False).status_code == 410
    # unsigned accession: to the portal, where identity must be verified
    s2 = requests.Session()
    r = s2.get(live.url + f"/pacs/a/{a.accession}", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].startswith("/portal#exam=")
    assert "Set-Cookie" not in r.headers
    assert s2.get(live.url + f"/api/studies/{a.study_uid}").status_code == 401
    r = s2.post(live.url + "/api/verify", json={"phone": a.phone, "id_number": a.id_number,
                                                "exam_ref": f"accession:{a.accession}"})
    assert r.status_code == 200 and r.json()["open_study_uid"] == a.study_uid
    # a patient who does not own the printed exam gets the generic refusal
    _, b = people
    r = requests.post(live.url + "/api/verify", json={"phone": b.phone, "id_number": b.id_number,
                                                      "exam_ref": f"accession:{a.accession}"})
    assert r.status_code == 403 and "不匹配" in r.json()["error"]


def test_pacs_pattern_compiler():
    from server.handlers.shares import compile_pattern
    assert compile_pattern("/pacs/a/{accession}")[1:] == ("accession", "path", None)
    assert compile_pattern("/view?acc={accession}")[1:] == ("accession", "query", "acc")
    for bad in ("/x/{name}", "x/{accession}", "/a/{accession}/{token}"):
        with pytest.raises(ValueError):
            compile_pattern(bad)


def test_run_sh_share(config, people, tmp_path):
    a, _ = people
    env = dict(os.environ, CLOUDFILM_DATABASE_URL=config.database_url,
               CLOUDFILM_DATA_DIR=str(config.path("data_dir")),
               CLOUDFILM_SECRET_KEY_FILE=str(config.path("secret_key_file")),
               CLOUDFILM_DEMO_DATA="false", CLOUDFILM_PUBLIC_URL="https://film.example.org")
    p = subprocess.run([str(ROOT / "run.sh"), "share", a.accession, "--max-opens", "2",
                        "--expires", "3d", "--no-download"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["url"].startswith("https://film.example.org/s/") and len(out["code"]) == 6
    assert out["max_opens"] == 2 and out["allow_download"] is False
    exp = dt.datetime.fromisoformat(out["expires_at"].rstrip("Z"))
    assert abs(exp - utcnow() - dt.timedelta(days=3)) < dt.timedelta(minutes=2)
    from models import shares as svc
    sh = svc.find_share(out["url"].rsplit("/", 1)[1])
    assert sh is not None and sh.max_opens == 2 and not sh.allow_download
    p = subprocess.run([str(ROOT / "run.sh"), "share", "NO-SUCH"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "NO-SUCH" in p.stderr
