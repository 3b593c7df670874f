"""The phone journey in WebKit (WeChat on iOS is WebKit): share code → first image, window
presets, next image, portal verification → 我的检查 → download link, and the refusal pages
(wrong code, unknown share, download without verification). One MiniBrowser for the module,
a fresh cookie jar per scenario. Screenshots: tests/artifacts/webkit_*.png."""
from __future__ import annotations

import io
import re

import pytest

from models.db import database
from models.schema import Exam, Patient

from .conftest import fresh, settle, shot, visible, wait_for

# no `db` mark: the demo server is always SQLite, a MariaDB pass would only repeat this
pytestmark = [pytest.mark.webkit,
              pytest.mark.filterwarnings("ignore:setting remote_server_addr:DeprecationWarning")]

CT_A, CT_B = "CT2603120015", "CT2610200042"     # 张伟's two CT exams in the demo data
FIRST_IMAGE = ("const i = document.querySelector('#viewport img.vp-img');"
               " return !!(document.body.dataset.firstImage && i && i.complete"
               " && i.naturalWidth > 0);")
EXACT = ("const v = document.getElementById('viewport');"
         " const i = v && v.querySelector('img.vp-img');"
         " return !!(v && v.dataset.loaded === 'exact' && i && i.complete && i.naturalWidth > 0);")
CJK = re.compile(r"[\u4e00-\u9fff]")


def share_of(server, accession, **opts):
    from models import shares as svc
    ctx = server.ctx
    with database.connection_context():
        exam = Exam.get(Exam.accession_number == accession)
        new = svc.create_share(exam, key=ctx.secret_key, auditor=ctx.auditor, **opts)
    return exam, new, f"{server.url}/s/{new.token}"


def viewport_picture(driver):
    """What the person sees in the image area, as a grey picture (PIL)."""
    from PIL import Image
    png = driver.find_element("id", "viewport").screenshot_as_png
    return Image.open(io.BytesIO(png)).convert("L")


def differs(a, b, threshold=2.0):
    """Mean absolute grey difference of two pictures of the same element."""
    from PIL import ImageChops, ImageStat
    if a.size != b.size:
        return True
    return ImageStat.Stat(ImageChops.difference(a, b)).mean[0] > threshold


def text_of(driver, css):
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css)


def enter_code(driver, url, code):
    driver.get(url)
    visible(driver, "#code")
    box = driver.find_element("id", "code")
    box.clear()
    box.send_keys(code)
    driver.find_element("id", "open").click()


def test_code_opens_the_first_image_presets_and_next_image(webkit, demo_server):
    fresh(webkit, demo_server)
    exam, share, url = share_of(demo_server, CT_A, max_opens=3)
    webkit.get(url)
    visible(webkit, "#code")
    settle(webkit)
    shot(webkit, "1_code")
    assert "访问码" in text_of(webkit, "#codeform")
    enter_code(webkit, url, share.code)
    wait_for(webkit, "return location.pathname === arguments[0];", 30, "the film view",
             f"/film/{exam.study_uid}")
    wait_for(webkit, FIRST_IMAGE, 30, "the first image")
    wait_for(webkit, EXACT, 30, "the full-quality first image")
    settle(webkit)
    shot(webkit, "2_film")
    # the image is really there: a CT slice is not a flat picture
    from PIL import ImageStat
    first = viewport_picture(webkit)
    assert ImageStat.Stat(first).stddev[0] > 10, "the image area looks empty"
    assert "/24" in text_of(webkit, "#viewport .ov-tr")

    # window preset: another preset gives another picture and another W/L in the overlay
    from selenium.webdriver.support.ui import Select
    visible(webkit, "#preset")
    sel = Select(webkit.find_element("id", "preset"))
    options = [o.get_attribute("value") for o in sel.options]
    current = sel.first_selected_option.get_attribute("value")
    target = next(v for v in ("lung", "bone", "brain") if v in options and v != current) \
        if any(v in options for v in ("lung", "bone", "brain")) else \
        next(v for v in options if v != current)
    wl_before = text_of(webkit, "#viewport .ov-bl")
    window_before = webkit.execute_script("return document.getElementById('viewport').dataset.window;")
    sel.select_by_value(target)
    wait_for(webkit, "return document.getElementById('viewport').dataset.window !== arguments[0];",
             15, "the window to change", window_before)
    wait_for(webkit, EXACT, 30, "the image in the new window")
    settle(webkit)
    windowed = viewport_picture(webkit)
    assert text_of(webkit, "#viewport .ov-bl") != wl_before
    assert differs(first, windowed), f"preset {target!r} did not change the image"
    shot(webkit, "3_preset")

    # next image: a finger (here the mouse) drags down the image, as a patient scrolls
    from selenium.webdriver.common.action_chains import ActionChains
    slice_before = text_of(webkit, "#viewport .ov-tr")
    index_before = webkit.execute_script("return window.cfViewport.index;")
    vp = webkit.find_element("id", "viewport")
    ActionChains(webkit).move_to_element(vp).click_and_hold().move_by_offset(0, 20) \
        .move_by_offset(0, 20).release().perform()
    wait_for(webkit, "return window.cfViewport.index !== arguments[0];", 10,
             "another image after the drag", index_before)
    wait_for(webkit, EXACT, 30, "the next image")
    settle(webkit)
    assert webkit.execute_script("return window.cfViewport.index;") > index_before
    assert text_of(webkit, "#viewport .ov-tr") != slice_before
    assert differs(windowed, viewport_picture(webkit), 0.5), "the next image looks the same"
    shot(webkit, "4_next_image")


