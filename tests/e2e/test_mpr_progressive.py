"""Progressive MPR (issue 18) in the desktop workspace (Chromium): on a never-viewed CT (the
current exam's row: its prior, linked, has an MPR row of its own) the
viewer asks the coarse volume alongside the full one and, when the coarse one comes first,
the three planes from it (coarse=1, X-Quality: coarse), then the full-quality planes, which
stay; once the volume is built no coarse plane is asked. (The demo CT is small: which volume
answers first varies, so both orders are accepted; tests/server/test_mpr_http.py checks
the coarse answers themselves.)"""
from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from .test_mpr_window import CT_NEW, PLANES, open_mpr, pane
from .test_viewer import errors_of

pytestmark = pytest.mark.browser


def mpr_answers(page):
    """(plane or 'volume', query dict, X-Quality) of every MPR image and volume answer."""
    seen = []

    def on_response(resp):
        u = urlparse(resp.url)
        if not ("/mpr/" in u.path or u.path.endswith("/volume")) or u.path.endswith("/geometry"):
            return
        if CT_NEW not in u.path:
            return                      # the linked prior's MPR row (its own volume)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        name = "volume" if u.path.endswith("/volume") else u.path.rsplit("/", 1)[1]
        quality = resp.headers.get("x-quality", "")
        if name == "volume" and resp.ok:
            quality = resp.json().get("quality", "")
        seen.append((name, q, quality))
    page.on("response", on_response)
    return seen


def plane_requests(page):
    """(plane, query dict) of every MPR image request (answered or cancelled)."""
    seen = []

    def on_request(req):
        u = urlparse(req.url)
        if "/mpr/" in u.path and not u.path.endswith("/geometry") and CT_NEW in u.path:
            seen.append((u.path.rsplit("/", 1)[1], {k: v[0] for k, v in parse_qs(u.query).items()}))
    page.on("request", on_request)
    return seen


def test_mpr_asks_coarse_planes_then_full(desktop, demo_server):
    page = desktop.new_page()
    errs = errors_of(page)
    answers = mpr_answers(page)
    asked = plane_requests(page)
    open_mpr(page, demo_server)                 # waits until every pane shows its latest
    # never viewed (a module of its own: a fresh server): the coarse volume answered first
    # or together with the full one (the demo CT has 24 small slices: both are quick)
    # (the demo CT has 24 small slices: the full volume may well come first, and then the
    # viewer asks no coarse plane)
    vols = [(quality, "coarse" in q) for n, q, quality in answers if n == "volume"]
    cinfo = [quality for quality, c in vols if c]
    assert cinfo in (["coarse"], ["full"]) and len(vols) == 2, answers
    coarse = [n for n, q in asked if q.get("coarse") == "1"]
    assert sorted(coarse) in (sorted(PLANES), []), asked     # all three, or none
    if cinfo == ["full"]:
        assert coarse == [], (vols, asked)
    # a coarse plane answered (not superseded before it came) says which it is; the full
    # planes come full and stay on screen
    assert {qu for n, q, qu in answers if n in PLANES and q.get("coarse") == "1"} <= {
        "coarse", "full"}, answers
    full = [(n, qu) for n, q, qu in answers if n in PLANES and "coarse" not in q]
    assert {n for n, _ in full} == set(PLANES) and {qu for _, qu in full} == {"full"}, answers
    for p in PLANES:
        assert page.get_attribute(pane(p), "data-quality") == "full"
    # opened again: the volume is built, no coarse plane is asked
    n0, a0 = len(asked), len(answers)
    page.goto(f"{demo_server.url}/workspace/{CT_NEW}")
    open_mpr(page, demo_server)
    assert [qu for n, q, qu in answers[a0:] if n == "volume" and q.get("coarse")] in (
        ["full"], [])                   # (asked alongside, it may come after the planes)
    assert not [n for n, q in asked[n0:] if q.get("coarse") == "1"], asked[n0:]
    assert not errs, errs
