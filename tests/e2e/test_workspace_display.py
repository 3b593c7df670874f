"""The desktop workspace's display (Chromium): orientation letters from Image Orientation
(Patient) that follow flips and rotation, the scale bar, flip buttons and keys, the cine speed,
tooltips and the help overlay (?), the first slice setting, the overlay toggle and pictures
counted 图 n/m. Screenshot: /tmp/shots/ws_display_ct.png and tests/artifacts/viewer_ws_display*.png."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import shot
from .test_viewer import data, errors_of, wait_exact

pytestmark = pytest.mark.browser

U = "1.2.826.0.1.3680043.10.1373"
CT_OLD, CT_NEW, MR, US, ES, SM = (f"{U}.1.{k}" for k in range(1, 7))
CELL = ".ws-cell[data-cell='0'] .vp"


def letters(page, sel=CELL):
    """Left, right, top, bottom letters as drawn."""
    return [page.inner_text(f"{sel} .ov-dir-{k}") for k in ("left", "right", "top", "bottom")]


def counter(page, sel=CELL):
    return page.inner_text(f"{sel} .ov-tr")


def open_ws(page, server, uids):
    page.goto(f"{server.url}/workspace/{uids}")
    page.wait_for_function(f"() => document.querySelector(\"{CELL}\") && "
                           f"document.querySelector(\"{CELL}\").dataset.index !== undefined")


def test_ct_orientation_scale_flip_overlay(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    open_ws(page, demo_server, CT_NEW)
    wait_exact(page, CELL)
    # first slice by default, not the middle one
    assert data(page, CELL)["index"] == "0"
    assert re.search(r"层 1/24\b", counter(page)), counter(page)
    # axial CT: R on the screen's left, L right, A top, P bottom
    assert letters(page) == ["R", "L", "A", "P"]
    # flip horizontally: left and right swap, top and bottom stay
    page.click("#flip-h")
    page.wait_for_function(f"() => document.querySelector(\"{CELL}\").dataset.orientation === 'L,R,A,P'")
    assert letters(page) == ["L", "R", "A", "P"]
    # the image itself is mirrored (the stage's CSS transform)
    assert "scale(-1, 1)" in page.eval_on_selector(f"{CELL} .vp-stage", "e => e.style.transform")
    page.keyboard.press("h")  # back
    page.keyboard.press("v")  # flip vertically
    assert letters(page) == ["R", "L", "P", "A"]
    page.keyboard.press("v")
    page.click("#rotate")     # 90° clockwise: patient's left now at the bottom
    assert letters(page) == ["P", "A", "R", "L"]
    page.click("#flip-h")     # after rotation the screen's left/right still swap
    assert letters(page) == ["A", "P", "R", "L"]
    page.click("#reset")
    assert letters(page) == ["R", "L", "A", "P"]

    # scale bar: a round length whose bar matches the pixel spacing and the zoom
    page.wait_for_selector(f"{CELL} .ov-scale:not(.hidden)")

    def bar():
        label = page.inner_text(f"{CELL} .ov-scale-label")
        width = page.eval_on_selector(f"{CELL} .ov-scale-bar", "e => e.getBoundingClientRect().width")
        ppm = page.evaluate("""() => {
            const v = window.cfWorkspace.cells[0].vp, g = v.geom, W = v.root.clientWidth, H = v.root.clientHeight;
            const sp = v.item().instance.pixel_spacing;
            return Math.min(W / g.cols, H / (g.rows * g.aspect)) * v.view.zoom / sp[1]; }""")
        return label, width, ppm

    label, width, ppm = bar()
    m = re.fullmatch(r"(\d+) (cm|mm)", label)
    assert m, label
    mm = int(m.group(1)) * (10 if m.group(2) == "cm" else 1)
    assert mm in (10, 20, 50, 100), label
    assert abs(width - mm * ppm) < 1.5, (width, mm, ppm)
    pane_w = page.eval_on_selector(CELL, "e => e.clientWidth")
    assert pane_w * 0.1 < width <= pane_w * 0.3 + 1
    # zoom in: a shorter round length (or a longer bar) at the new scale
    box = page.locator(CELL).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -600)
    page.keyboard.up("Control")
    page.wait_for_function(f"() => Number(document.querySelector(\"{CELL}\").dataset.zoom) > 2")
    label2, width2, ppm2 = bar()
    assert ppm2 > ppm * 2
    m2 = re.fullmatch(r"(\d+) (cm|mm)", label2)
    mm2 = int(m2.group(1)) * (10 if m2.group(2) == "cm" else 1)
    assert mm2 < mm and abs(width2 - mm2 * ppm2) < 1.5, (label2, width2, ppm2)
    page.dblclick(CELL)  # fit again
    wait_exact(page, CELL)

    # the shot: letters, scale bar and overlay on the CT
    Path("/tmp/shots").mkdir(exist_ok=True)
    page.screenshot(path="/tmp/shots/ws_display_ct.png")
    shot(page, "ws_display_ct")

    # overlay toggle: corners, letters and scale bar hidden, then back (button and key O)
    assert page.is_visible(f"{CELL} .ov-tl")
    page.click("#overlay")
    for sel in (".ov-tl", ".ov-tr", ".ov-bl", ".ov-br", ".ov-dir-left", ".ov-scale"):
        assert page.is_hidden(f"{CELL} {sel}"), sel
    assert page.inner_text("#overlay") == "显示文字"
    assert page.get_attribute("#overlay", "aria-pressed") == "false"
    page.keyboard.press("o")
    assert page.is_visible(f"{CELL} .ov-tl") and page.is_visible(f"{CELL} .ov-dir-left")
    assert page.inner_text("#overlay") == "隐藏文字"
    assert not errs, errs


def test_tooltips_help_and_first_slice_setting(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    open_ws(page, demo_server, CT_NEW)
    wait_exact(page, CELL)
    # every toolbar button has a tooltip; the ones with a shortcut name it
    missing = page.evaluate("() => [...document.querySelectorAll('.ws-toolbar button, .ws-toolbar select')]"
                            ".filter(b => !b.title).map(b => b.id || b.textContent)")
    assert missing == [], missing
    assert page.get_attribute("#flip-h", "title") == "左右翻转 (H)"
    assert page.get_attribute("#flip-v", "title") == "上下翻转 (V)"
    assert "(O)" in page.get_attribute("#overlay", "title")
    assert "(空格)" in page.get_attribute("#cine", "title")
    # help: ? opens it with the mouse help, Esc closes it
    assert page.is_hidden("#help")
    page.keyboard.press("?")
    page.wait_for_selector("#help:not(.hidden)")
    assert "滚轮翻页" in page.inner_text("#help-mouse")
    assert page.locator("#help-keys tr").count() >= 10
    assert "左右翻转" in page.inner_text("#help-keys")
    # the first slice setting lives here: middle
    assert page.input_value("#first-slice") == "first"
    page.select_option("#first-slice", "middle")
    page.keyboard.press("Escape")
    page.wait_for_selector("#help", state="hidden")
    page.click("#help-btn")
    page.wait_for_selector("#help:not(.hidden)")
    page.click("#help-close")
    page.wait_for_selector("#help", state="hidden")
    assert page.evaluate("() => localStorage.getItem('cf-ws-first')") == "middle"
    page.reload()
    wait_exact(page, CELL)
    assert data(page, CELL)["index"] == "11"
    assert re.search(r"层 12/24\b", counter(page)), counter(page)
    # End / Home keys: last and first slice
    page.keyboard.press("End")
    page.wait_for_function(f"() => document.querySelector(\"{CELL}\").dataset.index === '23'")
    page.keyboard.press("Home")
    page.wait_for_function(f"() => document.querySelector(\"{CELL}\").dataset.index === '0'")
    page.evaluate("() => localStorage.removeItem('cf-ws-first')")
    assert not errs, errs


def test_pictures_counted_as_images_no_letters(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    open_ws(page, demo_server, ES)
    wait_exact(page, CELL)
    # endoscopy: pictures, counted 图 n/m from the first; no patient orientation, no letters
    assert re.search(r"图 1/4\b", counter(page)), counter(page)
    assert "层" not in counter(page)
    assert data(page, CELL)["orientation"] == ""
    assert page.is_hidden(f"{CELL} .ov-dir-left")
    page.click("#lang-switch")
    page.wait_for_function(f"() => document.querySelector(\"{CELL} .ov-tr\").innerText.includes('Image 1/4')")
    assert page.get_attribute("#flip-h", "title") == "Flip horizontally (H)"
    page.click("#lang-switch")
    page.wait_for_function(f"() => document.querySelector(\"{CELL} .ov-tr\").innerText.includes('图 1/4')")
    # pathology slide (0.5 µm pixels): 图 1/1 and a scale bar in µm
    open_ws(page, demo_server, SM)
    page.wait_for_function(f"() => /图 1\\/1/.test(document.querySelector(\"{CELL} .ov-tr\").innerText)")
    page.wait_for_selector(f"{CELL} .ov-scale:not(.hidden)")
    assert re.fullmatch(r"\d+ µm|\d mm", page.inner_text(f"{CELL} .ov-scale-label"))
    assert not errs, errs


def test_cine_speed(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    open_ws(page, demo_server, US)
    wait_exact(page, CELL)
    assert "帧 1/" in counter(page)
    page.select_option("#cine-fps", "5")
    page.click("#cine")
    page.wait_for_function(f"() => document.querySelector(\"{CELL}\").dataset.fps === '5'")
    assert page.inner_text("#cine") == "停止"
    # change the speed while playing: the loop goes on at the new speed
    page.select_option("#cine-fps", "30")
    page.wait_for_function(f"() => document.querySelector(\"{CELL}\").dataset.fps === '30'")
    assert page.evaluate("() => window.cfWorkspace.cells[0].vp.playing")
    page.keyboard.press("[")  # one step slower
    page.wait_for_function(f"() => document.querySelector(\"{CELL}\").dataset.fps === '20'")
    assert page.input_value("#cine-fps") == "20"
    page.keyboard.press(" ")
    page.wait_for_function("() => !window.cfWorkspace.cells[0].vp.playing")
    assert page.inner_text("#cine") == "播放"
    assert not errs, errs
