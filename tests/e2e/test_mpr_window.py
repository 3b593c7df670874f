"""MPR in the desktop workspace (Chromium): window presets (肺窗) and window dragging reach the
MPR renders, and the slab control (thickness and MIP / MinIP / average) reaches the MPR route.
Checked on the page's own network requests and on the pixels of the panes."""
from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import pytest

from .conftest import shot
from .test_viewer import diff, errors_of, pixels, wait_exact

pytestmark = pytest.mark.browser

U = "1.2.826.0.1.3680043.10.1373"
CT_NEW = f"{U}.1.2"
CELL = ".ws-cell[data-cell='0'] .vp"
PLANES = ("axial", "coronal", "sagittal")


def mpr_requests(page):
    """Every MPR image request of the page (not the geometry), as (plane, query dict)."""
    seen = []

    def on_request(req):
        u = urlparse(req.url)
        if "/mpr/" in u.path and not u.path.endswith("/geometry"):
            seen.append((u.path.rsplit("/", 1)[1], {k: v[0] for k, v in parse_qs(u.query).items()}))
    page.on("request", on_request)
    return seen


def wait_panes(page, timeout=20000):
    """Every pane shows a decoded image rendered for its latest request."""
    page.wait_for_function("""() => ['axial', 'coronal', 'sagittal'].every((p) => {
        const r = document.querySelector(`[data-plane='${p}']`), i = r && r.querySelector('img');
        return i && i.complete && i.naturalWidth > 0 && r.dataset.state === 'done'; })""", timeout=timeout)


def pane(plane):
    # the exam opened (row 0; its linked prior is the MPR's second row)
    return f"[data-row='0'][data-plane='{plane}']"


def open_mpr(page, server):
    page.goto(f"{server.url}/workspace/{CT_NEW}")
    wait_exact(page, CELL)
    page.click("#mpr")
    wait_panes(page)


def test_mpr_window_preset_drag_and_slab(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    seen = mpr_requests(page)
    open_mpr(page, demo_server)
    # the file's window (the demo CT: 40/400) goes with the first MPR requests
    assert {q.get("window") for _, q in seen} == {"40,400"}, seen
    before = {p: pixels(page, pane(p)) for p in PLANES}

    # 肺窗: every plane is asked again with the lung window, and the pictures change
    n0 = len(seen)
    page.select_option("#preset", "lung")
    page.wait_for_function("() => ['axial','coronal','sagittal'].every((p) => "
                           "document.querySelector(`[data-plane='${p}']`).dataset.window === '-600,1500')")
    wait_panes(page)
    lung = [(p, q) for p, q in seen[n0:] if q.get("window") == "-600,1500"]
    assert {p for p, _ in lung} == set(PLANES), seen[n0:]
    after = {p: pixels(page, pane(p)) for p in PLANES}
    for p in PLANES:
        assert diff(before[p], after[p]) > 3, (p, diff(before[p], after[p]))
    shot(page, "mpr_lung")

    # right-button drag windows in MPR: a new window on every plane, new renders
    n1 = len(seen)
    box = page.locator(pane("axial")).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down(button="right")
    page.mouse.move(x - 120, y + 60, steps=6)
    page.mouse.up(button="right")
    page.wait_for_function("() => ['axial','coronal','sagittal'].every((p) => "
                           "document.querySelector(`[data-plane='${p}']`).dataset.window !== '-600,1500')")
    dragged = page.get_attribute(pane("axial"), "data-window")
    c, w = (float(v) for v in dragged.split(","))
    assert w < 1500 and c > -600, dragged     # left narrows, down raises the centre
    wait_panes(page)
    time.sleep(0.3)
    wins = {q.get("window") for _, q in seen[n1:]}
    assert any(v and v != "-600,1500" for v in wins), seen[n1:]
    last = {p: q for p, q in seen[n1:]}
    for p in PLANES:
        assert last[p]["window"] == dragged, (p, last[p], dragged)
    assert diff(after["axial"], pixels(page, pane("axial"))) > 2
    # the window tool: a left drag windows too (instead of moving the cross-reference point)
    page.click("[data-tool='window']")
    idx = [page.get_attribute(pane(p), "data-index") for p in ("axial", "sagittal")]
    cb = page.locator(pane("coronal")).bounding_box()
    page.mouse.move(cb["x"] + cb["width"] / 2, cb["y"] + cb["height"] * 0.25)   # a pick here would move the axial plane
    page.mouse.down()
    page.mouse.move(cb["x"] + cb["width"] / 2 + 100, cb["y"] + cb["height"] * 0.25, steps=5)
    page.mouse.up()
    page.wait_for_function(f"() => document.querySelector(\"{pane('axial')}\").dataset.window !== '{dragged}'")
    c2, w2 = (float(v) for v in page.get_attribute(pane("axial"), "data-window").split(","))
    assert w2 > w and c2 == c, (c2, w2, c, w)
    wait_panes(page)
    assert [page.get_attribute(pane(p), "data-index") for p in ("axial", "sagittal")] == idx
    page.click("[data-tool='scroll']")
    wait_panes(page)
    drag_px = {p: pixels(page, pane(p)) for p in PLANES}

    # slab: MIP 10 mm goes with the request and changes the picture
    n2 = len(seen)
    page.select_option("#slab", "10")
    page.wait_for_function("() => document.querySelector(\"[data-plane='coronal']\").dataset.slab === 'mip:10'")
    wait_panes(page)
    slab = [q for p, q in seen[n2:] if p == "coronal"]
    assert slab and slab[-1].get("slab") == "10" and slab[-1].get("mode") == "mip", seen[n2:]
    mip_px = pixels(page, pane("coronal"))
    assert diff(drag_px["coronal"], mip_px) > 1, diff(drag_px["coronal"], mip_px)
    # MinIP of the same slab: another request, another picture (darker than the MIP)
    n3 = len(seen)
    page.select_option("#slab-mode", "minip")
    page.wait_for_function("() => document.querySelector(\"[data-plane='coronal']\").dataset.slab === 'minip:10'")
    wait_panes(page)
    minip = [q for p, q in seen[n3:] if p == "coronal"]
    assert minip and minip[-1].get("mode") == "minip" and minip[-1].get("slab") == "10", seen[n3:]
    minip_px = pixels(page, pane("coronal"))
    from PIL import ImageStat
    assert ImageStat.Stat(minip_px).mean[0] < ImageStat.Stat(mip_px).mean[0] - 1
    # the label names the mode and thickness; English too
    assert "MinIP 10" in page.inner_text(f"{pane('coronal')} .pane-label")
    page.select_option("#slab-mode", "avg")
    page.wait_for_function("() => document.querySelector(\"[data-plane='coronal']\").dataset.slab === 'avg:10'")
    page.wait_for_function(f"() => document.querySelector(\"{pane('coronal')} .pane-label\").innerText.includes('平均 10')")
    page.click("#lang-switch")
    page.wait_for_function(f"() => document.querySelector(\"{pane('coronal')} .pane-label\").innerText.includes('Average 10')")
    assert page.inner_text("#slab-mode option[value='avg']") == "Average"
    page.click("#lang-switch")
    # back to 0 mm: no slab in the request
    n4 = len(seen)
    page.select_option("#slab", "0")
    page.wait_for_function("() => document.querySelector(\"[data-plane='coronal']\").dataset.slab === ''")
    wait_panes(page)
    assert all(not q.get("slab") for _, q in seen[n4:]), seen[n4:]
    shot(page, "mpr_slab")
    assert not errs, errs