def test_wrong_code_shows_the_wrong_code_message(webkit, demo_server):
    fresh(webkit, demo_server)
    exam, share, url = share_of(demo_server, CT_B, max_opens=3)
    wrong = "000000" if share.code != "000000" else "111111"
    enter_code(webkit, url, wrong)
    wait_for(webkit, "const m = document.getElementById('msg');"
                     " return m && m.innerText.includes('访问码错误');", 15, "the wrong-code message")
    assert "/film/" not in webkit.current_url
    msg = text_of(webkit, "#msg")
    assert "wrong" not in msg.lower(), msg          # the UI language only
    settle(webkit)
    shot(webkit, "5_wrong_code")


def test_unknown_share_shows_a_chinese_page(webkit, demo_server):
    fresh(webkit, demo_server)
    webkit.get(f"{demo_server.url}/s/AAAAAAAAAAAAAAAAAAAAAAAA")
    visible(webkit, "#refusal")
    text = text_of(webkit, "#refusal")
    assert CJK.search(text), text
    assert not re.search(r"[A-Za-z]{4,}", text), f"not in the UI language only: {text!r}"
    assert "{" not in webkit.find_element("tag name", "body").text
    assert not webkit.find_elements("css selector", "#codeform:not(.hidden)")
    settle(webkit)
    shot(webkit, "6_unknown_share")


def test_download_without_verification_is_a_page(webkit, demo_server):
    fresh(webkit, demo_server)
    with database.connection_context():
        uid = Exam.get(Exam.accession_number == CT_A).study_uid
    webkit.get(f"{demo_server.url}/api/download/studies/{uid}.zip")
    body = webkit.find_element("tag name", "body").text.strip()
    assert not body.startswith("{"), f"raw JSON on a page: {body[:200]}"
    wait_for(webkit, "return document.body && document.body.classList.contains('cf-error-page');",
             10, "the HTML error page")
    assert CJK.search(body), body[:200]
    settle(webkit)
    shot(webkit, "7_download_refused")


def test_portal_verification_my_exams_and_download(webkit, demo_server):
    fresh(webkit, demo_server)
    with database.connection_context():
        p = Patient.get(Patient.name == "张伟")
        exams = list(Exam.select().where(Exam.patient == p))
    phone = p.phone
    webkit.get(demo_server.url + "/portal")
    visible(webkit, "#verify")
    visible(webkit, "#acc")
    webkit.find_element("id", "phone").send_keys(phone)
    webkit.find_element("id", "acc").send_keys(CT_A)
    settle(webkit)
    shot(webkit, "8_portal_verify")
    webkit.find_element("id", "v-submit").click()
    visible(webkit, "#me")
    wait_for(webkit, "return document.querySelectorAll('#exams li').length === arguments[0];",
             15, "我的检查 listing both exams", len(exams))
    listing = text_of(webkit, "#exams")
    for e in exams:
        assert e.accession_number in listing
    assert phone not in webkit.page_source            # the phone number is shown masked
    settle(webkit)
    shot(webkit, "9_my_exams")

    # a download link for each exam with images, and it serves the file right after verifying
    links = webkit.find_elements("css selector", "#exams a[href$='.zip']")
    assert len(links) == len(exams)
    assert all(a.is_displayed() for a in links)
    href = links[0].get_attribute("href")
    status = webkit.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        " fetch(arguments[0], {method: 'HEAD', credentials: 'same-origin'})"
        "   .then((r) => done(r.status), (e) => done(String(e)));", href)
    assert status == 200, status

    # an exam from 我的检查 opens in the film view
    webkit.find_element("css selector", "#exams a[href^='/film/']").click()
    wait_for(webkit, "return location.pathname.startsWith('/film/');", 15, "the film view")
    wait_for(webkit, FIRST_IMAGE, 30, "the first image from 我的检查")
    settle(webkit)
    shot(webkit, "10_portal_film")


