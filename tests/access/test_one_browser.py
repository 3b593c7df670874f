"""One browser, many links: WeChat's in-app browser keeps one cookie jar for every link a
patient opens. Each step here is what a new page in that browser sends: the cookies, and
no CSRF proof until the page has asked for one."""
from __future__ import annotations

import pytest
import requests

from .conftest import create_share, staff

pytestmark = pytest.mark.db


def page_post(jar: requests.Session, live, path, body, csrf=None):
    """A POST from a freshly loaded page: the jar's cookies, only the proof it was given."""
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    return requests.post(live.url + path, json=body, cookies=jar.cookies, headers=headers,
                         timeout=30)


def open_in(jar, live, token, code):
    r = page_post(jar, live, "/api/share/status", {"token": token})
    assert r.status_code == 200, r.text
    if r.json()["session"]:
        return r
    r = page_post(jar, live, "/api/share/open", {"token": token, "code": code})
    assert r.status_code == 200, r.text
    jar.cookies.update(r.cookies)
    return r


def test_two_shares_and_the_portal_in_one_browser(live, people):
    a, b = people
    tok_a, code_a, _ = create_share(live, a.study_uid, max_opens=3)
    tok_b, code_b, _ = create_share(live, b.study_uid, max_opens=3)
    jar = requests.Session()
    # share A → film
    r = open_in(jar, live, tok_a, code_a)
    assert r.json()["film_url"] == f"/film/{a.study_uid}"
    assert r.json()["opens"] == 1 and r.json()["max_opens"] == 3
    assert jar.get(live.url + f"/api/studies/{a.study_uid}").status_code == 200
    # back, then share B: its page posts status without A's proof and must not be refused
    open_in(jar, live, tok_b, code_b)
    assert jar.get(live.url + f"/api/studies/{b.study_uid}").status_code == 200
    # A still opens (its session is kept), and re-opening A's link costs no open
    assert jar.get(live.url + f"/api/studies/{a.study_uid}").status_code == 200
    st = page_post(jar, live, "/api/share/status", {"token": tok_a}).json()
    assert st["session"] is True and st["opens"] == 1
    again = page_post(jar, live, "/api/share/open", {"token": tok_a, "code": code_a}).json()
    assert again["reused"] is True and again["opens"] == 1
    # the portal in the same browser: verify, 我的检查; both shares keep working
    r = page_post(jar, live, "/api/verify", {"phone": a.phone, "id_number": a.id_number})
    assert r.status_code == 200, r.text
    jar.cookies.update(r.cookies)
    me = jar.get(live.url + "/api/patient/me")
    assert me.status_code == 200 and me.json()["exams"][0]["study_uid"] == a.study_uid
    assert jar.get(live.url + f"/api/studies/{b.study_uid}").status_code == 200
    # a page holding B's old proof is told to fetch a fresh one, and the fresh one works
    r = page_post(jar, live, "/api/patient/shares", {"study_uid": a.study_uid},
                  csrf="stale-proof")
    assert r.status_code == 403 and r.json()["code"] == "csrf_stale"
    fresh = jar.get(live.url + "/api/session/csrf").json()["csrf_token"]
    r = page_post(jar, live, "/api/patient/shares", {"study_uid": a.study_uid}, csrf=fresh)
    assert r.status_code == 201, r.text
    # the film context tells the view what it may show
    ctx = jar.get(live.url + f"/api/film/context/{b.study_uid}").json()
    assert ctx["kind"] == "share" and ctx["share"]["opens"] == 1 and ctx["portal"] is True
    ctx = jar.get(live.url + f"/api/film/context/{a.study_uid}").json()
    assert ctx["kind"] == "share" or ctx["kind"] == "patient"


def test_revoked_and_expired_sessions_fall_back_to_the_right_answer(live, people):
    a, b = people
    tok_b, code_b, made = create_share(live, b.study_uid, max_opens=2)
    jar = requests.Session()
    open_in(jar, live, tok_b, code_b)
    r = requests.post(live.url + f"/api/shares/{made['share']['id']}/revoke", json={},
                      headers=staff(live), timeout=30)
    assert r.status_code == 200
    # the film's data: 401 (the view offers the code page); the code page: revoked message
    assert jar.get(live.url + f"/api/studies/{b.study_uid}").status_code == 401
    st = page_post(jar, live, "/api/share/status", {"token": tok_b}).json()
    assert st["state"] == "revoked" and st["session"] is False and "撤销" in st["message"]


def test_navigated_refusals_are_pages_not_json(live, people):
    a, _ = people
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    for path in (f"/film/{a.study_uid}x", f"/api/download/studies/{a.study_uid}.zip",
                 "/pacs/t/not-a-token", f"/api/studies/{a.study_uid}", "/nothing-here"):
        r = requests.get(live.url + path, headers=html, timeout=30)
        assert r.status_code >= 400, path
        assert r.headers["Content-Type"].startswith("text/html"), path
        assert "cf-error-page" in r.text and '"ok": false' not in r.text, path
        assert r.text.startswith("<!doctype html>") and 'id="next-steps"' in r.text, path
        assert "CSRF" not in r.text
    # an API client still gets JSON
    r = requests.get(live.url + f"/api/studies/{a.study_uid}",
                     headers={"Accept": "application/json"}, timeout=30)
    assert r.status_code == 401 and r.json()["ok"] is False


def test_hospital_identity_on_pages_and_api(live, people, tmp_path):
    logo = tmp_path / "logo.png"
    from PIL import Image
    Image.new("RGB", (40, 20), (0, 90, 160)).save(logo)
    live.ctx.config.set_base(hospital_name="广州市第一人民医院", hospital_phone="020-8104 8888",
                             hospital_hours="周一至周日 8:00-17:30",
                             hospital_logo_file=str(logo))
    h = requests.get(live.url + "/api/hospital", timeout=30).json()
    assert h["name"] == "广州市第一人民医院" and h["logo_url"] == "/hospital/logo"
    r = requests.get(live.url + "/hospital/logo", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    # a refusal page names the hospital, its phone (callable) and hours, in Chinese only
    r = requests.get(live.url + "/s/" + "A" * 30 + "x/y", headers={"Accept": "text/html"},
                     timeout=30)
    assert r.status_code == 404
    assert "广州市第一人民医院" in r.text and 'href="tel:020-81048888"' in r.text
    assert "周一至周日 8:00-17:30" in r.text and "not found" not in r.text.lower()
    # English when the visitor chose it
    r = requests.get(live.url + "/nothing", headers={"Accept": "text/html"},
                     cookies={"cf_lang": "en"}, timeout=30)
    assert "Not found" in r.text and "没有找到" not in r.text
    # a logo that is too large or of another type is not served
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"0" * (600 * 1024))
    live.ctx.config.set_base(hospital_logo_file=str(big))
    assert requests.get(live.url + "/hospital/logo", timeout=30).status_code == 404
    live.ctx.config.set_base(hospital_logo_file=str(tmp_path / "logo.gif"))
    assert requests.get(live.url + "/api/hospital", timeout=30).json()["logo_url"] is None
