"""Measurements in the desktop workspace (issue 18, Chromium): the CT value under the pointer
(read back from the DICOM file), an ellipse ROI on the phantom's heart (known size and HU:
adapters/demo_data.py), angle and Cobb angle drawn at known screen angles, arrow and text
notes, the same image in two panes, the measurement list (jump, edit, delete), saved
measurements surviving a reload (/api/measurements).
Screenshot: tests/artifacts/viewer_ws_measure.png."""
from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest

from adapters.demo_data import CT_FOV_MM, CT_LUNG_APEX_Z

from .conftest import shot
from .test_viewer import errors_of, wait_exact

pytestmark = pytest.mark.browser

U = "1.2.826.0.1.3680043.10.1373"
CT_OLD = f"{U}.1.1"          # exam 1: no shift, no start offset
CELL = ".ws-cell[data-cell='0'] .vp"
CELL1 = ".ws-cell[data-cell='1'] .vp"
SIZE = 512
PS = CT_FOV_MM / SIZE
X0 = -(SIZE - 1) / 2 * PS   # patient x (and y) of pixel 0's centre
# the heart at s = 163.3 mm below the apex (instance 16 of 24): its inner part is an ellipse
# of 44 × 34 mm (× 0.997) at (16, -18) mm filled with 35 HU (plus noise of SD 12 HU)
HEART_Z = CT_LUNG_APEX_Z - (-20.0 + (24 - 16) * round(550.0 / 24, 3))
HEART_XY, HEART_HU, ROI_MM = (16.0, -18.0), 35.0, 20.0


def to_px(mm: float) -> float:
    """Patient mm (x or y) → continuous image coordinate (pixel i spans [i, i+1))."""
    return (mm - X0) / PS + 0.5


def screen(page, x, y, sel_index=0):
    """Image point → page coordinates (CSS px) in pane sel_index."""
    return page.evaluate("""([i, x, y]) => {
        const vp = window.cfWorkspace.cells[i].vp, b = vp.root.getBoundingClientRect();
        const s = vp.measureTools.toScreen({ x, y });
        return [b.left + s.x, b.top + s.y]; }""", [sel_index, x, y])


def file_hu(server, series, sop):
    """HU of every pixel of one instance, read with pydicom from the stored file."""
    import pydicom
    ctx = server.ctx
    ref = ctx.renders.lookup_instance(CT_OLD, series, sop)
    with ctx.storage.path_or_file(ref.relpath) as src:
        ds = pydicom.dcmread(src)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def open_heart(page, server):
    page.goto(f"{server.url}/workspace/{CT_OLD}")
    page.wait_for_function(f"() => document.querySelector(\"{CELL}\") && window.cfWorkspace && window.cfMeasures")
    wait_exact(page, CELL)
    index = page.evaluate(f"""() => window.cfWorkspace.cells[0].vp.positions
        .findIndex(p => Math.abs(p[2] - ({HEART_Z})) < 0.5)""")
    assert index >= 0
    page.evaluate(f"() => window.cfWorkspace.cells[0].vp.setIndex({index}, true)")
    page.wait_for_function(f"() => document.querySelector(\"{CELL}\").dataset.index === '{index}'")
    wait_exact(page, CELL)
    return index


