"""The viewer in Chromium: phone film view (WeChat UA, 360×640 @2x, touch through CDP) and
the desktop comparison workspace. Screenshots go to tests/artifacts/viewer_*.png."""
from __future__ import annotations

import io
import json
import time

import pytest

from .conftest import shot

pytestmark = pytest.mark.browser

U = "1.2.826.0.1.3680043.10.1373"
CT_OLD, CT_NEW, MR, US = f"{U}.1.1", f"{U}.1.2", f"{U}.1.3", f"{U}.1.4"


def errors_of(page):
    errs = []
    page.on("pageerror", lambda e: errs.append(str(e)))
    return errs


def pixels(page, selector):
    from PIL import Image
    return Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("L")


def diff(a, b):
    from PIL import ImageChops, ImageStat
    return ImageStat.Stat(ImageChops.difference(a, b)).mean[0]


def data(page, selector="#viewport"):
    return page.eval_on_selector(selector, "e => Object.assign({}, e.dataset)")


def wait_exact(page, selector="#viewport", timeout=15000):
    page.wait_for_function("(s) => document.querySelector(s) && "
                           "document.querySelector(s).dataset.loaded === 'exact'",
                           arg=selector, timeout=timeout)


class Touch:
    """Touch gestures through the DevTools protocol (Input.dispatchTouchEvent)."""

    def __init__(self, page):
        self.cdp = page.context.new_cdp_session(page)
        self.page = page

    def send(self, kind, points):
        self.cdp.send("Input.dispatchTouchEvent", {
            "type": kind,
            "touchPoints": [{"x": x, "y": y, "id": i, "radiusX": 2, "radiusY": 2, "force": 1}
                            for i, (x, y) in enumerate(points)]})

    def gesture(self, starts, ends, steps=12, pause=0.0):
        self.send("touchStart", starts)
        for k in range(1, steps + 1):
            f = k / steps
            self.send("touchMove", [(x0 + (x1 - x0) * f, y0 + (y1 - y0) * f)
                                    for (x0, y0), (x1, y1) in zip(starts, ends)])
            if pause:
                time.sleep(pause)
        self.send("touchEnd", [])

    def tap(self, x, y):
        self.send("touchStart", [(x, y)])
        self.send("touchEnd", [])


def viewport_box(page):
    b = page.locator("#viewport").bounding_box()
    return b["x"], b["y"], b["width"], b["height"]


def test_phone_film_view(phone, demo_server):
    page = phone.new_page()
    errs = errors_of(page)
    page.goto(f"{demo_server.url}/film/{CT_OLD}")
    wait_exact(page)
    page.wait_for_selector(".report-page")
    assert "胸廓对称" in page.inner_text("#report")
    assert page.get_attribute("#report-pdf", "href").endswith("report.pdf?download=1")
    assert page.locator(".strip-item").count() == 1
    shot(page, "phone_first", full_page=True)
    x, y, w, h = viewport_box(page)
    cx, cy = x + w / 2, y + h / 2
    touch = Touch(page)

    # one-finger drag in scroll mode moves the slice
    before = data(page)
    touch.gesture([(cx, cy)], [(cx, cy + 80)])
    page.wait_for_function(f"() => document.querySelector('#viewport').dataset.index !== '{before['index']}'")
    after = data(page)
    assert int(after["index"]) > int(before["index"])
    wait_exact(page)

    # window mode: the picture answers at once (client filter) and then exactly
    page.click("#mode-window")
    img0 = pixels(page, "#viewport")
    w0 = data(page)["window"]
    touch.send("touchStart", [(cx, cy)])
    for k in range(1, 9):
        touch.send("touchMove", [(cx + 12 * k, cy + 6 * k)])
    instant = pixels(page, "#viewport")
    assert data(page)["window"] != w0
    assert diff(img0, instant) > 2, "no client-side feedback during the drag"
    touch.send("touchEnd", [])
    wait_exact(page)
    exact = pixels(page, "#viewport")
    assert diff(img0, exact) > 2
    shot(page, "phone_window")

    # pinch zoom, then two-finger pan
    z0 = float(data(page)["zoom"])
    touch.gesture([(cx - 30, cy), (cx + 30, cy)], [(cx - 100, cy), (cx + 100, cy)])
    z1 = float(data(page)["zoom"])
    assert z1 > z0 * 2
    c1 = data(page)["center"]
    touch.gesture([(cx - 50, cy), (cx + 50, cy)], [(cx - 10, cy + 60), (cx + 90, cy + 60)])
    assert data(page)["center"] != c1
    wait_exact(page)
    zoomed = page.eval_on_selector("#viewport img.vp-img", "i => i.src")
    assert zoomed.startswith("blob:")
    shot(page, "phone_zoom")

    # double tap fits again
    touch.tap(cx, cy)
    time.sleep(0.05)
    touch.tap(cx, cy)
    page.wait_for_function("() => Number(document.querySelector('#viewport').dataset.zoom) === 1")

    # preset, invert, rotate, reset
    page.select_option("#preset", "lung")
    page.wait_for_function("() => document.querySelector('#viewport').dataset.window === '-600,1500'")
    wait_exact(page)
    page.click("#invert")
    page.click("#rotate")
    wait_exact(page)
    shot(page, "phone_lung_invert_rotate")
    page.click("#reset")
    page.wait_for_function("() => document.querySelector('#viewport').dataset.window === '40,400'")

    # every slice gets at least a preview; the progress bar reaches the end
    page.wait_for_function("() => document.querySelector('#viewport').dataset.progress === '1.000'",
                           timeout=20000)
    assert not errs, errs


