"""Patient-level QR codes (R1.4): created by the front desk or the patient, opened by identity
verification bound to the QR's patient, counted, expiring, revocable, leading to all of the
patient's exams (also ones imported later). SQLite and MariaDB."""
import base64
import datetime as dt
import io

import pytest
import requests
from PIL import Image

from models.db import write_transaction
from models.schema import AuditEvent, Exam, Patient, PatientShare, Session
from tests.access.conftest import staff, verify
from tests.e2e.conftest import ARTIFACTS, browser  # noqa: F401

pytestmark = pytest.mark.db


def pid(person) -> int:
    return Patient.get(Patient.patient_id == person.patient_id).id


def create_qr(live, person, headers=None, **opts):
    r = requests.post(live.url + f"/api/patients/{pid(person)}/qr", json=opts,
                      headers=headers or staff(live), timeout=30)
    assert r.status_code == 201, r.text
    d = r.json()
    return d["url"].rsplit("/", 1)[1], d


def open_qr(live, token, person, session=None, **override):
    s = session or requests.Session()
    body = {"token": token, "phone": person.phone, "id_number": person.id_number, **override}
    r = s.post(live.url + "/api/p/open", json=body, timeout=30)
    if r.ok:
        s.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return s, r


def audit(action, outcome=None):
    q = AuditEvent.select().where(AuditEvent.action == action)
    if outcome:
        q = q.where(AuditEvent.outcome == outcome)
    return list(q)


