"""The radiologist's workspace (issue 18), in Chromium: MPR of two linked exams side by side
(2×3) with the crosshair linked by patient coordinates (through the 对齐 offset), the crosshair
turned to oblique planes (yaw / pitch on the MPR route) and back, and reference lines between
2D panes of one frame of reference. Checked numerically on the page's requests and the SVG."""
from __future__ import annotations

import math
import time
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from .conftest import shot
from .test_viewer import diff, errors_of, pixels, wait_exact

pytestmark = pytest.mark.browser

U = "1.2.826.0.1.3680043.10.1373"
CT_NEW = f"{U}.1.2"
SE_A, SE_B = f"{U}.2.2.2", f"{U}.2.1.2"          # current (row 0) and prior (row 1)
PLANES = ("axial", "coronal", "sagittal")


def cell(i):
    return f".ws-cell[data-cell='{i}'] .vp"


def pane(row, plane):
    return f".pane[data-row='{row}'][data-plane='{plane}']"


def mpr_requests(page):
    """Every MPR image request: (series UID, route plane, query dict)."""
    seen = []

    def on_request(req):
        u = urlparse(req.url)
        if "/mpr/" in u.path and not u.path.endswith("/geometry"):
            parts = u.path.split("/")
            series = parts[parts.index("series") + 1]
            seen.append((series, parts[-1], {k: v[0] for k, v in parse_qs(u.query).items()}))
    page.on("request", on_request)
    return seen


def wait_mpr(page, rows=2, timeout=30000):
    page.wait_for_function("""(rows) => [...Array(rows).keys()].every((r) => ['axial', 'coronal', 'sagittal'].every((p) => {
        const e = document.querySelector(`.pane[data-row='${r}'][data-plane='${p}']`), i = e && e.querySelector('img');
        return i && i.complete && i.naturalWidth > 0 && e.dataset.state === 'done'; }))""", arg=rows, timeout=timeout)
    time.sleep(0.2)


def wait_seen(page, seen, start, wanted, timeout=20.0):
    """Until every (series, plane) of `wanted` was asked for after request number `start`."""
    t0 = time.monotonic()
    while not set(wanted) <= {(s, p) for s, p, _ in seen[start:]}:
        assert time.monotonic() - t0 < timeout, (wanted, seen[start:])
        page.wait_for_timeout(50)


def last(seen, series, plane=None, start=0):
    hits = [q for s, p, q in seen[start:] if s == series and (plane is None or p == plane)]
    return hits[-1] if hits else None


def xyz(q):
    return np.array([float(v) for v in q["position"].split(",")])


def open_pair(page, server):
    page.goto(f"{server.url}/workspace/{CT_NEW}")
    wait_exact(page, cell(0))
    wait_exact(page, cell(1))
    assert page.get_attribute(".ws-cell[data-cell='1']", "data-linked") == "1"


def click_point(page, row, fx, fy):
    """Click at a fraction of row `row`'s axial image; returns the patient point (mm) of that
    pixel from the server's own geometry of the plane shown there."""
    geo = page.evaluate(f"() => window.cfWorkspace.mprs[{row}].geo.axial")
    img = page.locator(f"{pane(row, 'axial')} img").bounding_box()
    x, y = img["x"] + img["width"] * fx, img["y"] + img["height"] * fy
    ow, oh = geo["output_size"]
    u, v = (x - img["x"]) / img["width"] * ow, (y - img["y"]) / img["height"] * oh
    sp = geo.get("output_pixel_spacing") or geo["pixel_spacing"]
    p = (np.array(geo["top_left"]) + u * sp[1] * np.array(geo["row_vector"])
         + v * sp[0] * np.array(geo["column_vector"]))
    page.mouse.click(x, y)
    return p


