"""Browser tests: a live server with the demo exams (24-slice CTs) for the whole module and
Debian's Chromium driven by Playwright. Skipped only when Chromium is missing outside CI."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import LiveServer, make_staff

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
WECHAT_UA = ("Mozilla/5.0 (Linux; Android 10; V2001A Build/QP1A.190711.020; wv) AppleWebKit/537.36 "
             "(KHTML, like Gecko) Version/4.0 Chrome/107.0.5304.141 Mobile Safari/537.36 XWEB/5023 "
             "MMWEBSDK/20230202 MMWEBID/2585 MicroMessenger/8.0.40.2420(0x28002837) WeChat/arm64 "
             "Weixin NetType/WIFI Language/zh_CN ABI/arm64")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", "--disable-component-update", "--disable-sync"]
USER, PASSWORD = "viewer_e2e", "Viewer-E2e-Pass-1"


def _need_chromium():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} missing in CI: apt-get install chromium fonts-wqy-microhei")
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium fonts-wqy-microhei)")


@contextlib.contextmanager
def live_demo(tmp, **overrides):
    """The demo exams (24-slice CTs) and a doctor account on a live server in `tmp`."""
    from server.cli import load_demo
    from server.config import load_config
    from server.context import open_context
    config = load_config(path=tmp / "none.toml", env={}, overrides={
        "database_url": f"sqlite:///{tmp / 'test.db'}",
        "data_dir": str(tmp / "data"),
        "secret_key_file": str(tmp / "secret.key"),
        "demo_data": False,
        "demo_ct_slices": 24,
        "render_threads": 4,
        **overrides,
    })
    ctx = open_context(config)
    load_demo(ctx, out=io.StringIO())
    make_staff(USER, ("doctor",), PASSWORD)
    server = LiveServer(ctx)
    try:
        yield server
    finally:
        server.stop()
        ctx.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    _need_chromium()
    with live_demo(tmp_path_factory.mktemp("viewer")) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    _need_chromium()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def signed_in(browser, server, **ctx_args):
    context = browser.new_context(**ctx_args)
    r = context.request.post(server.url + "/api/auth/login",
                             data={"username": USER, "password": PASSWORD})
    assert r.status == 200, r.text()
    return context


@pytest.fixture
def phone(browser, demo_server):
    context = signed_in(browser, demo_server, viewport={"width": 360, "height": 640},
                        device_scale_factor=2, has_touch=True, is_mobile=True,
                        user_agent=WECHAT_UA, locale="zh-CN")
    yield context
    context.close()


@pytest.fixture
def desktop(browser, demo_server):
    context = signed_in(browser, demo_server, viewport={"width": 1400, "height": 850},
                        locale="zh-CN")
    yield context
    context.close()


def shot(page, name, **kw):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"viewer_{name}.png"), **kw)
