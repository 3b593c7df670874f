"""Volume rendering (render/vr.py) on phantoms whose images can be predicted."""
from __future__ import annotations

import numpy as np
import pytest

from render.errors import BadRenderParameter
from render.volume import mip_projection, volume_from_array
from render.vr import PRESETS, block_minmax, check_preset, transfer_lut, vr_projection

N = 48  # 48 mm cube of 1 mm voxels
SPACING = (1.0, 1.0, 1.0)


def phantom(sphere_at=(24, 24, 24), radius=8, hu=1000, lung_box=False):
    """Water cube (0 HU) with a dense bone sphere at (k, r, c); optionally a -800 HU 'lung'
    box in the lower-left corner (k 4..14, c 4..14, every row)."""
    k, r, c = np.mgrid[0:N, 0:N, 0:N]
    data = np.zeros((N, N, N), np.int16)
    kc, rc, cc = sphere_at
    data[(k - kc) ** 2 + (r - rc) ** 2 + (c - cc) ** 2 <= radius ** 2] = hu
    if lung_box:
        data[4:15, :, 4:15] = -800
    return volume_from_array(data, SPACING)


def lum(img):
    return img.astype(np.float64).mean(axis=2)


def centroid(mask):
    rows, cols = np.nonzero(mask)
    return rows.mean(), cols.mean()


def test_bone_preset_shows_the_sphere_opaque_and_bright_on_dark():
    vol = phantom()
    img = vr_projection(vol, 0, 0, N, preset="bone", fixed_scale=False)
    assert img.shape == (N, N, 3) and img.dtype == np.uint8
    # yaw 0 / pitch 0 looks along +y: column = c, row = N-1-k (head up)
    centre = img[N - 1 - 24, 24]
    assert centre.min() > 200          # ivory-white: opaque (>= 95 %) and lit face on
    assert centre[0] >= centre[2]      # warm white, not blue
    l = lum(img)
    bright = l > 100
    area = bright.sum()
    assert abs(area - np.pi * 8 ** 2) < 0.2 * np.pi * 8 ** 2
    assert l[:10, :].max() < 5 and l[:, :10].max() < 5   # water is transparent for bone


def test_lung_and_bone_presets_show_different_tissue():
    vol = phantom(lung_box=True)
    bone = vr_projection(vol, 0, 0, N, preset="bone", fixed_scale=False)
    lung = vr_projection(vol, 0, 0, N, preset="lung", fixed_scale=False)
    sphere = (N - 1 - 24, 24)
    box = (N - 1 - 9, 9)                # centre of the lung box on screen
    assert lum(bone)[sphere] > 150 and lum(bone)[box] < 5
    assert lum(lung)[sphere] < 5 and lum(lung)[box] > 40
    assert np.abs(lum(bone) - lum(lung)).mean() > 10


def test_window_moves_the_opacity_ramp():
    vol = phantom()
    pre = PRESETS["bone"]
    default = vr_projection(vol, 20, 10, 40, preset="bone")
    same = vr_projection(vol, 20, 10, 40, preset="bone", window=(pre.center, pre.width))
    assert np.array_equal(default, same)
    # ramp from 1650 HU on: the 1000 HU sphere is transparent
    above = vr_projection(vol, 20, 10, 40, preset="bone", window=(2000, 700))
    assert lum(default).max() > 150 and lum(above).max() < 1
    # ramp centred on the sphere's value: it is seen, but dimmer and different
    mid = vr_projection(vol, 20, 10, 40, preset="bone", window=(1000, 700))
    assert 0 < lum(mid).sum() < lum(default).sum()
    assert np.abs(lum(mid) - lum(default)).mean() > 1


