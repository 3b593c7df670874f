from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from render.cache import ByteLRU
from render.decode import Window
from render.errors import BadRenderParameter, TileOutOfRange
from render.pipeline import render_frame
from render.tiles import pyramid_info, tile

from .conftest import grey_image


def test_budget_never_exceeded_and_lru_order():
    c = ByteLRU(100)
    for i in range(50):
        c.put(i, b"x" * (7 + i % 13))
        assert c.current_bytes() <= 100
    assert c.stats()["evictions"] > 0
    c = ByteLRU(30)
    c.put("a", b"1" * 10)
    c.put("b", b"2" * 10)
    c.get("a")
    c.put("c", b"3" * 15)  # evicts b, the least recently used
    assert c.get("b") is None and c.get("a") == b"1" * 10 and len(c) == 2
    assert not c.put("huge", b"x" * 31) and "huge" not in c
    assert c.pop("a") == b"1" * 10 and c.current_bytes() == 15
    c.put("arr", np.zeros(1, np.int64))  # nbytes of an array
    assert c.current_bytes() == 15 + 8
    s = c.stats()
    assert {"hits", "misses", "evictions"} <= set(s)


def test_concurrent_get_or_load_loads_once():
    c = ByteLRU(10_000)
    calls = []
    start = threading.Barrier(8)

    def loader():
        calls.append(1)
        time.sleep(0.05)
        return b"pixels"

    results = []

    def worker():
        start.wait()
        results.append(c.get_or_load("frame", loader))

    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(calls) == 1 and results == [b"pixels"] * 8


def test_get_or_load_error_is_not_cached():
    c = ByteLRU(100)
    with pytest.raises(ValueError):
        c.get_or_load("k", lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert c.get_or_load("k", lambda: b"ok") == b"ok"


def test_concurrent_puts_keep_budget():
    c = ByteLRU(1000)

    def worker(n):
        for i in range(300):
            c.put((n, i % 40), b"y" * (i % 97))

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert c.current_bytes() <= 1000
    assert c.current_bytes() == sum(len(v) for v in [c.get(k) for k in list(c._data)])


def test_pyramid_and_tiles(rng):
    px = rng.integers(0, 4096, (1000, 700)).astype(np.uint16)
    img = grey_image(px, window=Window(2048, 4096))
    info = pyramid_info(img)
    assert [(l["width"], l["height"]) for l in info["levels"]] == [(700, 1000), (350, 500), (175, 250)]
    assert info["levels"][0]["tiles_x"] == 3 and info["levels"][0]["tiles_y"] == 4
    full = render_frame(img, 0)
    assert np.array_equal(tile(img, 0, 0, 1, 2), full[512:768, 256:512])
    edge = tile(img, 0, 0, 2, 3)
    assert edge.shape == (1000 - 768, 700 - 512)
    top = tile(img, 0, 2, 0, 0)
    assert top.shape == (250, 175)
    assert np.abs(top.astype(int) - render_frame(img, 0, viewport=(175, 250))).max() <= 1
    with pytest.raises(TileOutOfRange):
        tile(img, 0, 0, 3, 0)
    with pytest.raises(TileOutOfRange):
        tile(img, 0, 3, 0, 0)
    with pytest.raises(BadRenderParameter):
        tile(img, 0, 0, 0, 0, tile_size=3)