def test_front_desk_creates_qr_and_it_opens_all_exams(live, people):
    a, b = people
    token, d = create_qr(live, a, max_opens=2, expires="30d")
    assert "/p/" in d["url"] and len(token) >= 32
    img = Image.open(io.BytesIO(base64.b64decode(d["qr_png"].split(",", 1)[1])))
    assert img.size[0] > 100 and d["qr_svg"].startswith("<svg")
    assert d["share"]["max_opens"] == 2 and d["share"]["opens"] == 0
    exp = dt.datetime.fromisoformat(d["share"]["expires_at"].rstrip("Z"))
    assert abs(exp - dt.datetime.utcnow() - dt.timedelta(days=30)) < dt.timedelta(minutes=2)
    q = PatientShare.get_by_id(d["share"]["id"])
    assert token not in q.token_hash and len(q.token_hash) == 64
    assert audit("patient_qr.create")
    # the page and the state before verification tell nothing about the patient
    page = requests.get(live.url + f"/p/{token}", headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    st = requests.post(live.url + "/api/p/status", json={"token": token}, timeout=30).json()
    assert st["state"] == "open" and st["opens"] == 0 and "PA1" not in str(st)
    # verification as the QR's patient: one open, a patient session, the portal
    s, r = open_qr(live, token, a)
    assert r.status_code == 200, r.text
    assert r.json()["next"] == "/portal" and r.json()["opens"] == 1
    me = s.get(live.url + "/api/patient/me", timeout=30).json()
    assert [e["study_uid"] for e in me["exams"]] == [a.study_uid]
    assert s.get(live.url + f"/api/studies/{b.study_uid}", timeout=30).status_code == 404
    assert audit("patient_qr.open", "ok")
    # an exam imported after the QR was printed is listed too
    other = Exam.get(Exam.study_uid == b.study_uid)
    with write_transaction():
        later = Exam.create(patient=pid(a), study_uid="1.2.77.9", accession_number="ACC-A9",
                            modality="MR", description="later exam")
    me = s.get(live.url + "/api/patient/me", timeout=30).json()
    assert {e["study_uid"] for e in me["exams"]} == {a.study_uid, later.study_uid}
    assert other.study_uid not in {e["study_uid"] for e in me["exams"]}


def test_open_count_is_exhausted_and_reload_costs_no_open(live, people):
    a, _ = people
    token, _ = create_qr(live, a, max_opens=2)
    s1, r = open_qr(live, token, a)
    assert r.status_code == 200 and r.json()["opens"] == 1
    # the same browser again (reload, back, scanning again): no second open
    s1, r = open_qr(live, token, a, session=s1)
    assert r.status_code == 200 and r.json()["reused"] is True
    assert PatientShare.get(PatientShare.token_hash != "").opens == 1
    _, r = open_qr(live, token, a)
    assert r.status_code == 200 and r.json()["opens"] == 2
    _, r = open_qr(live, token, a)
    assert r.status_code == 410 and "打开次数已用完" in r.json()["error"]
    page = requests.get(live.url + f"/p/{token}", headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 410 and "<html" in page.text
    st = requests.post(live.url + "/api/p/status", json={"token": token}, timeout=30).json()
    assert st["state"] == "exhausted" and "打开次数已用完" in st["message"]
    # the sessions already open keep working
    assert s1.get(live.url + "/api/patient/me", timeout=30).status_code == 200


def test_expired_and_unknown_qr(live, people):
    a, _ = people
    token, d = create_qr(live, a, expires="1d")
    with write_transaction():
        PatientShare.update(expires_at=dt.datetime.utcnow() - dt.timedelta(minutes=1)).where(
            PatientShare.id == d["share"]["id"]).execute()
    _, r = open_qr(live, token, a)
    assert r.status_code == 410 and "过期" in r.json()["error"]
    assert requests.get(live.url + f"/p/{token}", timeout=30).status_code == 410
    _, r = open_qr(live, "x" * 32, a)
    assert r.status_code == 404 and "二维码无效" in r.json()["error"]
    assert requests.get(live.url + "/p/" + "y" * 32, timeout=30).status_code == 404
    r = requests.post(live.url + "/api/p/status", json={"token": "y" * 32}, timeout=30)
    assert r.status_code == 404


def test_revoke_ends_sessions(live, people):
    a, _ = people
    token, d = create_qr(live, a)
    s, r = open_qr(live, token, a)
    assert s.get(live.url + "/api/patient/me", timeout=30).status_code == 200
    r = requests.post(live.url + f"/api/patients/qr/{d['share']['id']}/revoke", json={},
                      headers=staff(live), timeout=30)
    assert r.status_code == 200
    assert s.get(live.url + "/api/patient/me", timeout=30).status_code == 401
    sess = Session.select().where(Session.kind == "patient").get()
    assert sess.ended_at is not None
    _, r = open_qr(live, token, a)
    assert r.status_code == 410 and "撤销" in r.json()["error"]
    rev = audit("patient_qr.revoke")
    assert rev and "sessions ended=1" in rev[0].detail


def test_another_patients_identity_is_refused_and_counted(live, people):
    a, b = people
    token, d = create_qr(live, a)
    _, r = open_qr(live, token, b)          # B's own, correct identity on A's QR
    assert r.status_code == 403
    msg = r.json()["error"]
    assert "不是您本人的" in msg and "还可尝试 4 次" in msg
    assert PatientShare.get_by_id(d["share"]["id"]).failed_attempts == 1
    assert PatientShare.get_by_id(d["share"]["id"]).opens == 0
    assert audit("patient_qr.open", "fail")
    assert [e for e in audit("verify", "fail") if "other patient" in e.detail]
    # wrong identity data also count; the fifth failure locks the QR
    for _ in range(3):
        _, r = open_qr(live, token, a, id_number=b.id_number)
        assert r.status_code == 403
    _, r = open_qr(live, token, b)
    assert r.status_code == 429 and "锁定" in r.json()["error"]
    _, r = open_qr(live, token, a)           # even the right patient waits now
    assert r.status_code == 429
    # a malformed value is refused with its reason and not counted
    token2, d2 = create_qr(live, a)
    _, r = open_qr(live, token2, a, phone="12")
    assert r.status_code == 400 and "11位" in r.json()["error"]
    assert PatientShare.get_by_id(d2["share"]["id"]).failed_attempts == 0


def test_patient_manages_own_qrs_only(live, people):
    a, b = people
    sa, r = verify(live, phone=a.phone, id_number=a.id_number)
    assert r.status_code == 200
    r = sa.post(live.url + "/api/patient/qr", json={"max_opens": 3, "expires": "7d"}, timeout=30)
    assert r.status_code == 201, r.text
    mine = r.json()
    assert mine["share"]["created_by"] == ""
    lst = sa.get(live.url + "/api/patient/qr", timeout=30).json()["shares"]
    assert [q["id"] for q in lst] == [mine["share"]["id"]] and lst[0]["url"] == mine["url"]
    # bad input: 400 with a Chinese message, nothing stored
    for body in ({"max_opens": 0}, {"max_opens": "3"}, {"expires": "abc"}, {"expires": "999d"},
                 {"max_opens": True}):
        r = sa.post(live.url + "/api/patient/qr", json=body, timeout=30)
        assert r.status_code == 400 and any("\u4e00" <= c <= "\u9fff" for c in r.json()["error"])
    assert PatientShare.select().count() == 1
    # B sees none of A's and cannot revoke them
    sb, r = verify(live, phone=b.phone, id_number=b.id_number)
    assert sb.get(live.url + "/api/patient/qr", timeout=30).json()["shares"] == []
    r = sb.post(live.url + f"/api/patient/qr/{mine['share']['id']}/revoke", json={}, timeout=30)
    assert r.status_code == 404
    assert PatientShare.get_by_id(mine["share"]["id"]).revoked_at is None
    # A revokes it; its link is no longer shown
    r = sa.post(live.url + f"/api/patient/qr/{mine['share']['id']}/revoke", json={}, timeout=30)
    assert r.status_code == 200
    lst = sa.get(live.url + "/api/patient/qr", timeout=30).json()["shares"]
    assert lst[0]["state"] == "revoked" and lst[0]["url"] is None
    # anonymous: 401
    assert requests.get(live.url + "/api/patient/qr", timeout=30).status_code == 401


def test_front_desk_permission(live, people):
    a, _ = people
    url = live.url + f"/api/patients/{pid(a)}/qr"
    for role in ("sysadmin", "auditadmin"):
        r = requests.post(url, json={}, headers=staff(live, (role,), "u_" + role), timeout=30)
        assert r.status_code == 403
    assert requests.post(url, json={}, timeout=30).status_code == 401
    assert requests.get(url, timeout=30).status_code == 401
    # a patient session is not the front desk
    sa, _ = verify(live, phone=a.phone, id_number=a.id_number)
    assert sa.post(url, json={}, timeout=30).status_code == 403
    assert sa.get(live.url + "/api/patients/qr", params={"study_uid": a.study_uid},
                  timeout=30).status_code == 403
    # the front desk and doctors may; an unknown patient is 404; lookup by exam
    assert requests.post(url, json={}, headers=staff(live), timeout=30).status_code == 201
    r = requests.post(live.url + "/api/patients/999999/qr", json={}, headers=staff(live),
                      timeout=30)
    assert r.status_code == 404
    r = requests.get(live.url + "/api/patients/qr", params={"study_uid": a.study_uid},
                     headers=staff(live, ("doctor",), "doctor_q"), timeout=30)
    assert r.status_code == 200 and r.json()["patient_db_id"] == pid(a)
    assert len(r.json()["shares"]) == 1 and "/p/" in r.json()["shares"][0]["url"]
    r = requests.post(url, json={"max_opens": 5000}, headers=staff(live), timeout=30)
    assert r.status_code == 400 and "1000" in r.json()["error"]


# one phone in a browser: /p/{token} → verify → 我的检查 (and the front-desk slip) ----------------
@pytest.mark.browser
def test_patient_qr_on_a_phone(live, people, browser):  # noqa: F811
    from models import shares as svc
    from models.sessions import create_session
    from tests.access.test_e2e_phone import PHONE, shot
    from tests.conftest import make_staff
    a, _ = people
    ctx = live.ctx
    new = svc.create_patient_qr(pid(a), key=ctx.secret_key, auditor=ctx.auditor, max_opens=3)
    with write_transaction():       # an exam that arrived after the QR was printed
        Exam.create(patient=pid(a), study_uid="1.2.77.9", accession_number="ACC-A9",
                    modality="MR", description="later exam")
    phone = browser.new_context(**PHONE)
    page = phone.new_page()
    page.goto(f"{live.url}/p/{new.token}")
    page.wait_for_selector("#pqr:not(.hidden)")
    page.wait_for_selector("#verify:not(.hidden)")
    assert "验证身份后查看您的全部检查" in page.inner_text("#pqr")
    shot(page, "patient_qr_page")
    page.fill("#phone", a.phone)
    page.fill("#idn", a.id_number)
    page.click("#v-submit")
    page.wait_for_url("**/portal")
    page.wait_for_selector("#me:not(.hidden)")
    page.wait_for_selector("#qrs li")
    assert page.locator("#exams li").count() == 2
    assert "later exam" in page.inner_text("#exams")
    assert PatientShare.get_by_id(new.qr.id).opens == 1
    # 我的二维码: the QR is listed with its link and a copy button that confirms
    assert new.token in page.inner_text("#qrs")
    page.locator("#qrs .copy-link").first.click()
    page.wait_for_selector("#qrs .copied:has-text('已复制')")
    # nothing overflows a 360 px screen (long links wrap)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    shot(page, "patient_qr_portal")
    # a listed QR is shown again (drawn by /api/qr) with its print button
    page.locator("#qrs button:has-text('显示二维码')").first.click()
    page.wait_for_function("() => { const i = document.querySelector('#qr-new img.qr-img');"
                           " return i && i.complete && i.naturalWidth > 100; }")
    # 下载 more than 10 minutes after verifying: the form, scrolled into view
    with write_transaction():
        Session.update(verified_at=dt.datetime.utcnow() - dt.timedelta(minutes=11)).where(
            Session.kind == "patient").execute()
    ctx.principals.clear()
    page.reload()
    page.wait_for_selector("#me:not(.hidden)")
    page.locator(f"#exams a[href='/api/download/studies/{a.study_uid}.zip']").click()
    page.wait_for_selector("#verify:not(.hidden)")
    assert "下载原始影像前请重新验证身份" in page.inner_text("#verify")
    page.wait_for_function("() => { const r = document.getElementById('verify')"
                           ".getBoundingClientRect(); return r.top >= 0 && r.top < innerHeight; }")
    # the film view's reverify hook: the form in view, then back to the film view
    page.goto(f"{live.url}/portal#reverify={a.study_uid}")
    page.wait_for_selector("#verify:not(.hidden)")
    assert "下载原始影像前请重新验证身份" in page.inner_text("#verify")
    assert page.evaluate("() => { const r = document.getElementById('verify')"
                         ".getBoundingClientRect(); return r.top >= 0 && r.top < innerHeight; }")
    page.fill("#phone", a.phone)
    page.fill("#idn", a.id_number)
    page.click("#v-submit")
    page.wait_for_url(f"**/film/{a.study_uid}")
    # a used-up QR: its page says so and offers the next steps
    with write_transaction():
        PatientShare.update(opens=3).where(PatientShare.id == new.qr.id).execute()
    other = browser.new_context(**PHONE)
    p2 = other.new_page()
    resp = p2.goto(f"{live.url}/p/{new.token}")
    assert resp.status == 410
    p2.wait_for_selector("#pqr-refusal:not(.hidden)")
    assert "打开次数已用完" in p2.inner_text("#pqr") and p2.is_visible("#pqr-portal")
    shot(p2, "patient_qr_used_up")
    other.close()
    phone.close()

    # the front desk prints the patient QR on the slip
    with write_transaction():
        user = make_staff("desk_e2e", ("frontdesk",), "Desk-Pass-1x")
        s = create_session("staff", staff_user=user, verified=True)
    desk = browser.new_context(viewport={"width": 1000, "height": 900}, locale="zh-CN")
    desk.add_cookies([{"name": "cf_session", "value": s.token, "url": live.url}])
    dp = desk.new_page()
    dp.goto(f"{live.url}/share/desk?study={a.study_uid}")
    dp.wait_for_selector("#pqrs li")
    dp.click("#pqr-create")
    dp.wait_for_selector("#slip:not(.hidden)")
    assert "全部检查" in dp.inner_text("#slip") and "/p/" in dp.inner_text("#s-url")
    assert dp.is_hidden("#s-code-box")
    dp.locator("#s-copy .copy-link").click()
    dp.wait_for_selector("#s-copy .copied:has-text('已复制')")
    dp.wait_for_function("() => document.querySelectorAll('#pqrs li').length === 2")
    dp.locator("#slip").screenshot(path=str(ARTIFACTS / "access_desk_patient_qr_slip.png"))
    dp.emulate_media(media="print")
    dp.screenshot(path=str(ARTIFACTS / "access_desk_patient_qr_print.png"))
    desk.close()
