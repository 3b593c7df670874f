"""Big pictures from the tile pyramid (Chromium): the demo's pathology slide (4096×3072 H&E)
in the desktop workspace and on the phone's film view. Checked on the page's own network
requests (tile URLs, only tiles that intersect the view, a coarser level after zooming out)
and on the pixels drawn (at high zoom the screen matches the full-resolution tile, not an
enlarged coarse one). Screenshots: tests/artifacts/viewer_tiles_*.png."""
from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest

from .conftest import shot
from .test_viewer import Touch, data, errors_of, viewport_box, wait_exact

pytestmark = pytest.mark.browser

U = "1.2.826.0.1.3680043.10.1373"
SM = f"{U}.1.6"               # patient C's slide: one 4096×3072 colour image
CELL = ".ws-cell[data-cell='0'] .vp"
TILE = re.compile(r"/frames/(\d+)/tiles/(\d+)/(\d+)/(\d+)\?(.*)$")
WIDTH, HEIGHT = 4096, 3072


def tile_requests(page):
    """Tile requests of the page in order: dicts with level, tx, ty, tile_size and url."""
    seen = []

    def on_request(req):
        m = TILE.search(req.url)
        if m:
            ts = int(re.search(r"tile_size=(\d+)", m.group(5)).group(1))
            seen.append({"level": int(m.group(2)), "tx": int(m.group(3)), "ty": int(m.group(4)),
                         "ts": ts, "url": req.url})
    page.on("request", on_request)
    return seen


def rendered_requests(page):
    seen = []
    page.on("request", lambda r: seen.append(r.url) if "/rendered" in r.url else None)
    return seen


def tile_rect(t):
    """Source pixels a tile covers (render/tiles.py: edge tiles smaller)."""
    f = 2 ** t["level"]
    span = t["ts"] * f
    sx, sy = t["tx"] * span, t["ty"] * span
    return sx, sy, min(span, WIDTH - sx), min(span, HEIGHT - sy)


def region(page, sel):
    """The visible source region of the viewport (viewport_math.visibleRegion)."""
    return page.evaluate("""async (sel) => {
        const m = await import('/static/js/viewport_math.js');
        const root = document.querySelector(sel);
        const vp = window.cfWorkspace ? window.cfWorkspace.cells[0].vp : window.cfViewport;
        const r = m.visibleRegion(vp.view, vp.geom, root.clientWidth, root.clientHeight);
        return { sx: r.sx, sy: r.sy, sw: r.sw, sh: r.sh, scale: r.scale }; }""", sel)


def intersects(t, r):
    sx, sy, sw, sh = tile_rect(t)
    return sx < r["sx"] + r["sw"] and sx + sw > r["sx"] and sy < r["sy"] + r["sh"] and sy + sh > r["sy"]


def wait_tiles(page, sel, timeout=20000):
    page.wait_for_function("(s) => { const d = document.querySelector(s).dataset; "
                           "return d.loaded === 'exact' && /^(\\d+)\\/\\1$/.test(d.tiles || ''); }",
                           arg=sel, timeout=timeout)


def fetch_rgb(context, url):
    from PIL import Image
    r = context.request.get(url)
    assert r.status == 200, (r.status, url)
    return np.asarray(Image.open(io.BytesIO(r.body())).convert("RGB"), dtype=np.float32)