def test_two_linked_exams_in_mpr_follow_one_patient_point(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    seen = mpr_requests(page)
    open_pair(page, demo_server)
    page.click("#mpr")
    wait_mpr(page)
    assert page.get_attribute("#grid", "data-layout") == "mpr2"
    assert page.locator("#grid .pane").count() == 6
    assert {s for s, _, _ in seen} == {SE_A, SE_B}
    assert "2026-03-12" in page.inner_text(f"{pane(1, 'axial')} .mpr-exam")

    # a click in exam A's axial: A's other planes and all of B's go through that patient point
    n0 = len(seen)
    want = click_point(page, 0, 0.3, 0.65)
    wait_seen(page, seen, n0, [(SE_A, "coronal")] + [(SE_B, p) for p in PLANES])
    wait_mpr(page)
    a_cor = xyz(last(seen, SE_A, "coronal", n0))
    assert np.abs(a_cor[:2] - want[:2]).max() <= 1.0, (a_cor, want)
    for plane in PLANES:
        q = last(seen, SE_B, plane, n0)
        assert q is not None, (plane, seen[n0:])
        assert np.abs(xyz(q) - a_cor).max() <= 1.0, (plane, q, a_cor)
    # B's crosshair is drawn there too: its coronal line on its axial at the same row as A's
    ya = page.evaluate(f"() => +document.querySelector(\"{pane(0, 'axial')} line[data-other='coronal']\").getAttribute('y1')")
    yb = page.evaluate(f"() => +document.querySelector(\"{pane(1, 'axial')} line[data-other='coronal']\").getAttribute('y1')")
    assert abs(ya - yb) <= 3, (ya, yb)   # the two CTs cover the same field of view
    # a window preset reaches both exams
    n1 = len(seen)
    page.select_option("#preset", "lung")
    page.wait_for_function("() => document.querySelectorAll(\".pane[data-window='-600,1500']\").length === 6")
    wait_mpr(page)
    assert {(s, p) for s, p, q in seen[n1:] if q.get("window") == "-600,1500"} == {(s, p) for s in (SE_A, SE_B) for p in PLANES}
    shot(page, "mpr_compare")

    # with a manual offset: B unlinked, scrolled 3 slices, aligned (对齐), linked again
    page.click("#mpr")
    wait_exact(page, cell(1))
    page.click(".ws-cell[data-cell='1'] .link-btn")
    page.click(cell(1))
    for _ in range(3):
        page.keyboard.press("ArrowDown")
    page.click(".ws-cell[data-cell='1'] .align-btn")
    page.click(".ws-cell[data-cell='1'] .link-btn")
    off = page.evaluate("() => window.cfWorkspace.cells[1].vp.offset")
    normal = np.array(page.evaluate("() => window.cfWorkspace.cells[0].vp.stack.normal"))
    assert abs(off) > 5, off
    page.click(cell(0))
    n2 = len(seen)
    page.click("#mpr")
    wait_mpr(page)
    assert "偏移" in page.inner_text(f"{pane(1, 'axial')} .mpr-exam")
    n3 = len(seen)
    want = click_point(page, 0, 0.6, 0.4)
    wait_seen(page, seen, n3, [(SE_A, "sagittal")] + [(SE_B, p) for p in PLANES])
    wait_mpr(page)
    a_sag = xyz(last(seen, SE_A, "sagittal", n3))
    assert np.abs(a_sag[:2] - want[:2]).max() <= 1.0, (a_sag, want)
    for plane in PLANES:
        b = xyz(last(seen, SE_B, plane, n3))
        assert np.abs(b - (a_sag + off * normal)).max() <= 1.0, (plane, b, a_sag, off)
    # scrolling B's coronal moves A's point the same way (back through the offset)
    assert n2 < n3
    n4 = len(seen)
    box = page.locator(pane(1, "coronal")).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 100)
    wait_seen(page, seen, n4, [(SE_A, p) for p in PLANES])
    wait_mpr(page)
    pa, pb = page.evaluate("() => window.cfWorkspace.mprs.map((m) => m.point)")
    assert np.abs(np.array(pb) - (np.array(pa) + off * normal)).max() <= 1e-6, (pa, pb)
    assert np.abs(xyz(last(seen, SE_A, "axial", n4)) - np.array(pa)).max() <= 0.01
    assert abs(np.array(pb)[1] - b[1]) > 0.3      # the coronal moved along its normal (y)
    assert not errs, errs


