"""The viewer tells the render queue what a person is waiting for (issue 17): the frame on
screen goes with X-Render-Priority 0, full frames near it with 1, previews with 2."""
from __future__ import annotations

import re

import pytest

from .test_viewer import CT_OLD, data, wait_exact

pytestmark = pytest.mark.browser


def test_frame_on_screen_first_previews_last(phone, demo_server):
    page = phone.new_page()
    seen = []                               # (sop, frame, viewport, priority) in order

    def note(req):
        m = re.search(r"/instances/([\d.]+)/frames/(\d+)/rendered\?(.*)$", req.url)
        if m:
            vp = re.search(r"viewport=([\d%C,]+)", m.group(3))
            seen.append((m.group(1), m.group(2), vp.group(1) if vp else "",
                         req.headers.get("x-render-priority")))
    page.on("request", note)
    page.goto(f"{demo_server.url}/film/{CT_OLD}")
    wait_exact(page)
    page.wait_for_function("() => document.querySelectorAll('.strip-item').length > 0")
    page.wait_for_timeout(1500)                       # the prefetch of the other slices
    shown = data(page)
    assert seen and all(p in ("0", "1", "2") for *_, p in seen), seen[:5]
    first = seen[0]
    assert first[3] == "0", seen[:3]                  # the first frame asked for: priority 0
    now = [s for s in seen if s[3] == "0"]
    previews = [s for s in seen if s[3] == "2"]
    assert len(previews) >= 10 and len(now) <= 3, (len(previews), now)
    # the priority-0 requests are of the frame shown, the previews of other slices
    sops = {s[0] for s in now}
    assert len(sops) == 1
    assert {s[0] for s in previews} - sops
    assert int(shown["index"]) >= 0
