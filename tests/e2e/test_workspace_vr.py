"""The workspace's 3D pane (Chromium): the MIP / volume rendering selector shows different
images per preset, and two exams' 3D panes (linked by the hanging) turn and switch together;
previews (<= 256 px) while dragging, the full size after release.
Screenshot: tests/artifacts/viewer_ws_vr.png."""
from __future__ import annotations

import numpy as np
import pytest

from .conftest import shot
from .test_viewer import errors_of, wait_exact

pytestmark = pytest.mark.browser

U = "1.2.826.0.1.3680043.10.1373"
CT_OLD, CT_NEW = f"{U}.1.1", f"{U}.1.2"
MIP0 = ".ws-cell[data-cell='0'] .mip"
MIP1 = ".ws-cell[data-cell='1'] .mip"

PIXELS = """(sel) => {
  const img = document.querySelector(sel + ' img');
  const c = document.createElement('canvas'); c.width = 96; c.height = 96;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0, 96, 96);
  return Array.from(g.getImageData(0, 0, 96, 96).data);
}"""


def pixels(page, sel):
    return np.array(page.evaluate(PIXELS, sel), float).reshape(96, 96, 4)[:, :, :3]


def wait_shown(page, sel, mode):
    page.wait_for_function(
        f"() => {{ const e = document.querySelector(\"{sel}\"); return e && e.dataset.shown === '{mode}' "
        f"&& e.dataset.quality === 'full' && e.querySelector('img').naturalWidth > 0; }}", timeout=30000)


def to_3d(page, cell):
    page.locator(f".ws-cell[data-cell='{cell}'] .ws-cell-head .title").click()
    page.click("#mip")


def test_presets_differ_and_linked_panes_turn_together(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    urls = []
    page.on("request", lambda r: urls.append(r.url) if "/mip?" in r.url else None)
    page.goto(f"{demo_server.url}/workspace/{CT_NEW},{CT_OLD}")
    wait_exact(page, ".ws-cell[data-cell='0'] .vp")
    wait_exact(page, ".ws-cell[data-cell='1'] .vp")
    # the hanging links the two CTs; both cells to 3D
    assert page.get_attribute(".ws-cell[data-cell='0']", "data-linked") == "1"
    to_3d(page, 0)
    wait_shown(page, MIP0, "mip")
    to_3d(page, 1)
    wait_shown(page, MIP1, "mip")
    mip = pixels(page, MIP0)
    assert mip.max() > 100                          # a MIP is drawn at all
    assert np.abs(mip[..., 0] - mip[..., 2]).max() < 12   # grey

    # bone, then lung: colour images that differ from each other and from the MIP
    page.select_option(f"{MIP0} select", "bone")
    wait_shown(page, MIP0, "bone")
    bone = pixels(page, MIP0)
    page.select_option(f"{MIP0} select", "lung")
    wait_shown(page, MIP0, "lung")
    lung = pixels(page, MIP0)
    assert np.abs(bone - lung).mean() > 5, np.abs(bone - lung).mean()
    assert np.abs(bone - mip).mean() > 5
    assert (bone[..., 0] - bone[..., 2]).max() > 20   # ivory/red tones, not grey
    assert any("mode=vr" in u and "preset=lung" in u for u in urls)
    assert not any("mode=vr" in u and "window=" in u for u in urls)   # the preset's own ramp
    # the linked pane follows the preset
    wait_shown(page, MIP1, "lung")
    assert page.input_value(f"{MIP1} select") == "lung"
    assert "容积再现" in page.inner_text(f"{MIP0} .pane-label")

    # drag pane 0: previews at <= 256 px while dragging, both panes full and turned after
    yaw0 = page.get_attribute(MIP1, "data-yaw")
    urls.clear()
    mb = page.locator(MIP0).bounding_box()
    page.mouse.move(mb["x"] + mb["width"] / 2, mb["y"] + mb["height"] / 2)
    page.mouse.down()
    page.mouse.move(mb["x"] + mb["width"] / 2 + 150, mb["y"] + mb["height"] / 2 + 20, steps=10)
    page.mouse.up()
    for sel in (MIP0, MIP1):
        page.wait_for_function(f"() => document.querySelector(\"{sel}\").dataset.yaw !== '{yaw0}' && "
                               f"document.querySelector(\"{sel}\").dataset.quality === 'full'", timeout=30000)
    assert page.get_attribute(MIP0, "data-yaw") == page.get_attribute(MIP1, "data-yaw")
    assert page.get_attribute(MIP0, "data-pitch") == page.get_attribute(MIP1, "data-pitch")
    sizes = [int(u.split("size=")[1].split("&")[0]) for u in urls]
    assert min(sizes) <= 256 and max(sizes) > min(sizes), sizes
    turned = pixels(page, MIP0)
    assert np.abs(turned - lung).mean() > 1

    # a right-drag moves the preset's opacity ramp (window): a new image, pane 1 unchanged
    urls.clear()
    page.mouse.move(mb["x"] + mb["width"] / 2, mb["y"] + mb["height"] / 2)
    page.mouse.down(button="right")
    page.mouse.move(mb["x"] + mb["width"] / 2 + 60, mb["y"] + mb["height"] / 2 + 80, steps=6)
    page.mouse.up(button="right")
    page.wait_for_function(f"() => document.querySelector(\"{MIP0}\").dataset.window && "
                           f"document.querySelector(\"{MIP0}\").dataset.quality === 'full'", timeout=30000)
    c, w = (float(x) for x in page.get_attribute(MIP0, "data-window").split(","))
    assert c > -650 and w > 700                     # down: higher centre, right: wider
    assert any("preset=lung" in u and f"window={c:g}%2C{w:g}" in u for u in urls), urls
    assert page.get_attribute(MIP0, "data-yaw") == page.get_attribute(MIP1, "data-yaw")
    assert np.abs(pixels(page, MIP0) - turned).mean() > 1
    shot(page, "ws_vr")
    assert not errs, errs
