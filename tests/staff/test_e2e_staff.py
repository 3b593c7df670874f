"""Staff pages in Chromium: the done-when walk from a fresh ./run.sh, the front desk switching
images off (a share visitor then gets the report only), and a doctor comparing two exams of
one patient side by side. Screenshots go to tests/artifacts/staff_*.png."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import ARGS, ARTIFACTS, _need_chromium

from .demo_server import drop_mysql, session_cookie, start_demo_server

pytestmark = [pytest.mark.db, pytest.mark.browser]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chromium():
    _need_chromium()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        yield b
        b.close()


def totp_code(secret: str) -> str:
    import pyotp
    return pyotp.TOTP(secret).now()


def sign_in(page, base, username, password, *, new_password=None, enrol=False):
    page.goto(f"{base}/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-submit")
    if enrol:
        page.wait_for_selector("#enrol-form:not(.hidden)")
        secret = page.text_content("#enrol-secret")
        page.fill("#enrol-code", totp_code(secret))
        page.click("#enrol-form button[type=submit]")
        page.wait_for_selector("#recovery:not(.hidden)")
        assert len(page.query_selector_all("#recovery-codes li")) == 10
        page.click("#recovery-done")
    if new_password:
        page.wait_for_selector("#change-form:not(.hidden)")
        page.fill("#old-password", password)
        page.fill("#new-password", new_password)
        page.fill("#new-password2", new_password)
        page.click("#change-submit")
    try:
        page.wait_for_url(re.compile(r".*/staff/\w+$"))
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"staff_failed_sign_in_{username}.png"))
        raise AssertionError(f"{username} not signed in: {page.url} "
                             f"{page.text_content('#msg')}") from None


def nav_pages(page):
    page.wait_for_selector("#topbar nav a")
    return [a.text_content() for a in page.query_selector_all("#topbar nav a")]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_done_when_fresh_run_admin_creates_staff(chromium, tmp_path):
    """Fresh ./run.sh: the printed admin signs in, must enrol the second factor and change
    the password, creates a front-desk and a doctor account; each sees exactly their pages;
    every action is in the audit log."""
    if os.environ.get("CLOUDFILM_TEST_DB") == "mysql":
        pytest.skip("runs ./run.sh on its default SQLite")
    port = free_port()
    env = dict(os.environ, CLOUDFILM_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}",
               CLOUDFILM_DATA_DIR=str(tmp_path / "data"),
               CLOUDFILM_SECRET_KEY_FILE=str(tmp_path / "key"), CLOUDFILM_PORT=str(port),
               CLOUDFILM_DEMO_DATA="false")
    env.pop("CLOUDFILM_ADMIN_PASSWORD", None)
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([str(ROOT / "run.sh"), "serve"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        password = None
        for _ in range(600):
            log.seek(0)
            m = re.search(r"first admin: admin\s+密码 / password: (\S+)", log.read())
            if m:
                password = m.group(1)
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=2)
                    break
                except OSError:
                    pass
            time.sleep(0.2)
        assert password, "the first admin's password was not printed"
        ctx = chromium.new_context(viewport={"width": 1366, "height": 768}, locale="zh-CN")
        page = ctx.new_page()
        page.on("dialog", lambda d: d.accept())
        page.goto(f"{base}/staff/admin")
        page.wait_for_url(re.compile(r".*/login\?next=%2Fstaff%2Fadmin$"))
        sign_in(page, base, "admin", password, new_password="Chief-New-Pass-7", enrol=True)
        assert page.url.endswith("/staff/admin")
        assert nav_pages(page) == ["系统管理"]
        temps = {}
        for user, role in (("qiantai1", "frontdesk"), ("yisheng1", "doctor")):
            page.fill("#u-name", user)
            page.fill("#u-display", user)
            page.select_option("#u-role", role)
            page.click("#u-create")
            page.wait_for_selector(f"#users tr[data-user={user}]")
            text = page.text_content("#new-pass")
            temps[user] = re.search(r"临时密码：(\S+?)（", text).group(1)
        page.screenshot(path=str(ARTIFACTS / "staff_admin_users.png"), full_page=True)
        expected = {"qiantai1": ("frontdesk", ["前台"]), "yisheng1": ("doctor", ["医生工作台"])}
        for user, (home, pages) in expected.items():
            c = chromium.new_context(viewport={"width": 1366, "height": 768}, locale="zh-CN")
            p = c.new_page()
            sign_in(p, base, user, temps[user], new_password="Fresh-Staff-Pass-9")
            assert p.url.endswith(f"/staff/{home}")
            assert nav_pages(p) == pages
            for other in ("frontdesk", "doctor", "admin", "security", "audit"):
                if other != home:
                    r = p.goto(f"{base}/staff/{other}")
                    assert r.status == 403, (user, other)
            p.screenshot(path=str(ARTIFACTS / f"staff_{home}_first.png"))
            c.close()
        # the audit log holds every step (read as the audit admin would, via the database)
        ctx.close()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)
    import sqlite3
    db = sqlite3.connect(tmp_path / "db.sqlite")
    rows = db.execute("select action, actor_id, object_id, outcome from audit_event "
                      "order by id").fetchall()
    seen = {(a, actor, obj, out) for a, actor, obj, out in rows}
    for step in [("totp.enrol", "admin", "admin", "ok"), ("login", "admin", "", "ok"),
                 ("password.change", "admin", "", "ok"),
                 ("user.create", "admin", "qiantai1", "ok"),
                 ("user.create", "admin", "yisheng1", "ok"),
                 ("login", "qiantai1", "", "ok"), ("password.change", "qiantai1", "", "ok"),
                 ("login", "yisheng1", "", "ok"), ("password.change", "yisheng1", "", "ok")]:
        assert step in seen, (step, rows)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    _need_chromium()
    server, ctx, name = start_demo_server(tmp_path_factory.mktemp("e2e_staff"))
    from models.accounts import create_user
    from tests.conftest import admins_sign_in_with_password_alone
    create_user("fd_e2e", "Front-Desk-Pass-1", ["frontdesk"], must_change_password=False)
    create_user("doc_e2e", "Doctor-E2e-Pass-1", ["doctor"], must_change_password=False)
    with admins_sign_in_with_password_alone():
        yield server
    server.stop()
    ctx.close()
    drop_mysql(name)


def test_front_desk_switches_images_off_share_sees_report_only(chromium, demo):
    for label, viewport in (("pc", {"width": 1366, "height": 768}),
                            ("tablet", {"width": 1024, "height": 768})):
        ctx = chromium.new_context(viewport=viewport, locale="zh-CN",
                                   has_touch=label == "tablet")
        page = ctx.new_page()
        page.on("dialog", lambda d: d.accept())
        page.goto(f"{demo.url}/staff/frontdesk")
        sign_in(page, demo.url, "fd_e2e", "Front-Desk-Pass-1")
        page.wait_for_selector("#results tbody tr")          # today's list first
        page.fill("#q-name", "张伟")
        page.click("#search-btn")
        page.wait_for_function("() => document.querySelectorAll('#results tbody tr').length === 2")
        rows = page.query_selector_all("#results tbody tr")
        assert len(rows) == 2
        # the page fits the screen without sideways scrolling
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        if label == "tablet":
            page.screenshot(path=str(ARTIFACTS / "staff_frontdesk_tablet.png"), full_page=True)
            ctx.close()
            continue
        rows[0].click()
        uid = rows[0].get_attribute("data-uid")
        page.wait_for_selector("#images-btn.switch-off")
        page.click("#images-btn")
        page.wait_for_selector("#images-btn.switch-on")
        assert "已关闭" in page.text_content("#d-images")
        with page.expect_response(lambda r: r.url.endswith("/api/shares")
                                  and r.request.method == "POST") as info:
            page.click("#share-btn")
        share = info.value.json()
        page.wait_for_selector("#slip-section:not(.hidden)")
        assert page.text_content("#slip-code") == share["code"]
        page.wait_for_selector("#shares tbody tr td:has-text('有效')")
        page.screenshot(path=str(ARTIFACTS / "staff_frontdesk.png"), full_page=True)
        ctx.close()
    # a share visitor opens the share: the report, no images
    visitor = chromium.new_context()
    token = share["url"].rstrip("/").rsplit("/", 1)[-1]
    r = visitor.request.post(demo.url + "/api/share/open",
                             data={"token": token, "code": share["code"]})
    assert r.status == 200, r.text()
    r = visitor.request.get(f"{demo.url}/api/studies/{uid}")
    study = r.json()
    assert r.status == 200 and study["images_enabled"] is False and study["series"] == []
    assert visitor.request.get(f"{demo.url}/api/studies/{uid}/report/pages").status == 200
    r = visitor.request.get(f"{demo.url}/dicomweb/studies/{uid}/thumbnail")
    assert r.status == 403
    page = visitor.new_page()
    page.goto(f"{demo.url}/film/{uid}")
    page.wait_for_timeout(2500)
    page.screenshot(path=str(ARTIFACTS / "staff_share_report_only.png"))
    visitor.close()
    from models.schema import AuditEvent
    assert AuditEvent.select().where((AuditEvent.actor_id == "fd_e2e")
                                     & AuditEvent.action.contains("image")).exists()


def test_doctor_compares_two_exams_side_by_side(chromium, demo):
    ctx = chromium.new_context(viewport={"width": 1600, "height": 900}, locale="zh-CN")
    page = ctx.new_page()
    page.goto(f"{demo.url}/staff/doctor")
    sign_in(page, demo.url, "doc_e2e", "Doctor-E2e-Pass-1")
    page.fill("#q", "DF100231")
    page.click("#search button[type=submit]")
    page.wait_for_selector("#exams tbody tr")
    boxes = page.query_selector_all("#exams tbody input[type=checkbox]")
    assert len(boxes) == 2
    assert re.search(r"1[3-9][0-9]\*{4}[0-9]{4}", page.text_content("#p-info"))
    for b in boxes:
        b.check()
    page.screenshot(path=str(ARTIFACTS / "staff_doctor.png"), full_page=True)
    with ctx.expect_page() as popup:
        page.click("#compare-btn")
    ws = popup.value
    ws.wait_for_load_state()
    uids = ws.url.rsplit("/", 1)[-1].split(",")
    assert sorted(uids) == ["1.2.826.0.1.3680043.10.1373.1.1", "1.2.826.0.1.3680043.10.1373.1.2"]
    ws.wait_for_timeout(4000)
    ws.screenshot(path=str(ARTIFACTS / "staff_doctor_compare.png"))
    ctx.close()
