"""A doctor compares N exams (R2.5) and the hanging protocol, in Chromium: the four exams of
demo patient E (CT, ultrasound, gastroscopy, biopsy) ticked on the doctor page open in 2×2,
each pane with its own exam and its own report; one CT opened alone hangs beside its prior
(same modality and body part) and the two scroll together. Screenshots go to
tests/artifacts/viewer_compare_*.png."""
from __future__ import annotations

import time

import pytest

from .conftest import shot

pytestmark = pytest.mark.browser

U = "1.2.826.0.1.3680043.10.1373"
CT_OLD, CT_NEW = f"{U}.1.1", f"{U}.1.2"          # 张伟 (DF100231): CHEST 2026-03-12, 2026-10-20
E_PATIENT = "DF101164"                             # 杨桂芬: one exam of each kind
# modality -> (study UID, the series the pane shows, accession, words of that exam's report only)
E_EXAMS = {
    "CT": (f"{U}.1.8", f"{U}.2.8.2", "CT2609020027", "微小实性结节"),
    "US": (f"{U}.1.9", f"{U}.2.9.1", "US2609030066", "肝、胆、胰、脾未见明显异常"),
    "ES": (f"{U}.1.10", f"{U}.2.10.1", "ES2609040018", "胃体小弯溃疡"),
    "SM": (f"{U}.1.11", f"{U}.2.11.1", "BL2609050004", "溃疡边缘黏膜慢性活动性炎"),
}


def errors_of(page):
    errs = []
    page.on("pageerror", lambda e: errs.append(str(e)))
    return errs


def cell(i):
    return f".ws-cell[data-cell='{i}']"


def wait_series(page, i, timeout=20000):
    """Pane i has a viewport that shows a picture (a preview or the exact one)."""
    page.wait_for_function(
        "(s) => { const v = document.querySelector(s); return v && v.dataset.series && "
        "['exact', 'preview', 'full'].includes(v.dataset.loaded); }",
        arg=f"{cell(i)} .vp", timeout=timeout)


def wait_exact(page, selector, timeout=20000):
    page.wait_for_function("(s) => document.querySelector(s) && "
                           "document.querySelector(s).dataset.loaded === 'exact'",
                           arg=selector, timeout=timeout)


def doctor_patient(context, server, patient_id):
    page = context.new_page()
    errs = errors_of(page)
    page.goto(f"{server.url}/staff/doctor?patient_id={patient_id}")
    page.wait_for_selector("#history:not(.hidden) #exams tbody tr")
    return page, errs


def test_compare_four_exams_of_four_kinds(desktop, demo_server):
    page, errs = doctor_patient(desktop, demo_server, E_PATIENT)
    boxes = page.locator("#exams tbody input[type=checkbox]")
    assert boxes.count() == 4
    assert page.is_disabled("#compare-btn")
    for k in range(4):
        boxes.nth(k).check()
    assert page.text_content("#compare-btn") == "并排对比所选 4 个检查"
    assert page.is_enabled("#compare-btn")
    assert page.locator("#compare-msg").is_hidden()
    with desktop.expect_page() as popup:
        page.click("#compare-btn")
    ws = popup.value
    ws_errs = errors_of(ws)
    ws.wait_for_load_state()
    assert sorted(ws.url.rsplit("/", 1)[-1].split(",")) == sorted(v[0] for v in E_EXAMS.values())

    # all four, in 2×2, each pane with an image of its own exam and that exam's label
    ws.wait_for_function("() => document.querySelectorAll('#grid .ws-cell').length === 4")
    assert ws.get_attribute("#grid", "data-layout") == "2x2"
    assert ws.get_attribute("[data-layout='2x2']", "class").split().count("on") == 1
    seen = {}
    for i in range(4):
        wait_series(ws, i)
        title = ws.text_content(f"{cell(i)} .title")
        modality = title.split()[1]
        assert modality in E_EXAMS, title
        assert ws.get_attribute(f"{cell(i)} .vp", "data-series") == E_EXAMS[modality][1], (i, title)
        seen[modality] = i
    assert sorted(seen) == sorted(E_EXAMS)
    # the four grid cells really are 2 × 2 on screen
    boxes = [ws.locator(cell(i)).bounding_box() for i in range(4)]
    assert len({round(b["x"]) for b in boxes}) == 2 and len({round(b["y"]) for b in boxes}) == 2
    assert all(b["width"] > 300 and b["height"] > 250 for b in boxes)
    time.sleep(0.5)
    shot(ws, "compare_2x2")

    # every pane opens its own report, labelled with its exam
    for modality, i in seen.items():
        _, _, accession, words = E_EXAMS[modality]
        ws.click(f"{cell(i)} .report-btn")
        box = f"{cell(i)} .ws-cell-report"
        ws.wait_for_selector(box)
        text = ws.inner_text(box)
        assert words in text, (modality, text[:200])
        for other, (_, _, other_acc, other_words) in E_EXAMS.items():
            if other != modality:
                assert other_words not in text and other_acc not in text, (modality, other)
        assert accession in ws.text_content(f"{box} .report-exam")
        assert "report-btn" in ws.get_attribute(f"{cell(i)} .report-btn", "class")
        assert "on" in ws.get_attribute(f"{cell(i)} .report-btn", "class").split()
        # the report column follows, naming the same exam
        assert ws.get_attribute("#report .report-exam", "data-study") == E_EXAMS[modality][0]
        assert words in ws.inner_text("#report")
    assert ws.locator(".ws-cell-report").count() == 4        # all four open at once
    shot(ws, "compare_2x2_reports")
    # a second click closes that pane's report and shows its picture again
    first = seen["CT"]
    ws.click(f"{cell(first)} .report-btn")
    assert ws.locator(f"{cell(first)} .ws-cell-report").count() == 0
    assert ws.locator(".ws-cell-report").count() == 3
    assert not errs and not ws_errs, (errs, ws_errs)


