"""One phone browser, every link a patient gets (WeChat keeps one cookie jar for all of
them): share A → film → back → share B → film → /portal verify → 我的检查 → exam → series
download → share A again → reload; then an expired session, a revoked share and an invalid
PACS QR code. Each step asserts the image or the page a person sees."""
import datetime as dt

import pytest

from models.db import database
from models.schema import Exam, Patient, Session, Share
from tests.e2e.conftest import ARTIFACTS, WECHAT_UA, browser, demo_server  # noqa: F401

pytestmark = [pytest.mark.db, pytest.mark.browser]

PHONE = dict(viewport={"width": 360, "height": 640}, device_scale_factor=2, has_touch=True,
             is_mobile=True, user_agent=WECHAT_UA, locale="zh-CN")
FIRST_IMAGE = ("() => { const i = document.querySelector('#viewport img.vp-img');"
               " return document.body.dataset.firstImage && i && i.complete"
               " && i.naturalWidth > 0; }")


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"one_browser_{name}.png"))


def share_of(server, accession, **opts):
    from models import shares as svc
    ctx = server.ctx
    with database.connection_context():
        exam = Exam.get(Exam.accession_number == accession)
        new = svc.create_share(exam, key=ctx.secret_key, auditor=ctx.auditor, **opts)
    return exam, new, f"{server.url}/s/{new.token}"


def enter_code(page, url, code):
    page.goto(url)
    page.wait_for_selector("#codeform:not(.hidden)")
    assert "已打开 0/" in page.inner_text("#expiry")
    page.fill("#code", code)
    page.click("#open")


def opens(share_id):
    with database.connection_context():
        return Share.get_by_id(share_id).opens


def test_every_link_in_one_browser(browser, demo_server):  # noqa: F811
    exam_a, share_a, url_a = share_of(demo_server, "CT2603120015", max_opens=3)
    exam_b, share_b, url_b = share_of(demo_server, "MR2606080023", max_opens=3)
    context = browser.new_context(**PHONE)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # the site root on a phone: the patient entry; a pasted share link leads to its code page
    page.goto(demo_server.url + "/")
    page.wait_for_selector("#to-portal")
    page.fill("#link", "not a link")
    page.click("#go")
    assert "完整的分享链接" in page.inner_text("#msg")
    page.fill("#link", "看这个 " + url_a)            # pasted from a chat, with its words
    page.click("#go")
    page.wait_for_selector("#codeform:not(.hidden)")
    assert page.url == url_a
    # share A: the right code opens the film view directly (no menu in between)
    enter_code(page, url_a, share_a.code)
    page.wait_for_url(f"**/film/{exam_a.study_uid}")
    page.wait_for_function(FIRST_IMAGE, timeout=30000)
    shot(page, "1_film_a")
    # back, then share B in the same browser
    page.go_back()
    enter_code(page, url_b, share_b.code)
    page.wait_for_url(f"**/film/{exam_b.study_uid}")
    page.wait_for_function(FIRST_IMAGE, timeout=30000)
    assert opens(share_a.share.id) == 1 and opens(share_b.share.id) == 1

    # the portal in the same browser: verify identity, 我的检查, open an exam
    p = Patient.get(Patient.name == "张伟")
    idn = "44200019850315123"
    from models.catalog import id_number_check_digit
    idn += id_number_check_digit(idn)
    with database.connection_context():
        demo_server.ctx.catalog.set_patient_id_number(p, idn)
        p.save()
    page.goto(demo_server.url + "/portal")
    page.wait_for_selector("#verify:not(.hidden)")
    page.fill("#phone", p.phone)
    page.fill("#idn", idn)
    page.click("#v-submit")
    page.wait_for_selector("#me:not(.hidden)")
    assert page.locator("#exams li").count() == 2
    shot(page, "2_portal")
    page.locator(f"#exams a[href='/film/{exam_a.study_uid}']").first.click()
    page.wait_for_url(f"**/film/{exam_a.study_uid}")
    page.wait_for_function(FIRST_IMAGE, timeout=30000)
    # a series download right after verification is served (the page's own cookies)
    series = page.evaluate("() => window.cfViewport.series.series_uid")
    status = page.evaluate("async (u) => (await fetch(u, {method: 'HEAD'})).status",
                           f"/api/download/studies/{exam_a.study_uid}/series/{series}.zip")
    assert status == 200

    # share A's link again: straight to the images, no code, no open counted; reload too
    page.goto(url_a)
    page.wait_for_url(f"**/film/{exam_a.study_uid}")
    page.wait_for_function(FIRST_IMAGE, timeout=30000)
    page.reload()
    page.wait_for_function(FIRST_IMAGE, timeout=30000)
    # and share B still shows its images after the portal sign-in
    page.goto(url_b)
    page.wait_for_url(f"**/film/{exam_b.study_uid}")
    page.wait_for_function(FIRST_IMAGE, timeout=30000)
    assert opens(share_a.share.id) == 1 and opens(share_b.share.id) == 1

    # share B's session expires: its film view offers the code page again, not a reload
    with database.connection_context():
        Session.update(expires_at=dt.datetime.utcnow() - dt.timedelta(minutes=1)).where(
            Session.share == share_b.share).execute()
    demo_server.ctx.principals.clear()
    page.goto(f"{demo_server.url}/film/{exam_b.study_uid}")
    page.wait_for_selector("#relogin-code")
    shot(page, "3_expired")
    page.click("#relogin-code")
    page.wait_for_selector("#codeform:not(.hidden)")
    page.fill("#code", share_b.code)
    page.click("#open")
    page.wait_for_url(f"**/film/{exam_b.study_uid}")
    page.wait_for_function(FIRST_IMAGE, timeout=30000)
    assert opens(share_b.share.id) == 2

    # revoked: its link shows the revocation with the hospital's contact and a next step
    from models import shares as svc
    with database.connection_context():
        svc.revoke_share(share_b.share.id, auditor=demo_server.ctx.auditor, actor_kind="staff",
                         actor_id="desk")
    demo_server.ctx.principals.clear()
    page.goto(url_b)
    page.wait_for_selector("#refusal:not(.hidden)")
    assert "撤销" in page.inner_text("#refusal") and "revoked" not in page.inner_text("#refusal")
    assert page.locator("#next-portal").is_visible()
    shot(page, "4_revoked")

    # an invalid PACS QR code: a page, never JSON
    page.goto(demo_server.url + "/pacs/t/not.a.valid-token")
    page.wait_for_selector("body.cf-error-page")
    assert page.locator("#next-steps a").count() >= 2
    assert "{" not in page.inner_text("#error-text")
    shot(page, "5_pacs_invalid")
    assert not errors, errors
    context.close()