def test_workspace_pathology_tiles(desktop, demo_server):
    from PIL import Image
    page = desktop.new_page()
    errs = errors_of(page)
    tiles = tile_requests(page)
    rendered = rendered_requests(page)
    page.goto(f"{demo_server.url}/workspace/{SM}")
    page.wait_for_selector(CELL)
    wait_tiles(page, CELL)
    fit_level = int(data(page, CELL)["tileLevel"])
    r0 = region(page, CELL)
    # the level that matches the zoom (at least one tile pixel per screen pixel) and the
    # coarsest level's single tile under it, nothing else
    assert 2 ** fit_level <= 1 / r0["scale"] < 2 ** (fit_level + 1), (fit_level, r0)
    levels = {t["level"] for t in tiles}
    assert levels == {fit_level, 3}, levels
    assert all(t["ts"] == 512 for t in tiles)
    # no server-side render of a region of the slide: only the small whole-picture preview
    for u in rendered:
        vp = re.search(r"viewport=(\d+)%2C(\d+)", u)
        assert vp and int(vp.group(1)) <= 256 and "%2C" not in u[vp.end():vp.end() + 3], u
    shot(page, "tiles_fit")

    # zoom in 20× on a point right of the centre (Ctrl+wheel, as a doctor does)
    box = page.locator(CELL).bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.45)
    n0 = len(tiles)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -900)
    page.keyboard.up("Control")
    page.wait_for_function(f"() => Number(document.querySelector(\"{CELL}\").dataset.zoom) > 15")
    wait_tiles(page, CELL)
    assert data(page, CELL)["tileLevel"] == "0"
    r1 = region(page, CELL)
    fine = [t for t in tiles[n0:] if t["level"] == 0]
    assert fine, tiles[n0:]
    # only the tiles that intersect the view, each once
    assert all(intersects(t, r1) for t in fine), (r1, fine)
    assert len({(t["tx"], t["ty"]) for t in fine}) == len(fine)
    need = {(tx, ty) for tx in range(8) for ty in range(6)
            if intersects({"level": 0, "tx": tx, "ty": ty, "ts": 512}, r1)}
    assert {(t["tx"], t["ty"]) for t in fine} == need
    assert len(need) <= 4 and len(tiles) - n0 <= 4, tiles[n0:]
    shot(page, "tiles_zoom")

    # sharp: the screen at the view's centre matches the full-resolution pixels, far better
    # than the coarsest level enlarged would (the slide's nuclei are ~10 px dots)
    time.sleep(0.2)
    screen = np.asarray(Image.open(io.BytesIO(page.locator(CELL).screenshot())).convert("RGB"),
                        dtype=np.float32)
    h, w = screen.shape[:2]
    cx_img, cy_img = r1["sx"] + r1["sw"] / 2, r1["sy"] + r1["sh"] / 2
    tx, ty = int(cx_img // 512), int(cy_img // 512)
    by_pos = {(t["tx"], t["ty"]): t for t in fine}
    full = fetch_rgb(desktop, by_pos[(tx, ty)]["url"])
    coarse_t = next(t for t in tiles if t["level"] == 3)
    coarse = fetch_rgb(desktop, coarse_t["url"])
    err_fine, err_coarse, detail = [], [], []
    for py in range(h // 2 - 60, h // 2 + 60, 3):
        for px in range(w // 2 - 60, w // 2 + 60, 3):
            ix = r1["sx"] + px / r1["scale"]
            iy = r1["sy"] + py / r1["scale"]
            if not (tx * 512 <= ix < tx * 512 + full.shape[1] and ty * 512 <= iy < ty * 512 + full.shape[0]):
                continue
            f = full[int(iy) - ty * 512, int(ix) - tx * 512]
            c = coarse[min(coarse.shape[0] - 1, int(iy / 8)), min(coarse.shape[1] - 1, int(ix / 8))]
            s = screen[py, px]
            err_fine.append(np.abs(s - f).mean())
            err_coarse.append(np.abs(s - c).mean())
            detail.append(f)
    assert len(err_fine) > 300
    assert np.std(np.array(detail)[:, 1]) > 8, "no detail in the sampled patch"
    ef, ec = float(np.mean(err_fine)), float(np.mean(err_coarse))
    assert ef < 5 and ec > 3 * ef, (ef, ec)

    # zooming out: a coarser level is asked for, no more full-resolution tiles
    n1 = len(tiles)
    page.keyboard.down("Control")
    page.mouse.wheel(0, 750)
    page.keyboard.up("Control")
    page.wait_for_function(f"() => Number(document.querySelector(\"{CELL}\").dataset.zoom) < 2")
    wait_tiles(page, CELL)
    out_level = int(data(page, CELL)["tileLevel"])
    r2 = region(page, CELL)
    assert out_level >= 1 and 2 ** out_level <= 1 / r2["scale"] < 2 ** (out_level + 1), (out_level, r2)
    later = tiles[n1:]
    assert all(t["level"] >= out_level for t in later), later
    if out_level != fit_level:
        new = [t for t in later if t["level"] == out_level]
        assert new and all(intersects(t, r2) for t in new), (r2, later)
    assert not errs, errs


def test_phone_pathology_pinch(phone, demo_server):
    page = phone.new_page()
    errs = errors_of(page)
    tiles = tile_requests(page)
    page.goto(f"{demo_server.url}/film/{SM}")
    wait_exact(page)
    lv0 = int(data(page)["tileLevel"])
    assert lv0 >= 1 and {t["level"] for t in tiles} <= {lv0, 3}
    x, y, w, h = viewport_box(page)
    cx, cy = x + w / 2, y + h / 2
    n0 = len(tiles)
    touch = Touch(page)
    touch.gesture([(cx - 20, cy), (cx + 20, cy)], [(cx - 150, cy), (cx + 150, cy)])
    touch.gesture([(cx - 20, cy), (cx + 20, cy)], [(cx - 150, cy), (cx + 150, cy)])
    assert float(data(page)["zoom"]) > 20
    wait_tiles(page, "#viewport")
    assert int(data(page)["tileLevel"]) == 0
    r = region(page, "#viewport")
    fine = [t for t in tiles[n0:] if t["level"] == 0]
    need = {(tx, ty) for tx in range(8) for ty in range(6)
            if intersects({"level": 0, "tx": tx, "ty": ty, "ts": 512}, r)}
    assert need and need <= {(t["tx"], t["ty"]) for t in fine}
    # the tiles asked for at the final zoom are those in view (a pinch passes through
    # coarser levels on its way, whose tiles are cancelled or kept as the fallback)
    assert len(need) <= 4
    shot(page, "tiles_phone_zoom")
    assert not errs, errs
