"""The phone film view's details (issue 12): pictures counted 图 n/m with a thumbnail grid,
播放/停止, the overlay toggle, one-finger pan, report pages zoomable full screen, and what
/api/film/context adds after the first image: a share's opens and expiry, the download panel
(current image / series / whole exam, the code asked again, WeChat's open-in-browser hint),
the hospital footer and the notices when no images show. Screenshots: tests/artifacts/film_*.png."""
from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest


from . import test_viewer as tv
from .conftest import ARTIFACTS, _need_chromium, live_demo, signed_in

pytestmark = pytest.mark.browser

U = "1.2.826.0.1.3680043.10.1373"
CT_OLD, MR, US, ES, SM = f"{U}.1.1", f"{U}.1.3", f"{U}.1.4", f"{U}.1.5", f"{U}.1.6"
HOSPITAL = dict(hospital_name="云胶片示例医院", hospital_phone="020-1234 5678",
                hospital_hours="周一至周日 8:00-17:30")
ANDROID_UA = ("Mozilla/5.0 (Linux; Android 10; V2001A) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/120.0.0.0 Mobile Safari/537.36")
PHONE = dict(viewport={"width": 360, "height": 640}, device_scale_factor=2, has_touch=True,
             is_mobile=True, locale="zh-CN")


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The e2e demo server, with the hospital's phone and hours set."""
    _need_chromium()
    with live_demo(tmp_path_factory.mktemp("film_details"), **HOSPITAL) as server:
        yield server


@pytest.fixture
def android(browser, demo_server):
    """A signed-in doctor on a phone outside WeChat."""
    context = signed_in(browser, demo_server, user_agent=ANDROID_UA, accept_downloads=True,
                        **PHONE)
    yield context
    context.close()


def shot(page, name, **kw):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"film_{name}.png"), **kw)


def overlay(page, corner="tr"):
    return page.inner_text(f"#viewport .ov-{corner}")


def first_image(page):
    page.wait_for_function("() => document.body.dataset.firstImage", timeout=30000)


def film_ctx(page):
    """Wait until film_extras.js has read /api/film/context (the footer is written then)."""
    page.wait_for_selector("#film-footer:not(.hidden)", timeout=15000)