def test_every_link_in_one_browser(webkit, demo_server):
    """WeChat keeps one cookie jar for every link: share A → film → back → share B → film →
    /portal verify → 我的检查 → exam → series download → share A again → reload; then B's
    session expires (the code page again), B is revoked (its page) and an invalid PACS QR
    code (a page). Each step ends on the images or on the right message."""
    import datetime as dt

    from models import shares as svc
    from models.schema import Session, Share
    fresh(webkit, demo_server)
    exam_a, share_a, url_a = share_of(demo_server, CT_A, max_opens=3)
    exam_b, share_b, url_b = share_of(demo_server, "MR2606080023", max_opens=3)

    def on_film(exam, what):
        wait_for(webkit, "return location.pathname === arguments[0];", 30, what,
                 f"/film/{exam.study_uid}")
        wait_for(webkit, FIRST_IMAGE, 30, what + ": first image")

    def opens(new):
        with database.connection_context():
            return Share.get_by_id(new.share.id).opens

    # the site root on a phone: the patient entry, a pasted share link → its code page
    webkit.get(demo_server.url + "/")
    visible(webkit, "#link")
    webkit.find_element("id", "link").send_keys("看这个 " + url_a)
    webkit.find_element("id", "go").click()
    visible(webkit, "#code")
    assert webkit.current_url == url_a
    enter_code(webkit, url_a, share_a.code)
    on_film(exam_a, "share A")
    webkit.back()
    enter_code(webkit, url_b, share_b.code)
    on_film(exam_b, "share B")
    settle(webkit)
    shot(webkit, "11_second_share")

    # the portal in the same browser: verify, 我的检查, an exam, a series download
    with database.connection_context():
        p = Patient.get(Patient.name == "张伟")
    webkit.get(demo_server.url + "/portal")
    visible(webkit, "#acc")
    webkit.find_element("id", "phone").send_keys(p.phone)
    webkit.find_element("id", "acc").send_keys(CT_A)
    webkit.find_element("id", "v-submit").click()
    visible(webkit, "#me")
    webkit.find_element("css selector", f"#exams a[href='/film/{exam_a.study_uid}']").click()
    on_film(exam_a, "exam A from 我的检查")
    series = webkit.execute_script("return window.cfViewport.series.series_uid;")
    status = webkit.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        " fetch(arguments[0], {method: 'HEAD', credentials: 'same-origin'})"
        "   .then((r) => done(r.status), (e) => done(String(e)));",
        f"/api/download/studies/{exam_a.study_uid}/series/{series}.zip")
    assert status == 200, status

    # share A's link again: straight to its images, no code, no open; a reload too
    webkit.get(url_a)
    on_film(exam_a, "share A again")
    webkit.refresh()
    wait_for(webkit, FIRST_IMAGE, 30, "share A after a reload")
    webkit.get(url_b)
    on_film(exam_b, "share B after the portal sign-in")
    assert opens(share_a) == 1 and opens(share_b) == 1

    # B's session expires: the film view offers B's code page again
    with database.connection_context():
        Session.update(expires_at=dt.datetime.utcnow() - dt.timedelta(minutes=1)).where(
            Session.share == share_b.share).execute()
    demo_server.ctx.principals.clear()
    webkit.get(f"{demo_server.url}/film/{exam_b.study_uid}")
    visible(webkit, "#relogin-code")
    webkit.find_element("id", "relogin-code").click()
    visible(webkit, "#code")
    assert webkit.current_url == url_b

    # B revoked: its page says so, in Chinese only
    with database.connection_context():
        svc.revoke_share(share_b.share.id, auditor=demo_server.ctx.auditor, actor_kind="staff",
                         actor_id="desk")
    demo_server.ctx.principals.clear()
    webkit.get(url_b)
    visible(webkit, "#refusal")
    text = text_of(webkit, "#refusal")
    assert "撤销" in text and "revoked" not in text, text
    settle(webkit)
    shot(webkit, "12_revoked")

    # an invalid PACS QR code: a page with next steps, never JSON
    webkit.get(demo_server.url + "/pacs/t/not.a.valid-token")
    visible(webkit, "#next-steps")
    assert "{" not in text_of(webkit, "#error-text") and CJK.search(text_of(webkit, "#error-text"))
    settle(webkit)
    shot(webkit, "13_pacs_invalid")


def test_patient_qr_page_verifies_and_lists_all_exams(webkit, demo_server):
    """/p/{token} (one QR for all of a patient's exams) in WebKit: the page, verification
    with phone + exam number, then 我的检查 with every exam."""
    from models import shares as svc
    fresh(webkit, demo_server)
    with database.connection_context():
        p = Patient.get(Patient.name == "张伟")
        n = Exam.select().where(Exam.patient == p).count()
        new = svc.create_patient_qr(p.id, key=demo_server.ctx.secret_key,
                                    auditor=demo_server.ctx.auditor, max_opens=3)
    webkit.get(f"{demo_server.url}/p/{new.token}")
    visible(webkit, "#pqr")
    assert "验证身份后查看您的全部检查" in text_of(webkit, "#pqr")
    visible(webkit, "#acc")
    webkit.find_element("id", "phone").send_keys(p.phone)
    webkit.find_element("id", "acc").send_keys(CT_A)
    webkit.find_element("id", "v-submit").click()
    visible(webkit, "#me")
    wait_for(webkit, "return document.querySelectorAll('#exams li').length === arguments[0];",
             15, "我的检查 listing every exam", n)
    settle(webkit)
    shot(webkit, "14_patient_qr")
