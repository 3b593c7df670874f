"""WebKit end-to-end tests: the engine of WeChat on iOS, as Debian ships it.

Debian's webkit2gtk-driver (WebKitWebDriver) drives WebKitGTK's MiniBrowser, through the
`selenium` package (webdriver.WebKitGTK). MiniBrowser is a GTK program and needs an X
display: a session fixture starts its own `Xvfb` (the display number chosen by Xvfb itself
with -displayfd), so `./run.sh test` needs no xvfb-run wrapper. One browser for a whole test
module (starting WebKit costs seconds); each scenario starts from no cookies and empty
storage (see `fresh`). Skipped with the apt command when the packages are missing, except
with CI=true, where that fails. Install: apt-get install -y webkit2gtk-driver xvfb xauth.

WebKitGTK quirks found writing these tests (WebKitGTK 2.50, MiniBrowser of webkit2gtk-4.1,
selenium 4.51):
- MiniBrowser 4.1 has no --headless option (only the WPE and GTK4 "6.0" builds do). With
  it, MiniBrowser exits at once and WebKitWebDriver's new-session request hangs instead of
  failing: hence Xvfb. `--automation` is required (the driver does not add it).
- A screenshot taken right after a navigation can be a blank white picture: the page is not
  composited yet. Wait for what the page shows (an element, document.body.dataset.*) and for
  two animation frames (`settle`) before a screenshot.
- WEBKIT_DISABLE_DMABUF_RENDERER=1 or WEBKIT_DISABLE_COMPOSITING_MODE=1 (advice found for
  other hosts) made the screenshot command hang under Xvfb here; the defaults work.
- There is no device emulation (no DPR, touch or mobile viewport as in Playwright):
  devicePixelRatio 1, navigator.maxTouchPoints 0, (pointer: coarse) false. The user agent is
  set with MiniBrowser's own --user-agent= option (a WebKitSettings property) to WeChat on
  iOS. MiniBrowser's window cannot be narrower than 447 px (its toolbar), and the toolbar
  takes 38 px of the height: asking for 360 x 760 gives a 447 x 722 CSS px page, still
  the pages' phone layout.
- Pointer gestures work: an ActionChains mouse drag on the image sends pointerdown/move/up
  (pointerType 'mouse'), which the viewport takes as a finger scrolling through slices.
- navigator.language stays 'en-US' even with LANG=zh_CN.UTF-8 when that locale is not
  generated (Debian containers have C.UTF-8 only). The pages default to Chinese anyway
  (localStorage 'cf-lang' switches), so the storage is cleared per scenario.
- A <select> keeps WebKitGTK's native light look while the page's CSS makes its text
  white: the film view's preset menu is nearly unreadable here (not so in Chromium).
- delete_all_cookies() acts on the current document's site only: `fresh` first navigates
  to the server (a small static file), then deletes cookies and clears local and session
  storage there.
"""
from __future__ import annotations

import glob
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest


ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
APT = "apt-get install -y webkit2gtk-driver xvfb xauth"
WEBKIT_DRIVER = shutil.which("WebKitWebDriver") or "/usr/bin/WebKitWebDriver"
XVFB = shutil.which("Xvfb") or "/usr/bin/Xvfb"
# WeChat 8 on an iPhone (iOS 17): the browser iPhone users open hospital links in
IOS_WECHAT_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.50(0x1800322d) "
                 "NetType/WIFI Language/zh_CN")
PHONE_W, PHONE_H = 360, 760           # asked for; the page gets 447 x 722 CSS px (see above)
USER, PASSWORD = "viewer_webkit", "Viewer-Webkit-Pass-1"


def minibrowser() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/webkit2gtk-4.1/MiniBrowser")
                   + glob.glob("/usr/lib/*/webkit2gtk-4.0/MiniBrowser"))
    return found[0] if found else None