def test_pictures_counted_and_grid(phone, demo_server):
    page = phone.new_page()
    errs = tv.errors_of(page)
    page.goto(f"{demo_server.url}/film/{ES}")
    tv.wait_exact(page)
    # the endoscopy exam: four pictures, counted 图 n/m in the overlay and the strip
    assert re.search(r"图 2/4", overlay(page)), overlay(page)
    assert "层" not in overlay(page)
    page.wait_for_selector(".strip-item")
    assert "图 2/4" in page.inner_text(".strip-item.active .strip-label")
    assert page.inner_text("#grid") == "全部图片 (4)"
    film_ctx(page)
    shot(page, "es")
    page.click("#grid")
    grid = page.locator("#picture-grid")
    grid.wait_for()
    assert page.inner_text("#picture-grid h3") == "全部图片（4）"
    assert page.locator("#picture-grid .grid-item").count() == 4
    assert page.locator("#picture-grid .grid-item.active").get_attribute("data-n") == "2"
    page.wait_for_function("() => [...document.querySelectorAll('#picture-grid img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=20000)
    shot(page, "es_grid")
    page.click("#picture-grid .grid-item[data-n='4']")
    page.wait_for_selector("#picture-grid", state="detached")
    page.wait_for_function("() => document.querySelector('#viewport').dataset.index === '3'")
    tv.wait_exact(page)
    assert "图 4/4" in overlay(page)
    assert "图 4/4" in page.inner_text(".strip-item.active .strip-label")
    # the browser's back closes the grid instead of leaving the film
    page.click("#grid")
    page.wait_for_selector("#picture-grid")
    page.go_back()
    page.wait_for_selector("#picture-grid", state="detached")
    assert f"/film/{ES}" in page.url

    # one pathology slide: 图 1/1, no grid; a CT still counts slices (层)
    page.goto(f"{demo_server.url}/film/{SM}")
    tv.wait_exact(page, timeout=30000)
    assert "图 1/1" in overlay(page)
    assert page.is_hidden("#grid")
    page.goto(f"{demo_server.url}/film/{CT_OLD}")
    tv.wait_exact(page)
    assert re.search(r"层 \d+/24", overlay(page))
    assert page.is_hidden("#grid")
    assert not errs, errs


def test_cine_states_overlay_toggle_and_pan(phone, demo_server):
    page = phone.new_page()
    errs = tv.errors_of(page)
    page.goto(f"{demo_server.url}/film/{US}")
    tv.wait_exact(page)
    cine = page.locator("#cine")
    assert cine.inner_text() == "播放"
    assert "帧 " in overlay(page)          # the cine loop counts frames
    cine.click()
    assert cine.inner_text() == "停止"
    assert cine.get_attribute("aria-pressed") == "true"
    page.wait_for_function("() => window.cfViewport.playing")
    cine.click()
    assert cine.inner_text() == "播放"
    assert not page.evaluate("() => window.cfViewport.playing")
    # a finger on the image stops the loop: the button says so
    cine.click()
    assert cine.inner_text() == "停止"
    x, y, w, h = tv.viewport_box(page)
    touch = tv.Touch(page)
    touch.gesture([(x + w / 2, y + h / 2)], [(x + w / 2, y + h / 2 + 40)])
    page.wait_for_function("() => document.querySelector('#cine').textContent === '播放'")
    # in English too, while playing
    cine.click()
    page.click("#lang-switch")
    page.wait_for_function("() => document.querySelector('#cine').textContent === 'Stop'")
    cine.click()
    assert cine.inner_text() == "Play"
    page.click("#lang-switch")
    assert cine.inner_text() == "播放"

    # overlay text: readable size on a phone, hidden and shown by its button
    shot(page, "us_overlay_on")
    size = page.eval_on_selector("#viewport .ov-tl", "e => parseFloat(getComputedStyle(e).fontSize)")
    assert size > 11
    assert page.is_visible("#viewport .ov-tl")
    assert page.inner_text("#overlay") == "隐藏文字"
    page.click("#overlay")
    assert page.is_hidden("#viewport .ov-tl") and page.is_hidden("#viewport .ov-tr")
    assert page.inner_text("#overlay") == "显示文字"
    shot(page, "us_overlay_off")
    page.click("#overlay")
    assert page.is_visible("#viewport .ov-tl")

    # the MR exam: playing, then another series: the button goes back to 播放
    page.goto(f"{demo_server.url}/film/{MR}")
    tv.wait_exact(page)
    page.wait_for_selector(".strip-item >> nth=1")
    cine.click()
    assert cine.inner_text() == "停止"
    page.click(".strip-item >> nth=1")
    page.wait_for_function("() => !window.cfViewport.playing")
    assert cine.inner_text() == "播放"
    tv.wait_exact(page)

    # pan mode: one finger moves the image instead of paging
    page.click("#mode-pan")
    assert "on" in page.get_attribute("#mode-pan", "class")
    before = tv.data(page)
    x, y, w, h = tv.viewport_box(page)
    touch.gesture([(x + w / 2, y + h / 2)], [(x + w / 2 + 60, y + h / 2 + 50)])
    after = tv.data(page)
    assert after["center"] != before["center"]
    assert after["index"] == before["index"]
    page.click("#mode-scroll")
    touch.gesture([(x + w / 2, y + h / 2)], [(x + w / 2, y + h / 2 + 80)])
    page.wait_for_function(f"() => document.querySelector('#viewport').dataset.index !== '{after['index']}'")
    assert not errs, errs


def test_report_page_zooms_full_screen(phone, demo_server):
    page = phone.new_page()
    errs = tv.errors_of(page)
    page.goto(f"{demo_server.url}/film/{CT_OLD}")
    tv.wait_exact(page)
    page.wait_for_function("() => { const i = document.querySelector('.report-page');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=20000)
    page.locator(".report-page").first.scroll_into_view_if_needed()
    page.locator(".report-page").first.click()
    zoom = page.locator("#page-zoom")
    zoom.wait_for()
    assert zoom.get_attribute("data-scale") == "1.00"
    box = page.locator("#page-zoom .zoom-area").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    touch = tv.Touch(page)
    touch.gesture([(cx - 30, cy), (cx + 30, cy)], [(cx - 110, cy), (cx + 110, cy)])
    scale = float(zoom.get_attribute("data-scale"))
    assert scale > 2.5, scale
    t0 = page.eval_on_selector("#page-zoom-img", "i => i.style.transform")
    touch.gesture([(cx, cy)], [(cx + 50, cy + 70)])
    assert page.eval_on_selector("#page-zoom-img", "i => i.style.transform") != t0
    # a sharper page arrives for zooming
    page.wait_for_function("() => /width=(1[0-9]{3}|2[0-9]{3})/.test("
                           "document.querySelector('#page-zoom-img').src)", timeout=15000)
    shot(page, "report_zoom")
    # double tap back to the whole page, then close
    touch.tap(cx, cy)
    time.sleep(0.05)
    touch.tap(cx, cy)
    page.wait_for_function("() => document.querySelector('#page-zoom').dataset.scale === '1.00'")
    page.click("#zoom-close")
    page.wait_for_selector("#page-zoom", state="detached")
    assert f"/film/{CT_OLD}" in page.url
    assert not errs, errs


def test_staff_download_panel_and_footer(android, demo_server):
    page = android.new_page()
    errs = tv.errors_of(page)
    page.goto(f"{demo_server.url}/film/{ES}")
    tv.wait_exact(page)
    film_ctx(page)
    foot = page.inner_text("#film-footer")
    assert "云胶片示例医院" in foot and "周一至周日 8:00-17:30" in foot
    assert page.get_attribute("#hospital-phone", "href") == "tel:020-12345678"
    assert page.locator("#my-exams").count() == 0       # no patient session here
    assert page.locator("#share-info").count() == 0     # staff: no share line
    shot(page, "es_full", full_page=True)
    page.click("#download")
    panel = page.locator("#download-panel")
    panel.wait_for()
    labels = [page.inner_text(f"#dl-{k}") for k in ("image", "series", "study")]
    assert labels == ["当前图像", "当前序列", "整个检查"]
    shot(page, "download_panel")
    sop = page.evaluate("() => window.cfViewport.item().sop")
    series = page.evaluate("() => window.cfViewport.series.series_uid")
    with page.expect_download() as d:
        page.click("#dl-image")
    assert d.value.url.endswith(f"/api/download/studies/{ES}/series/{series}/instances/{sop}.zip")
    assert "已开始下载：当前图像" in page.inner_text("#dl-status")
    with page.expect_download() as d:
        page.click("#dl-study")
    assert d.value.url.endswith(f"/api/download/studies/{ES}.zip")
    assert d.value.failure() is None
    # in English, the panel and the footer follow
    page.click("#lang-switch")
    page.wait_for_function("() => document.querySelector('#dl-image').textContent === 'Current image'")
    assert page.inner_text("#download") == "Download"
    assert "Phone" in page.inner_text("#film-footer")
    assert page.inner_text("#grid") == "All pictures (4)"
    assert "Pic " in overlay(page)
    page.click("#lang-switch")
    page.click("#download")
    page.wait_for_selector("#download-panel", state="detached")
    assert not errs, errs


def test_wechat_download_shows_open_in_browser(phone, demo_server):
    page = phone.new_page()
    errs = tv.errors_of(page)
    downloads = []
    page.on("download", lambda d: downloads.append(d))
    page.goto(f"{demo_server.url}/film/{CT_OLD}")
    tv.wait_exact(page)
    film_ctx(page)
    page.click("#download")
    tip = page.locator("#wechat-tip")
    tip.wait_for()
    assert "在浏览器打开" in tip.inner_text()
    assert page.locator("#dl-image").count() == 0      # no download WeChat would swallow
    page.click("#copy-link")
    done = page.locator("#copy-done")
    done.wait_for()
    assert done.inner_text() in ("链接已复制，请粘贴到手机浏览器中打开。",
                                 "无法自动复制，请长按下面的链接手动复制。")
    assert page.inner_text("#copy-text").startswith(demo_server.url)
    shot(page, "wechat_download")
    assert not downloads
    assert not errs, errs


def _share(demo_server, accession, **kw):
    from models import shares as svc
    from models.schema import Exam
    ctx = demo_server.ctx
    exam = Exam.get(Exam.accession_number == accession)
    return exam, svc.create_share(exam, key=ctx.secret_key, auditor=ctx.auditor, **kw)


def _open_share(browser, demo_server, new, ua=ANDROID_UA):
    context = browser.new_context(user_agent=ua, accept_downloads=True, **PHONE)
    page = context.new_page()
    page.goto(f"{demo_server.url}/s/{new.token}")
    page.wait_for_selector("#code")
    page.fill("#code", new.code)
    page.click("#open")
    page.wait_for_url("**/film/**")
    return context, page


def test_share_line_and_code_asked_again_before_download(browser, demo_server):
    exam, new = _share(demo_server, "CT2610200042", allow_download=True, max_opens=3)
    context, page = _open_share(browser, demo_server, new)
    errs = tv.errors_of(page)
    first_image(page)
    film_ctx(page)
    line = page.inner_text("#share-info")
    assert re.fullmatch(r"已打开 1/3 次 · 有效期至 \d{4}-\d{2}-\d{2} \d{2}:\d{2}", line), line
    # the expiry in China time
    exp = new.share.expires_at
    assert line.endswith((exp + dt.timedelta(hours=8)).strftime("%Y-%m-%d %H:%M"))
    shot(page, "share")

    # the last code check is "older than 10 minutes": the code is asked again, in view
    calls = {"n": 0}

    def stale(route):
        resp = route.fetch()
        body = resp.json()
        calls["n"] += 1
        if calls["n"] == 1:
            body.update(freshly_verified=False, reverify="share_code")
        route.fulfill(response=resp, body=json.dumps(body))
    page.route("**/api/film/context/**", stale)
    page.click("#download")
    page.click("#dl-series")
    form = page.locator("#reverify-form")
    form.wait_for()
    page.wait_for_function("() => { const r = document.querySelector('#reverify-form')"
                           ".getBoundingClientRect(); return r.top >= 0 && r.bottom <= innerHeight; }")
    shot(page, "share_reverify")
    page.fill("#reverify-code", "12345")
    page.click("#reverify-submit")
    assert page.inner_text("#reverify-msg") == "请输入 6 位数字访问码"
    wrong = "000000" if new.code != "000000" else "111111"
    page.fill("#reverify-code", wrong)
    page.click("#reverify-submit")
    page.wait_for_function("() => document.querySelector('#reverify-msg').textContent.length > 0")
    assert "/" not in page.inner_text("#reverify-msg")   # one language
    page.fill("#reverify-code", new.code)
    with page.expect_download() as d:
        page.click("#reverify-submit")
    series = page.evaluate("() => window.cfViewport.series.series_uid")
    assert d.value.url.endswith(f"/api/download/studies/{exam.study_uid}/series/{series}.zip")
    assert page.is_hidden("#dl-verify")
    assert not errs, errs
    context.close()


def test_share_without_download_and_report_only(browser, demo_server):
    # a share that does not allow downloads: the line, no download button
    _, new = _share(demo_server, "MR2606080023", max_opens=5)
    context, page = _open_share(browser, demo_server, new)
    first_image(page)
    film_ctx(page)
    assert page.inner_text("#share-info").startswith("已打开 1/5 次")
    assert page.locator("#download").count() == 0
    context.close()
    # report only: says so (not "images switched off"), the report shows
    _, new = _share(demo_server, "US2606090108", include_images=False)
    context, page = _open_share(browser, demo_server, new)
    page.wait_for_selector("#notice")
    page.wait_for_function("() => document.querySelector('#notice').textContent === '此分享仅包含报告'")
    film_ctx(page)
    assert page.inner_text("#notice") == "此分享仅包含报告"
    assert page.inner_text("#report").strip()
    assert page.locator("#download").count() == 0
    shot(page, "share_report_only")
    context.close()


def test_no_images_yet_and_images_off(phone, demo_server):
    def without_series(enabled):
        def handler(route):
            resp = route.fetch()
            body = resp.json()
            body["images_enabled"] = enabled
            body["series"] = []
            route.fulfill(response=resp, body=json.dumps(body))
        return handler
    page = phone.new_page()
    page.route(f"**/api/studies/{CT_OLD}", without_series(True))
    page.goto(f"{demo_server.url}/film/{CT_OLD}")
    page.wait_for_selector("text=影像尚未到达，报告可先查看")
    page.wait_for_selector(".report-text")
    assert page.is_hidden("#tools")
    page2 = phone.new_page()
    page2.route(f"**/api/studies/{CT_OLD}", without_series(False))
    page2.goto(f"{demo_server.url}/film/{CT_OLD}")
    page2.wait_for_selector("text=该检查的影像已关闭，报告仍可查看")


def test_portal_link_for_a_verified_patient(browser, demo_server):
    from models.catalog import id_number_check_digit
    from models.schema import Patient
    p = Patient.get(Patient.name == "王芳")
    idn = "44010519820126004"
    idn += id_number_check_digit(idn)
    demo_server.ctx.catalog.set_patient_id_number(p, idn)
    p.save()
    context = browser.new_context(user_agent=ANDROID_UA, accept_downloads=True, **PHONE)
    page = context.new_page()
    page.goto(demo_server.url + "/portal")
    page.wait_for_selector("#verify:not(.hidden)")
    page.fill("#phone", p.phone)
    page.fill("#idn", idn)
    page.click("#v-submit")
    page.wait_for_selector("#me:not(.hidden)")
    page.goto(f"{demo_server.url}/film/{ES}")
    tv.wait_exact(page)
    film_ctx(page)
    assert page.get_attribute("#my-exams", "href") == "/portal"
    assert page.inner_text("#my-exams") == "我的检查"
    page.click("#download")
    assert [page.inner_text(f"#dl-{k}") for k in ("image", "series", "study")] == \
        ["当前图像", "当前序列", "整个检查"]
    shot(page, "patient")
    page.click("#my-exams")
    page.wait_for_url("**/portal")
    context.close()


def test_report_before_images_through_a_share(browser, demo_server):
    """An exam ordered over HL7 whose report came before its images (no Study Instance UID):
    the share opens /film/exam/{id}, which shows the report and says the images are coming."""
    from models import shares as svc
    from models.schema import Exam, Patient, Report
    ctx = demo_server.ctx
    p = Patient.get(Patient.name == "王芳")
    exam = Exam.create(patient=p, study_uid=None, accession_number="HL7E2E0001", modality="CT",
                       description="胸部CT平扫", exam_date=dt.date(2026, 8, 1), source="hl7",
                       status="reported")
    Report.create(exam=exam, findings="双肺纹理清晰，报告先于影像到达。", impression="未见异常。",
                  author="测试医师")
    new = svc.create_share(exam, key=ctx.secret_key, auditor=ctx.auditor, max_opens=2)
    context, page = _open_share(browser, demo_server, new)
    errs = tv.errors_of(page)
    assert page.url.endswith(f"/film/exam/{exam.id}")
    page.wait_for_selector("#notice")
    assert page.inner_text("#notice") == "影像尚未到达，报告可先查看"
    page.wait_for_selector("text=报告先于影像到达")
    film_ctx(page)
    assert page.inner_text("#share-info").startswith("已打开 1/2 次")
    assert page.locator("#download").count() == 0
    shot(page, "report_before_images")
    assert not errs, errs
    context.close()