def test_doctor_page_refuses_more_than_four(desktop, demo_server):
    """Five exams ticked (a fifth one added to the server's answer): the compare button is off
    and a bilingual message says why; unticking one enables it again."""
    page = desktop.new_page()
    errs = errors_of(page)

    def five(route):
        r = route.fetch()
        body = r.json()
        extra = dict(body["exams"][0], study_uid=f"{U}.1.999", accession_number="CT2612310001")
        body["exams"].append(extra)
        route.fulfill(response=r, json=body)

    page.route(f"**/api/staff/patients/{E_PATIENT}/exams", five)
    page.goto(f"{demo_server.url}/staff/doctor?patient_id={E_PATIENT}")
    page.wait_for_selector("#history:not(.hidden) #exams tbody tr")
    boxes = page.locator("#exams tbody input[type=checkbox]")
    assert boxes.count() == 5
    for k in range(5):
        boxes.nth(k).check()
    assert page.is_disabled("#compare-btn")
    msg = page.text_content("#compare-msg")
    assert page.locator("#compare-msg").is_visible()
    assert "最多可同时对比 4 个检查，已选 5 个" in msg and "At most 4 exams" in msg, msg
    boxes.nth(4).uncheck()
    assert page.is_enabled("#compare-btn")
    assert page.locator("#compare-msg").is_hidden()
    assert page.text_content("#compare-btn") == "并排对比所选 4 个检查"
    assert not errs, errs


def test_more_than_four_exams_are_capped_with_a_message(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    five = [v[0] for v in E_EXAMS.values()] + [CT_OLD]
    page.goto(f"{demo_server.url}/workspace/{','.join(five)}")
    page.wait_for_selector("#toast:not(.hidden)")
    assert "最多可同时对比 4 个检查" in page.text_content("#toast")
    assert "共选 5 个" in page.text_content("#toast")
    assert page.locator("#grid .ws-cell").count() == 4
    for i in range(4):
        wait_series(page, i)
    shown = {page.get_attribute(f"{cell(i)} .vp", "data-series") for i in range(4)}
    assert shown == {v[1] for v in E_EXAMS.values()}
    assert not errs, errs


def test_hanging_protocol_current_beside_prior_scrolls_together(desktop, demo_server):
    page, errs = doctor_patient(desktop, demo_server, "DF100231")
    row = page.locator("#exams tbody tr", has_text="CT2610200042")
    with desktop.expect_page() as popup:
        row.locator("button", has_text="打开").click()
    ws = popup.value
    ws_errs = errors_of(ws)
    ws.wait_for_load_state()
    assert ws.url.endswith(f"/workspace/{CT_NEW}")
    a, b = f"{cell(0)} .vp", f"{cell(1)} .vp"
    wait_exact(ws, a)
    wait_exact(ws, b)
    assert ws.get_attribute("#grid", "data-layout") == "1x2"
    assert ws.locator("#grid .ws-cell").count() == 2
    # current | prior, labelled, linked
    assert ws.get_attribute(a, "data-series") == f"{U}.2.2.2"
    assert ws.get_attribute(b, "data-series") == f"{U}.2.1.2"
    t0, t1 = ws.text_content(f"{cell(0)} .title"), ws.text_content(f"{cell(1)} .title")
    assert t0.startswith("[本次] 2026-10-20 CT") and t1.startswith("[既往] 2026-03-12 CT"), (t0, t1)
    assert ws.get_attribute(cell(0), "data-linked") == "1" == ws.get_attribute(cell(1), "data-linked")

    # scrolling the current moves the prior to the same patient position
    zs = ws.evaluate("() => window.cfWorkspace.cells[1].vp.positions.map(p => p[2])")
    spacing = abs(zs[1] - zs[0])
    box = ws.locator(a).bounding_box()
    ws.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    moved = 0
    for _ in range(3):
        i0, j0 = ws.get_attribute(a, "data-index"), ws.get_attribute(b, "data-index")
        ws.mouse.wheel(0, 300)
        ws.wait_for_function(f"() => document.querySelector(\"{a}\").dataset.index !== '{i0}'")
        time.sleep(0.1)
        pa, pb = float(ws.get_attribute(a, "data-position")), float(ws.get_attribute(b, "data-position"))
        assert abs(pa - pb) <= spacing / 2 + 0.01, (pa, pb)
        moved += ws.get_attribute(b, "data-index") != j0
    assert moved >= 2, "the prior did not follow the current"
    shot(ws, "compare_hanging")
    assert not errs and not ws_errs, (errs, ws_errs)


@pytest.mark.parametrize("uid", [CT_OLD, E_EXAMS["CT"][0]], ids=["oldest-CT", "only-CT"])
def test_no_prior_keeps_the_single_layout(desktop, demo_server, uid):
    page = desktop.new_page()
    errs = errors_of(page)
    page.goto(f"{demo_server.url}/workspace/{uid}")
    wait_exact(page, f"{cell(0)} .vp")
    assert page.get_attribute("#grid", "data-layout") == "1x1"
    assert page.locator("#grid .ws-cell").count() == 1
    assert not page.text_content(f"{cell(0)} .title").startswith("[")
    assert not errs, errs
