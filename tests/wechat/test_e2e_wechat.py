"""Chromium with a WeChat user agent on a phone: the menu URL authorises silently against
the fake WeChat, the unbound user verifies once and lands on "my exams", opens the film
view; the next visit lands on "my exams" directly."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import ARTIFACTS, WECHAT_UA, browser  # noqa: F401 - fixture

from .conftest import A

pytestmark = [pytest.mark.db, pytest.mark.browser]

PHONE = dict(viewport={"width": 375, "height": 740}, device_scale_factor=2, has_touch=True,
             is_mobile=True, user_agent=WECHAT_UA, locale="zh-CN")


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"wechat_{name}.png"), full_page=True)


def test_menu_to_my_exams_in_wechat(browser, wlive, people, fake):  # noqa: F811
    first = browser.new_context(**PHONE)
    page = first.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(wlive.url + "/wechat/")
    page.wait_for_selector("#verify:not(.hidden)")
    assert page.url.split("#")[0] == wlive.url + "/wechat/" and page.url.endswith("#bind")
    assert any("/connect/oauth2/authorize" in r for r in fake.requests)
    assert "绑定就诊人" in page.inner_text("#v-title")
    shot(page, "bind")
    page.fill("#phone", A.phone)
    page.fill("#idn", A.id_number)
    page.click("#v-submit")
    page.wait_for_selector("#exams-card:not(.hidden) li.exam")
    items = page.locator("#exams li.exam")
    assert items.count() == 1 and A.accession in items.first.inner_text()
    assert "*" in page.inner_text("#bindings")           # the bound patient, masked
    shot(page, "my_exams")
    page.click("#exams li.exam a.btn.primary")
    page.wait_for_url(f"**/film/{A.study_uid}")
    page.wait_for_selector("#viewport img", timeout=30000)
    shot(page, "film")
    first.close()

    # the next time: straight to "my exams", no verification
    again = browser.new_context(**PHONE)
    page = again.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(wlive.url + "/wechat/")
    page.wait_for_selector("#exams-card:not(.hidden) li.exam")
    assert page.locator("#verify.hidden").count() == 1
    shot(page, "returning")
    again.close()
    assert not errors, errors