def need_webkit() -> str:
    missing = [what for what, ok in (("WebKitWebDriver", os.path.exists(WEBKIT_DRIVER)),
                                     ("MiniBrowser", minibrowser() is not None),
                                     ("Xvfb", os.path.exists(XVFB))) if not ok]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (./run.sh installs requirements.txt)")
    if missing:
        msg = f"{', '.join(missing)} missing ({APT})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"WebKit tests cannot run in CI: {msg}")
        pytest.skip(msg)
    return minibrowser()


@pytest.fixture(scope="session")
def xvfb_display():
    """A private X display for MiniBrowser; Xvfb picks a free number (-displayfd)."""
    need_webkit()
    r, w = os.pipe()
    proc = subprocess.Popen([XVFB, "-displayfd", str(w), "-screen", "0", "1280x1024x24",
                             "-nolisten", "tcp", "-noreset"], pass_fds=(w,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    number = b""
    deadline = time.monotonic() + 20
    while not number.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([r], [], [], 0.5)
        if ready:
            chunk = os.read(r, 16)
            if not chunk:
                break
            number += chunk
    os.close(r)
    if not number.strip():
        proc.kill()
        proc.wait()
        pytest.fail("Xvfb did not start (no display number on -displayfd)")
    yield f":{number.decode().strip()}"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_webkit(display: str, user_agent: str = IOS_WECHAT_UA):
    """WebKitWebDriver + MiniBrowser on `display`, window sized like a phone."""
    from selenium import webdriver
    from selenium.webdriver.webkitgtk.service import Service
    opts = webdriver.WebKitGTKOptions()
    opts.binary_location = need_webkit()
    opts.add_argument("--automation")
    opts.add_argument(f"--user-agent={user_agent}")
    env = dict(os.environ, DISPLAY=display, LANG="zh_CN.UTF-8", TZ="Asia/Shanghai",
               NO_AT_BRIDGE="1", GTK_A11Y="none")
    env.pop("WAYLAND_DISPLAY", None)
    service = Service(executable_path=WEBKIT_DRIVER, env=env)
    driver = webdriver.WebKitGTK(options=opts, service=service)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    driver.set_window_size(PHONE_W, PHONE_H)
    return driver


@pytest.fixture(scope="module")
def webkit(xvfb_display):
    driver = start_webkit(xvfb_display)
    yield driver
    try:
        driver.quit()
    except Exception:  # noqa: BLE001 - the browser may already be gone
        pass


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The demo exams (24-slice CTs) on a live server for the module (as tests/e2e)."""
    need_webkit()
    from tests.e2e.conftest import live_demo
    with live_demo(tmp_path_factory.mktemp("webkit"), render_threads=2) as server:
        yield server


def fresh(driver, server):
    """A browser as a new patient has it: no cookies, no stored state for the server."""
    driver.get(server.url + "/static/share/share.css")
    driver.delete_all_cookies()
    driver.execute_script("try { localStorage.clear(); sessionStorage.clear(); } catch (e) {}")


def wait_for(driver, script, timeout=30, what=None, *args):
    """Polls a JS expression (a function body returning a value) until it is truthy."""
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
            lambda d: d.execute_script(script, *args))
    except Exception:
        shot(driver, f"failed_{(what or 'wait').replace(' ', '_')}")
        raise AssertionError(f"timed out after {timeout}s waiting for {what or script} "
                             f"on {driver.current_url}") from None


def visible(driver, css, timeout=30):
    return wait_for(driver, "const e = document.querySelector(arguments[0]);"
                            " return !!(e && e.offsetParent !== null"
                            " && getComputedStyle(e).visibility !== 'hidden');",
                    timeout, f"{css} visible", css)


def settle(driver):
    """Two animation frames: what the page changed is painted (before a screenshot)."""
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        " requestAnimationFrame(() => requestAnimationFrame(() => done(true)));")


def shot(driver, name):
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        driver.save_screenshot(str(ARTIFACTS / f"webkit_{name}.png"))
    except Exception:  # noqa: BLE001 - a screenshot is evidence, not the test
        pass