def test_turning_the_crosshair_makes_oblique_planes_and_reset(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    seen = mpr_requests(page)
    open_pair(page, demo_server)
    page.click("#mpr")
    wait_mpr(page)
    before = {p: pixels(page, f"{pane(0, p)} img") for p in ("coronal", "sagittal")}
    box = page.locator(pane(0, "axial")).bounding_box()
    hs = page.evaluate(f"""() => [...document.querySelectorAll("{pane(0, 'axial')} circle.xhandle[data-other='coronal']")]
        .map((c) => [+c.getAttribute('cx'), +c.getAttribute('cy')])""")
    assert len(hs) == 2
    cx, cy = (hs[0][0] + hs[1][0]) / 2, (hs[0][1] + hs[1][1]) / 2   # the crosshair centre
    r = math.hypot(hs[0][0] - cx, hs[0][1] - cy)
    a0 = math.atan2(hs[0][1] - cy, hs[0][0] - cx)
    turn = 30.0
    n0 = len(seen)
    page.mouse.move(box["x"] + hs[0][0], box["y"] + hs[0][1])
    page.mouse.down()
    for k in range(1, 11):
        a = a0 + math.radians(turn) * k / 10
        page.mouse.move(box["x"] + cx + r * math.cos(a), box["y"] + cy + r * math.sin(a))
    page.mouse.up()
    page.wait_for_function("() => document.querySelector(\".pane[data-row='1'][data-plane='coronal']\").dataset.yaw !== ''")
    wait_mpr(page)
    for series in (SE_A, SE_B):
        # the last renders of both exams: coronal turned by 30°, sagittal by 30° + 90°
        obl = [q for s, p, q in seen[n0:] if s == series and p == "oblique"]
        yaws = sorted(float(q["yaw"]) for q in obl[-2:])
        assert abs(yaws[0] - turn) <= 0.5 and abs(yaws[1] - (turn + 90)) <= 0.5, (series, [q["yaw"] for q in obl])
        assert all(abs(abs(float(q["pitch"])) - 90) <= 0.5 for q in obl[-2:])
    for row in (0, 1):
        assert abs(float(page.get_attribute(pane(row, "coronal"), "data-yaw")) - turn) <= 0.5
        assert abs(float(page.get_attribute(pane(row, "sagittal"), "data-yaw")) - turn - 90) <= 0.5
    assert abs(float(page.get_attribute(pane(0, "axial"), "data-angle")) - turn) <= 0.5
    assert "∠30" in page.inner_text(f"{pane(0, 'axial')} .pane-label")
    assert "斜位 30" in page.inner_text(f"{pane(0, 'coronal')} .pane-label")
    # the coronal line on the axial turned by the same angle
    x1, y1, x2, y2 = page.evaluate(f"""() => ['x1', 'y1', 'x2', 'y2'].map((k) =>
        +document.querySelector("{pane(0, 'axial')} line[data-other='coronal']").getAttribute(k))""")
    assert abs(math.degrees(math.atan2(y2 - y1, x2 - x1)) % 180 - turn) <= 1.0
    turned = {p: pixels(page, f"{pane(0, p)} img") for p in ("coronal", "sagittal")}
    for p in turned:
        assert diff(before[p], turned[p]) > 2, (p, diff(before[p], turned[p]))
    shot(page, "mpr_oblique")

    # reset: orthogonal planes again, the same pictures as before
    n1 = len(seen)
    page.click(f"{pane(0, 'axial')} .mpr-reset")
    page.wait_for_function("() => document.querySelector(\".pane[data-row='1'][data-plane='coronal']\").dataset.yaw === ''")
    wait_mpr(page)
    assert {p for s, p, q in seen[n1:]} == {"coronal", "sagittal"}, seen[n1:]
    assert all("yaw" not in q for _, _, q in seen[n1:])
    assert page.locator(f"{pane(0, 'axial')} .mpr-reset").is_hidden()
    for p in before:
        assert diff(before[p], pixels(page, f"{pane(0, p)} img")) < 0.5, p
    assert not errs, errs


# ---------------------------------------------------------------- reference lines
REF_PATIENT = "RL000123"


def _ref_exam(server):
    """An exam with an axial series (10 slices, z 0…18 mm) and a coronal one (y −20…20 mm) of
    one frame of reference, stored in the live server's catalog."""
    from pydicom.uid import generate_uid

    from adapters.dicom_meta import extract_meta
    from tests.dicom_factory import ct_dataset, to_bytes
    study, frame = generate_uid(), generate_uid()
    ax, cor = generate_uid(), generate_uid()
    files = []
    for i, z in enumerate(range(0, 20, 2)):
        ds = ct_dataset(patient_id=REF_PATIENT, name="Ref^Lines", study_uid=study, series_uid=ax,
                        accession="RL1", z=float(z), size=64)
        ds.PixelSpacing = [1, 1]
        ds.ImagePositionPatient = [-32, -32, z]
        files.append((ds, 1, i + 1, "AX"))
    for i, y in enumerate(range(-20, 21, 10)):
        ds = ct_dataset(patient_id=REF_PATIENT, name="Ref^Lines", study_uid=study, series_uid=cor,
                        accession="RL1", size=64)
        ds.PixelSpacing = [0.5, 1]                      # rows 0.5 mm (z), columns 1 mm (x)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-32, y, 25]
        files.append((ds, 2, i + 1, "COR"))
    for ds, number, inst, desc in files:
        ds.FrameOfReferenceUID = frame
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = number, inst, desc
        data = to_bytes(ds)
        meta, _ = extract_meta(data)
        server.ctx.catalog.store_instance(meta, data)
    return study, ax, cor


def ref_line(page, i):
    """The reference line drawn in pane i, in page pixels, or None."""
    return page.evaluate("""(s) => { const l = document.querySelector(s + ' .vp-ref line');
        if (!l) return null; const b = document.querySelector(s).getBoundingClientRect();
        return ['x1', 'y1', 'x2', 'y2'].map((k, j) => +l.getAttribute(k) + (j % 2 ? b.y : b.x)); }""", cell(i))


def image_row_y(page, i, row):
    """Page y of source row `row` (pixel centre at row + 0.5) of pane i's 64-row image."""
    img = page.locator(f"{cell(i)} img.vp-img").bounding_box()
    return img["y"] + img["height"] * (row + 0.5) / 64


def test_reference_lines_between_axial_and_coronal(desktop, demo_server):
    study, ax, cor = _ref_exam(demo_server)
    page = desktop.new_page()
    errs = errors_of(page)
    page.goto(f"{demo_server.url}/workspace/{study}")
    wait_exact(page, cell(0))
    assert page.get_attribute(cell(0), "data-series") == ax
    page.click("[data-layout='1x2']")
    page.click(".ws-cell[data-cell='1'] .ws-cell-body")
    page.click(f".series-item[data-series='{cor}']")
    wait_exact(page, cell(1))
    page.wait_for_function("(s) => document.querySelector(s).dataset.refLines === '1'", arg=cell(0))
    # pane 0: the axial at z = 18 (the head end first); the coronal at y = 20 cuts it at row 52
    assert page.get_attribute(cell(0), "data-position") == "18.00"
    x1, y1, x2, y2 = ref_line(page, 0)
    assert abs(y1 - image_row_y(page, 0, 52)) <= 2 and abs(y2 - y1) <= 0.01, (y1, image_row_y(page, 0, 52))
    img = page.locator(f"{cell(0)} img.vp-img").bounding_box()
    assert abs(min(x1, x2) - img["x"]) <= 2 and abs(max(x1, x2) - (img["x"] + img["width"])) <= 2
    # pane 1: the coronal; the axial at z = 18 cuts it at row (25 − 18) / 0.5 = 14
    assert page.get_attribute(cell(1), "data-ref-lines") == "1"
    assert abs(ref_line(page, 1)[1] - image_row_y(page, 1, 14)) <= 2
    shot(page, "reflines")

    # scrolling the coronal (y = 10) moves its line on the axial to row 42
    page.keyboard.press("ArrowDown")
    page.wait_for_function("(s) => document.querySelector(s).dataset.index === '1'", arg=cell(1))
    page.wait_for_function("([s, y]) => { const l = document.querySelector(s + ' .vp-ref line'); "
                           "return l && Math.abs(+l.getAttribute('y1') + document.querySelector(s).getBoundingClientRect().y - y) <= 2; }",
                           arg=[cell(0), image_row_y(page, 0, 42)], timeout=5000)
    # scrolling the axial (z = 16): its line on the coronal moves down 4 rows (2 mm)
    page.click(cell(0))
    page.keyboard.press("ArrowDown")
    page.wait_for_function("([s, y]) => { const l = document.querySelector(s + ' .vp-ref line'); "
                           "return l && Math.abs(+l.getAttribute('y1') + document.querySelector(s).getBoundingClientRect().y - y) <= 2; }",
                           arg=[cell(1), image_row_y(page, 1, 18)], timeout=5000)
    # the switch (帮助与设置) hides them; G shows them again
    page.click("#help-btn")
    page.uncheck("#ref-lines")
    assert page.locator(".vp-ref line").count() == 0
    page.click("#help-close")
    page.keyboard.press("g")
    page.wait_for_function("() => document.querySelectorAll('.vp-ref line').length === 2")
    # two axial panes (parallel planes): no line between them
    page.click(cell(1))
    page.click(f".series-item[data-series='{ax}']")
    page.wait_for_function("([s, se]) => document.querySelector(s).dataset.series === se", arg=[cell(1), ax])
    wait_exact(page, cell(1))
    page.wait_for_function("() => document.querySelectorAll('.vp-ref line').length === 0")
    assert not errs, errs