def test_phone_cine_and_english(phone, demo_server):
    page = phone.new_page()
    errs = errors_of(page)
    page.goto(f"{demo_server.url}/film/{US}")
    wait_exact(page)
    assert page.is_hidden("#mode-window")  # colour: no window/level
    page.click("#cine")
    seen = set()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3 and len(seen) < 5:
        seen.add(data(page)["index"])
        time.sleep(0.05)
    assert len(seen) >= 5, f"cine did not advance: {seen}"
    page.click("#cine")
    page.click("#lang-switch")
    page.wait_for_function("() => document.querySelector('#cine').textContent === 'Play'")
    assert "Findings" in page.inner_text("#report")
    shot(page, "phone_us_en")
    page.click("#lang-switch")
    assert not errs, errs


def test_failures_retry_offline_expired_and_images_off(phone, demo_server):
    page = phone.new_page()
    errs = errors_of(page)
    # a frame that fails shows a retry in place; the retry loads it
    page.route("**/rendered*", lambda route: route.abort("internetdisconnected"))
    page.goto(f"{demo_server.url}/film/{CT_NEW}")
    page.wait_for_selector(".vp-retry:visible", timeout=15000)
    shot(page, "phone_failed")
    page.unroute("**/rendered*")
    # the retry button (the loader may also have retried by itself by now)
    page.evaluate("() => document.querySelector('.vp-retry').click()")
    wait_exact(page)
    # network back: prefetch resumes by itself
    page.wait_for_function("() => document.querySelector('#viewport').dataset.progress === '1.000'",
                           timeout=20000)

    # images switched off for this exam: the report stays, with the notice
    def images_off(route):
        resp = route.fetch()
        body = resp.json()
        body["images_enabled"] = False
        body["series"] = []          # what the server sends a patient or share visitor
        route.fulfill(response=resp, body=json.dumps(body))
    p2 = phone.new_page()
    p2.route(f"**/api/studies/{CT_NEW}", images_off)
    p2.goto(f"{demo_server.url}/film/{CT_NEW}")
    p2.wait_for_selector("text=该检查的影像已关闭，报告仍可查看")
    assert "诊断意见" in p2.inner_text("#report")
    shot(p2, "phone_images_off")

    # a 403 on the images (switched off after the page opened) does the same
    p4 = phone.new_page()
    p4.route("**/rendered*", lambda route: route.fulfill(
        status=403, content_type="application/json",
        body=json.dumps({"ok": False, "status": 403, "error": "images off"})))
    p4.goto(f"{demo_server.url}/film/{CT_NEW}")
    p4.wait_for_selector("text=该检查的影像已关闭，报告仍可查看")

    # expired session: one clear message in Chinese
    p3 = phone.new_page()
    p3.route(f"**/api/studies/{CT_NEW}", lambda route: route.fulfill(
        status=401, content_type="application/json",
        body=json.dumps({"ok": False, "status": 401, "error": "session expired"})))
    p3.goto(f"{demo_server.url}/film/{CT_NEW}")
    p3.wait_for_selector("text=查看时间已结束或分享已失效")
    # the next step leads somewhere else than the same failing page
    assert p3.get_attribute("#relogin-portal", "href").startswith("/portal#exam=")
    shot(p3, "phone_expired")
    assert not errs, errs


