"""Each numba kernel against its numpy reference; area averaging; rotations and flips."""
from __future__ import annotations

import numpy as np
import pytest

from render.decode import LUT, Window
from render.pipeline import (apply_voi, render_frame, render_frame_reference, render_region,
                             axis_taps, resample_reference, to_uint8)

from .conftest import colour_image, grey_image

CASES = [
    # (rows, cols, viewport)
    (37, 53, None),
    (37, 53, (20, 20)),  # shrink
    (37, 53, (200, 111)),  # enlarge
    (101, 77, (33, 64, 5, 7, 50, 60)),  # region + shrink
    (64, 64, (300, 300, 10, 10, 13, 17)),  # region + enlarge
    (513, 257, (360, 360)),
]


@pytest.mark.parametrize("rows,cols,viewport", CASES)
@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8])
@pytest.mark.parametrize("window", [None, (40, 300, "LINEAR"), (10, 80.5, "LINEAR_EXACT"),
                                    (0, 120, "SIGMOID")])
def test_grey_kernel_matches_reference(rng, rows, cols, viewport, dtype, window):
    info = np.iinfo(dtype)
    px = rng.integers(max(info.min, -2000), min(info.max, 3000), (2, rows, cols)).astype(dtype)
    img = grey_image(px, slope=1.5, intercept=-100, window=Window(50, 400))
    for rot, fh, fv, inv in [(0, False, False, False), (90, True, False, True),
                             (180, False, True, False), (270, True, True, True)]:
        got = render_frame(img, 1, window=window, viewport=viewport, rotate=rot, flip_h=fh,
                           flip_v=fv, invert=inv)
        want = render_frame_reference(img, 1, window=window, viewport=viewport, rotate=rot,
                                      flip_h=fh, flip_v=fv, invert=inv)
        assert got.shape == want.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want).max() <= 1


@pytest.mark.parametrize("rows,cols,viewport", CASES)
def test_colour_kernel_matches_reference(rng, rows, cols, viewport):
    img = colour_image(rng.integers(0, 256, (rows, cols, 3)).astype(np.uint8))
    for rot, fh, inv in [(0, False, False), (90, True, True), (270, False, False)]:
        got = render_frame(img, 0, viewport=viewport, rotate=rot, flip_h=fh, invert=inv)
        want = render_frame_reference(img, 0, viewport=viewport, rotate=rot, flip_h=fh, invert=inv)
        assert got.shape == want.shape and got.shape[2] == 3
        assert np.abs(got.astype(int) - want).max() <= 1


def test_lut_path_matches_reference(rng):
    px = rng.integers(0, 4096, (50, 70)).astype(np.uint16)
    img = grey_image(px)
    img.voi_lut = LUT(100, rng.integers(0, 65536, 3000).astype(np.uint16), 16)
    img.windows = [None]
    for vp in (None, (30, 30), (140, 100)):
        got = render_frame(img, 0, viewport=vp)
        want = render_frame_reference(img, 0, viewport=vp)
        assert np.abs(got.astype(int) - want).max() <= 1
    img.modality_lut = LUT(0, np.arange(4096, dtype=np.uint16)[::-1].copy(), 12)
    got = render_frame(img, 0, window=(2000, 4000))
    want = to_uint8(apply_voi(4095.0 - px, Window(2000, 4000)))
    assert np.abs(got.astype(int) - want).max() <= 1


def test_native_identity_is_exact(rng):
    px = rng.integers(0, 256, (40, 30)).astype(np.uint8)
    img = grey_image(px, window=Window(127.5, 255, "LINEAR_EXACT"))
    assert np.array_equal(render_frame(img, 0), px)


def test_area_averaging_checkerboard_is_mid_grey():
    n = 3000
    board = ((np.arange(n)[:, None] + np.arange(n)[None, :]) % 2).astype(np.uint16) * 1000
    img = grey_image(board, window=Window(500.5, 1001))
    out = render_frame(img, 0, viewport=(360, 360))
    assert out.shape == (360, 360)
    assert abs(float(out.mean()) - 127.5) < 2
    assert int(out.max()) - int(out.min()) <= 2  # no moire / aliasing


def test_enlarge_is_bilinear_and_smooth():
    ramp = np.tile(np.arange(10, dtype=np.uint16) * 10, (10, 1))
    img = grey_image(ramp, window=Window(45.5, 91))  # 0..90 -> 0..255
    out = render_frame(img, 0, viewport=(100, 100)).astype(int)
    row = out[50]
    assert np.all(np.diff(row) >= 0) and np.diff(row).max() <= 5


def test_rotate_and_flip_semantics(rng):
    px = rng.integers(0, 256, (5, 7)).astype(np.uint8)
    img = grey_image(px, window=Window(127.5, 255, "LINEAR_EXACT"))
    assert np.array_equal(render_frame(img, 0, rotate=90), np.rot90(px, -1))
    assert np.array_equal(render_frame(img, 0, rotate=180), px[::-1, ::-1])
    assert np.array_equal(render_frame(img, 0, flip_h=True), px[:, ::-1])
    assert np.array_equal(render_frame(img, 0, flip_v=True), px[::-1])
    assert np.array_equal(render_frame(img, 0, rotate=90, flip_h=True), np.rot90(px, -1)[:, ::-1])


def test_monochrome1_inverts_and_user_invert_toggles(rng):
    px = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    img = grey_image(px, window=Window(127.5, 255, "LINEAR_EXACT"), photometric="MONOCHROME1")
    assert np.array_equal(render_frame(img, 0), 255 - px)
    assert np.array_equal(render_frame(img, 0, invert=True), px)


def test_viewport_keeps_aspect():
    img = grey_image(np.zeros((100, 200), np.int16), window=Window(0, 10))
    assert render_frame(img, 0, viewport=(100, 100)).shape == (50, 100)
    assert render_frame(img, 0, viewport=(100, 100), rotate=90).shape == (100, 50)
    img.pixel_spacing = (2.0, 1.0)  # rows twice as far apart: physically square
    assert render_frame(img, 0).shape == (200, 200)


def test_resample_reference_box_weights():
    yi, yw = axis_taps(10, 0, 10, 4)
    assert np.allclose(yw.sum(1), 1)
    src = np.arange(10, dtype=float)[:, None] * np.ones((1, 3))
    out = resample_reference(src, yi, yw, *axis_taps(3, 0, 3, 3))
    assert np.isclose(out[0, 0], (0 + 1 + 0.5 * 2) / 2.5)


def test_render_region_rejects_bad_out():
    with pytest.raises(ValueError):
        render_region(np.zeros((4, 4), np.uint8), (0, 0, 4, 4), 2, 2, window=Window(1, 2),
                      out=np.empty((3, 3), np.uint8))