def test_transfer_lut_follows_the_window():
    pre = check_preset("cta")
    a1, rgb1, lo1, s1, tlo1, thi1 = transfer_lut(pre)
    a2, rgb2, lo2, s2, tlo2, thi2 = transfer_lut(pre, (pre.center + 100, pre.width * 2))
    assert lo1 == pre.center - pre.width / 2
    assert lo2 == pre.center + 100 - pre.width
    assert s2 == pytest.approx(s1 / 2)
    assert np.array_equal(a1, a2) and np.array_equal(rgb1, rgb2)   # same ramp, moved
    # the cta ramp is zero up to x = 0.1 of the window
    assert tlo1 == pytest.approx(lo1 + 0.1 * pre.width, abs=1.0)
    assert thi1 == np.inf
    # opacity per mm corrected for the step: two 0.5 mm samples = one 1 mm sample
    half = transfer_lut(pre, step_mm=0.5)[0].astype(np.float64)
    assert np.allclose(1 - (1 - half) ** 2, a1, atol=1e-5)
    lung = transfer_lut(check_preset("lung"))
    assert lung[4] > -1000 and lung[5] < 0    # air and soft tissue stay transparent


def test_rotation_by_90_degrees_moves_an_off_centre_sphere():
    # sphere 12 mm towards +x (columns) and 8 mm towards -y (rows) of the centre
    vol = phantom(sphere_at=(24, 24 - 8, 24 + 12), radius=5)
    size = 80
    s = np.linalg.norm([N, N, N]) / size        # mm per pixel (fixed scale)
    half = (N - 1) / 2                          # the volume centre (mm), on the middle pixel
    a = vr_projection(vol, 0, 0, size, preset="bone")
    b = vr_projection(vol, 90, 0, size, preset="bone")
    ra, ca = centroid(lum(a) > 60)
    rb, cb = centroid(lum(b) > 60)
    centre_px = (size - 1) / 2
    # yaw 0: screen right = +x; yaw 90: screen right = +y
    assert ca - centre_px == pytest.approx((36 - half) / s, abs=0.5)
    assert cb - centre_px == pytest.approx((16 - half) / s, abs=0.5)
    # rows: head up, slice 24 is 0.5 mm above the centre
    assert ra - centre_px == pytest.approx(-(24 - half) / s, abs=0.5)
    assert rb == pytest.approx(ra, abs=0.5)
    # the same rays as the MIP: its bright spot is in the same place
    m = mip_projection(vol, 90, 0, size, window=(500, 1000))
    rm, cm = centroid(m > 128)
    assert (rm, cm) == pytest.approx((rb, cb), abs=1.0)


def test_preview_uses_the_pooled_copy_and_looks_alike():
    vol = phantom()
    full = vr_projection(vol, 30, 20, 64, preset="bone")
    small = vr_projection(vol, 30, 20, 24, preset="bone")     # >= 2 voxels per pixel
    assert "_pooled_avg" in vol.__dict__
    # same object at the same place, similar brightness (opacity corrected for the step)
    fa, sa = (lum(full) > 100).mean(), (lum(small) > 100).mean()
    assert sa == pytest.approx(fa, rel=0.35)
    assert lum(small).max() > 150


def test_block_minmax_covers_the_trilinear_neighbours():
    vol = phantom()
    b = block_minmax(vol)
    assert b.shape == (2, 6, 6, 6)
    # block (2, 2, 2) reads voxels 16..24 on each axis: the sphere (radius 8 about 24)
    assert b[1, 2, 2, 2] == 1000 and b[0, 0, 0, 0] == 0
    assert b[1, 0, 0, 0] == 0                      # 0..8: far from the sphere
    assert vol.nbytes >= vol.data.nbytes + b.nbytes


def test_bad_arguments():
    vol = phantom()
    with pytest.raises(BadRenderParameter, match="preset"):
        vr_projection(vol, 0, 0, 32, preset="kidney")
    with pytest.raises(BadRenderParameter, match="size"):
        vr_projection(vol, 0, 0, 0, preset="bone")
    with pytest.raises(BadRenderParameter, match="yaw"):
        vr_projection(vol, float("nan"), 0, 32, preset="bone")
    with pytest.raises(BadRenderParameter, match="width"):
        vr_projection(vol, 0, 0, 32, preset="bone", window=(0, 0.5))