def test_pixel_value_roi_angle_cobb_notes_list(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    dialogs = []

    def on_dialog(d):
        dialogs.append(d.message)
        d.accept("结节 nodule")
    page.on("dialog", on_dialog)
    index = open_heart(page, demo_server)
    sop, series = page.evaluate("() => [window.cfWorkspace.cells[0].vp.item().sop, window.cfWorkspace.cells[0].series.series_uid]")
    hu = file_hu(demo_server, series, sop)

    # CT value under the pointer: "CT值 n HU (x i, y j)" = the file's value of that pixel
    cx, cy = to_px(HEART_XY[0]), to_px(HEART_XY[1])
    for (ix, iy) in ((cx, cy), (cx + 7.3, cy - 11.6), (20.5, 30.5)):
        page.mouse.move(*screen(page, ix, iy))
        page.wait_for_function(f"() => /^\\d+,\\d+,-?\\d/.test(document.querySelector(\"{CELL}\").dataset.pixel || '')")
        text = page.inner_text(f"{CELL} .ov-value")
        m = re.search(r"CT值 (-?\d+) HU\s+\(x (\d+), y (\d+)\)", text)
        assert m, text
        i, j = int(m.group(2)), int(m.group(3))
        assert (i, j) == (math.floor(ix), math.floor(iy)), (text, ix, iy)
        assert abs(int(m.group(1)) - hu[j, i]) <= 1, (text, hu[j, i])
    assert abs(hu[30, 20] + 1000) < 60          # air outside the body
    # answered locally once the frame's values are here: well under 50 ms
    ms = page.evaluate(f"""() => {{
        const root = document.querySelector("{CELL}"), b = root.getBoundingClientRect();
        const t0 = performance.now();
        for (let k = 0; k < 20; k++) root.dispatchEvent(new PointerEvent('pointermove',
            {{ clientX: b.left + 200 + k, clientY: b.top + 200, pointerId: 1, pointerType: 'mouse', bubbles: true }}));
        const dt = (performance.now() - t0) / 20;
        return [dt, root.dataset.pixel]; }}""")
    assert ms[0] < 50 and ms[1].split(",")[2] != "", ms

    # ellipse ROI (key E) of radius 20 mm inside the heart: area π·20² mm² ±2 %, mean 35 HU ±1
    page.keyboard.press("e")
    r = ROI_MM / PS
    a = screen(page, cx - r, cy - r)
    b = screen(page, cx + r, cy + r)
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move(*b, steps=6)
    page.mouse.up()
    page.wait_for_function("() => window.cfMeasures.items.some(m => m.kind === 'ellipse' && m.values.mean !== undefined)")
    m = page.evaluate("() => window.cfMeasures.items.find(m => m.kind === 'ellipse')")
    v = m["values"]
    assert v["unit"] == "HU"
    assert abs(v["area_mm2"] - math.pi * ROI_MM ** 2) <= 0.02 * math.pi * ROI_MM ** 2, v
    assert abs(v["mean"] - HEART_HU) <= 1.0, v
    assert 6 < v["sd"] < 20 and v["min"] < HEART_HU < v["max"], v
    # the same statistics from the file (pixel centres inside the drawn ellipse)
    (px0, py0), (px1, py1) = m["points"]
    ex, ey = (px0 + px1) / 2, (py0 + py1) / 2
    rx, ry = abs(px1 - px0) / 2, abs(py1 - py0) / 2
    jj, ii = np.mgrid[0:SIZE, 0:SIZE]
    inside = ((ii + 0.5 - ex) / rx) ** 2 + ((jj + 0.5 - ey) / ry) ** 2 <= 1
    assert abs(v["mean"] - hu[inside].mean()) < 0.01 and abs(v["sd"] - hu[inside].std()) < 0.01
    assert v["min"] == hu[inside].min() and v["max"] == hu[inside].max()
    assert m["frame"] == 1 and m["sop_uid"] == sop and m["study_uid"] == CT_OLD
    label = page.text_content(f"{CELL} .mk-ellipse .m-text")
    assert "mm²" in label and "HU" in label, label

    # angle (key A): three clicks at screen angles of 53.13° (3-4-5), isotropic pixels
    page.keyboard.press("a")
    vx, vy = screen(page, cx - 120, cy + 120)
    for (x, y) in ((vx + 200, vy), (vx, vy), (vx + 120, vy - 160)):
        page.mouse.click(x, y)
    page.wait_for_function("() => window.cfMeasures.items.some(m => m.kind === 'angle')")
    ang = page.evaluate("() => window.cfMeasures.items.find(m => m.kind === 'angle').values.angle_deg")
    assert abs(ang - math.degrees(math.atan2(160, 120))) <= 0.5, ang
    assert page.text_content(f"{CELL} .mk-angle .m-text").endswith("°")

    # Cobb angle (key C): two dragged lines at +8.53° and -11.31° → 19.84°
    page.keyboard.press("c")
    for (x1, y1, x2, y2) in ((vx, vy - 200, vx + 200, vy - 170), (vx, vy - 60, vx + 200, vy - 100)):
        page.mouse.move(x1, y1)
        page.mouse.down()
        page.mouse.move(x2, y2, steps=4)
        page.mouse.up()
    page.wait_for_function("() => window.cfMeasures.items.some(m => m.kind === 'cobb')")
    cobb = page.evaluate("() => window.cfMeasures.items.find(m => m.kind === 'cobb').values.angle_deg")
    assert abs(cobb - (math.degrees(math.atan(30 / 200)) + math.degrees(math.atan(40 / 200)))) <= 0.5, cobb

    # arrow (key X) and a text note (key T, the prompt's text)
    page.keyboard.press("x")
    page.mouse.move(vx + 300, vy - 50)
    page.mouse.down()
    page.mouse.move(vx + 360, vy - 110, steps=3)
    page.mouse.up()
    page.keyboard.press("t")
    page.mouse.click(vx + 300, vy + 40)
    page.wait_for_function("() => window.cfMeasures.items.some(m => m.kind === 'text')")
    assert dialogs and "文字" in dialogs[0]
    assert page.text_content(f"{CELL} .mk-text .m-note") == "结节 nodule"
    assert page.locator(f"{CELL} .mk-arrow polygon.m-head").count() == 1
    # length (key M) still labels in mm
    page.keyboard.press("m")
    page.mouse.move(vx, vy + 60)
    page.mouse.down()
    page.mouse.move(vx + 150, vy + 60, steps=4)
    page.mouse.up()
    assert page.text_content(f"{CELL} .mk-length .m-text").endswith(" mm")
    kinds = page.evaluate("() => window.cfMeasures.items.map(m => m.kind)")
    assert sorted(kinds) == ["angle", "arrow", "cobb", "ellipse", "length", "text"], kinds
    assert page.locator(f"{CELL} .m-item").count() == 6
    # tooltips name the keys
    for tool, key in (("ellipse", "(E)"), ("rect", "(B)"), ("angle", "(A)"), ("cobb", "(C)"), ("arrow", "(X)"), ("text", "(T)")):
        assert key in page.get_attribute(f"[data-tool='{tool}']", "title")

    # the same image in a second pane: the measurements are drawn there too
    page.keyboard.press("s")
    page.keyboard.press("2")                  # 1×2: the exam has no prior, so it opened alone
    page.click(".ws-cell[data-cell='1'] .ws-cell-body")
    series_uid = page.evaluate("() => window.cfWorkspace.cells[0].series.series_uid")
    page.click(f".series-item[data-series='{series_uid}']")
    page.wait_for_function(f"() => window.cfWorkspace.cells[1].vp && window.cfWorkspace.cells[1].vp.stack "
                           f"&& window.cfWorkspace.cells[1].series.series_uid === '{series_uid}'")
    page.evaluate(f"() => window.cfWorkspace.cells[1].vp.setIndex({index})")
    page.wait_for_function(f"() => document.querySelectorAll(\"{CELL1} .m-item\").length === 6")
    wait_exact(page, CELL1)
    shot(page, "ws_measure")
    page.evaluate("() => window.cfWorkspace.cells[1].vp.setIndex(0)")
    page.wait_for_function(f"() => document.querySelectorAll(\"{CELL1} .m-item\").length === 0")

    # the list (key L): one row each; editing the note changes the drawing; delete; jump
    page.keyboard.press("l")
    page.wait_for_selector("#meas-panel:not(.hidden)")
    assert page.locator("#meas-list .meas-row").count() == 6
    row = page.locator("#meas-list .meas-row[data-kind='ellipse']")
    assert "HU" in row.inner_text() and "mm²" in row.inner_text()
    note = page.locator("#meas-list .meas-row[data-kind='text'] input.meas-text")
    note.fill("改 edited")
    note.press("Enter")
    note.evaluate("e => e.dispatchEvent(new Event('change'))")
    page.wait_for_function(f"() => [...document.querySelectorAll(\"{CELL} .m-note\")].some(e => e.textContent === '改 edited')")
    page.click("#meas-list .meas-row[data-kind='arrow'] .meas-del")
    assert page.locator("#meas-list .meas-row").count() == 5
    assert page.locator(f"{CELL} .mk-arrow").count() == 0
    # jump: pane 0 scrolled away, a row brings its image back
    page.evaluate("() => window.cfWorkspace.cells[0].vp.setIndex(0, true)")
    page.evaluate("() => window.cfWorkspace.cells.forEach((c, i) => i === 0 && c.cell.dispatchEvent(new Event('pointerdown')))")
    page.click("#meas-list .meas-row[data-kind='angle'] .meas-kind")
    page.wait_for_function(f"() => document.querySelector(\"{CELL}\").dataset.index === '{index}'")
    assert page.locator("#meas-list .meas-row.sel[data-kind='angle']").count() == 1
    # Delete removes the selected one; Esc cancels an unfinished angle
    page.keyboard.press("Delete")
    assert page.locator("#meas-list .meas-row").count() == 4
    page.keyboard.press("a")
    x, y = screen(page, cx, cy)
    page.mouse.click(x, y)
    page.keyboard.press("Escape")
    page.mouse.move(x + 50, y + 50)
    assert page.locator(f"{CELL} .m-preview").count() == 0
    # no measurement API yet: kept on the page, said so, no error
    if page.evaluate("() => window.cfMeasures.remote") is False:
        assert page.is_visible("#meas-local")
    time.sleep(0.2)
    assert not errs, errs


def test_measurements_persist_across_reload(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    open_heart(page, demo_server)
    cx, cy = to_px(HEART_XY[0]), to_px(HEART_XY[1])
    page.keyboard.press("b")                 # rectangle ROI
    page.mouse.move(*screen(page, cx - 20, cy - 15))
    page.mouse.down()
    page.mouse.move(*screen(page, cx + 20, cy + 15), steps=5)
    page.mouse.up()
    page.wait_for_function("() => window.cfMeasures.items.some(m => m.kind === 'rect' && m.id !== undefined "
                           "&& m.values.mean !== undefined)")
    saved = page.evaluate("() => window.cfMeasures.items.find(m => m.kind === 'rect')")
    page.reload()
    page.wait_for_function("() => window.cfMeasures && window.cfMeasures.items.some(m => m.id === %d)" % saved["id"])
    again = page.evaluate("(id) => window.cfMeasures.items.find(m => m.id === id)", saved["id"])
    assert again["points"] == saved["points"] and again["kind"] == "rect"
    assert abs(again["values"]["mean"] - saved["values"]["mean"]) < 1e-6
    assert abs(again["values"]["mean"] - HEART_HU) <= 3
    page.keyboard.press("l")
    page.click(f"#meas-list .meas-row[data-cid='{again['cid']}'] .meas-del")
    page.wait_for_timeout(300)
    r = desktop.request.get(f"{demo_server.url}/api/measurements?study_uid={CT_OLD}")
    assert all(m["id"] != saved["id"] for m in r.json()["measurements"])
    assert not errs, errs


def test_client_saves_through_the_api_contract(desktop, demo_server):
    """The client's side of /api/measurements against a stand-in (page.route): saved on
    drawing, edited with PUT, back after a reload, deleted, SR export."""
    saved, calls = {}, []

    def handle(route):
        req = route.request
        path = req.url.split(demo_server.url, 1)[1]
        calls.append((req.method, path.split("?")[0]))
        body = req.post_data_json if req.method in ("POST", "PUT") else None
        if req.method == "GET":
            return route.fulfill(json={"ok": True, "measurements": list(saved.values())})
        if req.method == "POST" and path.startswith("/api/measurements/sr"):
            return route.fulfill(json={"ok": True, "series_uid": "1.2.3", "count": len(saved)})
        if req.method == "POST":
            m = {**body, "id": len(saved) + 1}
            saved[m["id"]] = m
            return route.fulfill(status=201, json={"ok": True, "measurement": m})
        mid = int(path.rsplit("/", 1)[1])
        if req.method == "PUT":
            saved[mid] = {**body, "id": mid}
            return route.fulfill(json={"ok": True, "measurement": saved[mid]})
        saved.pop(mid, None)
        return route.fulfill(json={"ok": True})

    desktop.route("**/api/measurements**", handle)
    try:
        page = desktop.new_page()
        errs = errors_of(page)
        page.on("dialog", lambda d: d.accept("first"))
        open_heart(page, demo_server)
        cx, cy = to_px(HEART_XY[0]), to_px(HEART_XY[1])
        page.keyboard.press("b")
        page.mouse.move(*screen(page, cx - 20, cy - 15))
        page.mouse.down()
        page.mouse.move(*screen(page, cx + 20, cy + 15), steps=5)
        page.mouse.up()
        page.keyboard.press("t")
        page.mouse.click(*screen(page, cx + 40, cy + 40))
        page.wait_for_function("() => window.cfMeasures.items.length === 2 && window.cfMeasures.items.every(m => m.id)")
        rect = next(m for m in saved.values() if m["kind"] == "rect")
        assert set(rect) == {"id", "study_uid", "series_uid", "sop_uid", "frame", "kind", "points", "text", "values"}
        assert rect["values"]["unit"] == "HU" and abs(rect["values"]["mean"] - HEART_HU) <= 3
        assert abs(rect["values"]["area_mm2"] - 40 * 30 * PS * PS) <= 0.02 * 40 * 30 * PS * PS
        page.keyboard.press("l")
        note = page.locator("#meas-list .meas-row[data-kind='text'] input.meas-text")
        note.fill("second")
        note.evaluate("e => e.dispatchEvent(new Event('change'))")
        page.wait_for_timeout(300)
        assert any(m["text"] == "second" for m in saved.values()), saved
        open_heart(page, demo_server)         # a new page load: the measurements come back
        page.wait_for_function("() => window.cfMeasures.items.length === 2")
        assert page.evaluate("() => window.cfMeasures.remote") is True
        page.wait_for_function(f"() => document.querySelectorAll(\"{CELL} .m-item\").length === 2")
        assert page.text_content(f"{CELL} .mk-text .m-note") == "second"
        page.keyboard.press("l")
        page.click("#meas-list .meas-row[data-kind='rect'] .meas-del")
        page.wait_for_timeout(300)
        assert [m["kind"] for m in saved.values()] == ["text"]
        page.click("#meas-sr")
        page.wait_for_selector("#toast:not(.hidden)")
        assert "1" in page.inner_text("#toast")
        assert ("POST", "/api/measurements/sr") in calls
        assert not page.is_visible("#meas-local")
        assert not errs, errs
    finally:
        desktop.unroute("**/api/measurements**")


def test_sr_export_from_the_list_is_stored_with_the_exam(desktop, demo_server):
    """The list's export button against the real server: a Comprehensive SR (TID 1500) stored
    with the exam as a new series, read back with pydicom, holding the ROI's mean and area."""
    import io
    import pydicom
    page = desktop.new_page()
    errs = errors_of(page)
    open_heart(page, demo_server)
    cx, cy = to_px(HEART_XY[0]), to_px(HEART_XY[1])
    page.keyboard.press("e")                 # ellipse ROI on the heart
    page.mouse.move(*screen(page, cx - 15, cy - 15))
    page.mouse.down()
    page.mouse.move(*screen(page, cx + 15, cy + 15), steps=5)
    page.mouse.up()
    page.wait_for_function("() => window.cfMeasures.items.some(m => m.kind === 'ellipse' "
                           "&& m.id !== undefined && m.values.mean !== undefined)")
    roi = page.evaluate("() => window.cfMeasures.items.find(m => m.kind === 'ellipse')")
    page.keyboard.press("l")
    with page.expect_response(lambda r: "/api/measurements/sr" in r.url) as resp:
        page.click("#meas-sr")
    out = resp.value.json()
    assert resp.value.status == 201 and out["count"] >= 1, out
    r = desktop.request.get(f"{demo_server.url}/wado?requestType=WADO&studyUID={CT_OLD}"
                            f"&seriesUID={out['series_uid']}&objectUID={out['sop_uid']}"
                            "&contentType=application/dicom")
    assert r.status == 200, r.status
    sr = pydicom.dcmread(io.BytesIO(r.body()))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.Modality == "SR"
    assert sr.StudyInstanceUID == CT_OLD

    def nums(items):
        for it in items:
            if it.ValueType == "NUM":
                yield (it.ConceptNameCodeSequence[0].CodeMeaning.lower(),
                       float(it.MeasuredValueSequence[0].NumericValue))
            yield from nums(getattr(it, "ContentSequence", []))
    found = list(nums(sr.ContentSequence))     # every measurement of this doctor on the exam
    saved = desktop.request.get(f"{demo_server.url}/api/measurements?study_uid={CT_OLD}").json()
    assert out["count"] == len(saved["measurements"])
    stored = next(m for m in saved["measurements"] if m["id"] == roi["id"])["values"]
    assert any(k == "mean" and abs(v - stored["mean"]) < 0.01 for k, v in found)
    assert any(k == "area" and abs(v - stored["area_mm2"]) < 0.01 for k, v in found)
    assert abs(stored["mean"] - HEART_HU) <= 3
    study = desktop.request.get(f"{demo_server.url}/api/studies/{CT_OLD}").json()
    assert out["series_uid"] in [d["series_uid"] for d in study["documents"]]
    assert out["series_uid"] not in [s["series_uid"] for s in study["series"]]
    page.wait_for_timeout(300)
    assert not errs, errs