def test_workspace_linked_mpr_3d_measure(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    page.goto(f"{demo_server.url}/workspace?patient_id=DF100231")
    a, b = ".ws-cell[data-cell='0'] .vp", ".ws-cell[data-cell='1'] .vp"
    wait_exact(page, a)
    wait_exact(page, b)
    assert page.get_attribute(".ws-cell[data-cell='0']", "data-linked") == "1"
    assert page.get_attribute(".ws-cell[data-cell='1']", "data-linked") == "1"
    box = page.locator(a).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    zs = page.evaluate("() => window.cfWorkspace.cells[1].vp.positions.map(p => p[2])")
    spacing = abs(zs[1] - zs[0])
    for _ in range(3):
        i0 = data(page, a)["index"]
        page.mouse.wheel(0, 300)
        page.wait_for_function(f"() => document.querySelector(\"{a}\").dataset.index !== '{i0}'")
        time.sleep(0.1)
        pa, pb = float(data(page, a)["position"]), float(data(page, b)["position"])
        assert abs(pa - pb) <= spacing / 2 + 0.01, (pa, pb)
        # the follower shows its slice nearest to the leader's position (not the same index)
        assert abs(pb - min(zs, key=lambda z: abs(z - pa))) < 0.01
    # linked zoom and window
    page.keyboard.down("Control")
    page.mouse.wheel(0, -400)
    page.keyboard.up("Control")
    page.wait_for_function(f"() => Number(document.querySelector(\"{b}\").dataset.zoom) > 1.2")
    page.select_option("#preset", "lung")
    page.wait_for_function(f"() => document.querySelector(\"{b}\").dataset.window === '-600,1500'")
    wait_exact(page, a)
    wait_exact(page, b)
    shot(page, "ws_linked")

    # length measurement in mm
    page.click("[data-tool='measure']")
    page.mouse.move(box["x"] + 150, box["y"] + 200)
    page.mouse.down()
    page.mouse.move(box["x"] + 300, box["y"] + 200, steps=5)
    page.mouse.up()
    label = page.text_content(".ws-cell[data-cell='0'] .m-text")
    assert label.endswith(" mm") and float(label.split()[0]) > 10
    page.click("[data-tool='scroll']")

    # MPR with cross-reference lines: the two linked exams in 2 rows of 3 planes (row 0: the active one)
    page.click("#mpr")
    assert page.locator("#grid .pane").count() == 6
    for plane in ("axial", "coronal", "sagittal"):
        page.wait_for_function(f"() => document.querySelectorAll(\"[data-row='0'][data-plane='{plane}'] line\").length === 2 "
                               f"&& document.querySelector(\"[data-row='0'][data-plane='{plane}'] img\").complete "
                               f"&& document.querySelector(\"[data-row='0'][data-plane='{plane}'] img\").naturalWidth > 0",
                               timeout=20000)
    cor = "[data-row='0'][data-plane='coronal']"
    ax_before = page.get_attribute("[data-row='0'][data-plane='axial']", "data-index")
    cb = page.locator(cor).bounding_box()
    page.mouse.click(cb["x"] + cb["width"] / 2, cb["y"] + cb["height"] * 0.3)
    page.wait_for_function(f"() => document.querySelector(\"[data-plane='axial']\").dataset.index !== '{ax_before}'")
    shot(page, "ws_mpr")
    page.click("#mpr")

    # 3D MIP rotates with a drag
    page.click("#mip")
    mip = ".ws-cell[data-cell='0'] .mip"
    page.wait_for_function(f"() => document.querySelector(\"{mip}\") && document.querySelector(\"{mip}\").dataset.quality === 'full'", timeout=20000)
    yaw0 = page.get_attribute(mip, "data-yaw")
    mb = page.locator(mip).bounding_box()
    page.mouse.move(mb["x"] + mb["width"] / 2, mb["y"] + mb["height"] / 2)
    page.mouse.down()
    page.mouse.move(mb["x"] + mb["width"] / 2 + 120, mb["y"] + mb["height"] / 2, steps=8)
    page.mouse.up()
    page.wait_for_function(f"() => document.querySelector(\"{mip}\").dataset.yaw !== '{yaw0}' && "
                           f"document.querySelector(\"{mip}\").dataset.quality === 'full'", timeout=20000)
    shot(page, "ws_3d")

    # layouts and other modalities side by side
    page.click("[data-layout='2x2']")
    assert page.locator(".ws-cell").count() == 4
    assert not errs, errs


def test_workspace_across_modalities(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    page.goto(f"{demo_server.url}/workspace/{MR},{US}")
    wait_exact(page, ".ws-cell[data-cell='0'] .vp")
    wait_exact(page, ".ws-cell[data-cell='1'] .vp")
    shot(page, "ws_mr_us")
    assert not errs, errs
