"""Volumes, MPR planes, slabs, oblique planes and 3D MIP on synthetic data."""
from __future__ import annotations

import numpy as np
import pytest

from render.decode import Window
from render.errors import BadRenderParameter, FrameOutOfRange, VolumeError
from render.pipeline import apply_voi, to_uint8
from render.volume import (build_volume, mip_projection, mpr_image, mpr_plane, plane_geometry,
                           volume_from_array)

from .conftest import grey_image

W = Window(0.5, 2001)  # -1000..1000 -> 0..255


def _close(a, b):
    """Same shape and within one grey level (the kernels window in float32)."""
    return a.shape == b.shape and np.abs(a.astype(int) - b).max() <= 1


def _ref(a):
    return to_uint8(apply_voi(np.asarray(a, float), W))


@pytest.fixture
def data(rng):
    return rng.integers(-1000, 1000, (20, 30, 40)).astype(np.int16)


def _slices(data, dz=2.5, spacing=(1.0, 1.0), iop=(1, 0, 0, 0, 1, 0), intercept=-1024):
    out = []
    for k in range(data.shape[0]):
        out.append(grey_image(data[k] - intercept, intercept=intercept, spacing=spacing,
                              positions=np.array([[10.0, 20.0, -50 + k * dz]]),
                              orientations=np.array([iop], float)))
    return out


def test_build_volume_sorts_and_rescales(data, rng):
    sl = _slices(data)
    order = rng.permutation(len(sl))
    vol = build_volume([sl[i] for i in order])
    assert vol.data.dtype == np.int16 and np.array_equal(vol.data, data)
    assert vol.spacing == (2.5, 1.0, 1.0)
    assert np.allclose(vol.origin, [10, 20, -50]) and not vol.irregular
    assert np.allclose(vol.index_to_patient(2, 3, 4), [14, 23, -45])
    assert np.allclose(vol.patient_to_index([14, 23, -45]), [2, 3, 4])


def test_build_volume_float_when_slope_fractional(data):
    sl = _slices(data)
    for s in sl:
        s.slopes[:] = 0.5
    vol = build_volume(sl)
    assert vol.data.dtype == np.float32
    assert np.allclose(vol.data, (data + 1024) * 0.5 - 1024)


def test_multiframe_with_positions_is_a_volume(data):
    img = grey_image(data.astype(np.int16), spacing=(1.0, 1.0),
                     positions=np.array([[0, 0, k * 2.0] for k in range(20)])[::-1].copy(),
                     orientations=np.tile([1.0, 0, 0, 0, 1, 0], (20, 1)))
    vol = build_volume([img])
    assert np.array_equal(vol.data, data[::-1])


@pytest.mark.parametrize("break_it,reason", [
    (lambda sl: sl.__setitem__(3, grey_image(np.zeros((10, 40), np.int16), spacing=(1.0, 1.0),
                                             positions=sl[3].positions,
                                             orientations=sl[3].orientations)), "sizes"),
    (lambda sl: setattr(sl[3], "orientations", np.array([[1.0, 0, 0, 0, 0, -1]])), "orientations"),
    (lambda sl: setattr(sl[3], "positions", sl[4].positions.copy()), "share the position"),
    (lambda sl: sl.pop(7), "gap"),
    (lambda sl: setattr(sl[3], "pixel_spacing", (0.5, 0.5)), "spacings"),
    (lambda sl: setattr(sl[3], "positions", None), "Position"),
    (lambda sl: sl.__delitem__(slice(1, None)), "2 slices"),
])
def test_volume_rejects_with_reason(data, break_it, reason):
    sl = _slices(data)
    break_it(sl)
    with pytest.raises(VolumeError, match=reason) as e:
        build_volume(sl)
    assert e.value.status == 422


def test_slightly_irregular_is_flagged(data):
    sl = _slices(data)
    sl[5].positions = sl[5].positions + [0, 0, 0.3]
    assert build_volume(sl).irregular


def test_tiny_float_noise_is_tolerated(data):
    sl = _slices(data)
    for s in sl:
        s.orientations = s.orientations + 1e-6
        s.positions = s.positions + 1e-5
    assert not build_volume(sl).irregular


def test_orthogonal_planes_equal_numpy_slices(data):
    vol = volume_from_array(data, (2.5, 1.0, 1.0), window=W)
    assert np.array_equal(mpr_image(vol, "axial", index=4)[0], data[4])
    assert np.array_equal(mpr_image(vol, "coronal", index=7)[0], data[::-1, 7, :])  # head up
    assert np.array_equal(mpr_image(vol, "sagittal", index=9)[0], data[::-1, :, 9])
    # rendered at native in-plane resolution, stretched in z for 2.5 mm slices
    cor = mpr_plane(vol, "coronal", index=7, window=W)
    assert cor.shape == (50, 40)
    sag = mpr_plane(vol, "sagittal", index=9, window=W)
    assert sag.shape == (50, 30)
    ax = mpr_plane(vol, "axial", index=4, window=W)
    assert _close(ax, _ref(data[4]))
    iso = volume_from_array(data, (1.0, 1.0, 1.0), window=W)
    assert _close(mpr_plane(iso, "coronal", index=7), _ref(data[::-1, 7, :]))
    assert _close(mpr_plane(iso, "sagittal", index=9), _ref(data[::-1, :, 9]))


def test_viewport_keeps_physical_aspect(data):
    vol = volume_from_array(data, (2.5, 1.0, 1.0), window=W)
    out = mpr_plane(vol, "coronal", index=7, window=W, viewport=(80, 80))
    assert out.shape == (80, 64)  # 50 mm tall x 40 mm wide
    g = plane_geometry(vol, "coronal", index=7, viewport=(80, 80))
    assert g.output_size == (64, 80)
    assert np.allclose(g.output_pixel_spacing, (50 / 80, 40 / 64))


def test_position_mm_and_patient_point(data):
    vol = volume_from_array(data, (2.5, 1.0, 1.0), origin=(100, 0, 0), window=W)
    assert plane_geometry(vol, "axial", 10.0).index == 4
    assert plane_geometry(vol, "coronal", (0, 7.2, 0)).index == 7
    with pytest.raises(FrameOutOfRange):
        mpr_plane(vol, "axial", index=20)
    with pytest.raises(BadRenderParameter):
        mpr_plane(vol, "diagonal")
    with pytest.raises(BadRenderParameter):
        mpr_plane(vol, "axial", slab_mm=-1)


def test_geometry_cross_reference(data):
    vol = volume_from_array(data, (2.5, 1.0, 1.0), window=W)
    g = plane_geometry(vol, "coronal", index=7)
    # top-left pixel of the head-up coronal plane is the last slice, row 7, column 0
    assert np.allclose(g.top_left, vol.index_to_patient(19, 7, 0))
    assert np.allclose(g.pixel_to_patient(19, 5), vol.index_to_patient(0, 7, 5))
    d = g.as_dict()
    assert d["pixel_spacing"] == [2.5, 1.0] and d["plane"] == "coronal"


def test_slab_modes_equal_numpy(data):
    vol = volume_from_array(data, (2.5, 1.0, 1.0), window=W)
    assert np.array_equal(mpr_image(vol, "axial", index=5, slab_mm=7.5)[0], data[4:7].max(0))
    assert np.array_equal(mpr_image(vol, "axial", index=5, slab_mm=7.5, slab_mode="minip")[0],
                          data[4:7].min(0))
    assert np.allclose(mpr_image(vol, "coronal", index=10, slab_mm=4, slab_mode="avg")[0],
                       data[::-1, 8:12, :].mean(1), atol=1e-3)
    assert np.array_equal(mpr_image(vol, "sagittal", index=10, slab_mm=3)[0],
                          data[::-1, :, 9:12].max(2))


def test_oblique_at_zero_equals_axial(data):
    vol = volume_from_array(data, (2.5, 1.0, 1.0), window=W)
    for k in (0, 7, 19):
        assert np.array_equal(mpr_plane(vol, "oblique", index=k, window=W),
                              mpr_plane(vol, "axial", index=k, window=W))
    g = plane_geometry(vol, "oblique", index=7)
    assert np.allclose(g.top_left, vol.index_to_patient(7, 0, 0))


def test_oblique_pitch_90_is_coronal_like(rng):
    data = rng.integers(-1000, 1000, (16, 16, 16)).astype(np.int16)
    vol = volume_from_array(data, (1.0, 1.0, 1.0), window=W)
    out, _ = mpr_image(vol, "oblique", yaw=0, pitch=90)
    # rows run along +z through the centre row; compare with the coronal through y=7.5
    ref = (data[:, 7, :].astype(float) + data[:, 8, :]) / 2
    assert np.allclose(out, ref, atol=1e-3)


def test_mip_at_zero_equals_numpy_max(data):
    vol = volume_from_array(data, (1.0, 1.0, 1.0), window=W)
    out = mip_projection(vol, 0, 0, 40, window=W, fixed_scale=False)
    assert _close(out, _ref(data.max(axis=1)[::-1]))
    mn = mip_projection(vol, 0, 0, 40, window=W, fixed_scale=False, mode="minip")
    assert _close(mn, _ref(data.min(axis=1)[::-1]))


def test_mip_physical_aspect_and_rotation(data):
    vol = volume_from_array(data, (2.5, 1.0, 1.0), window=W)
    out = mip_projection(vol, 0, 0, 100, window=W, fixed_scale=False)
    assert out.shape == (100, 80)  # 50 mm x 40 mm
    side = mip_projection(vol, 90, 0, 100, window=W, fixed_scale=False)
    assert side.shape == (100, 60)  # looking along x: 30 mm wide
    fixed = mip_projection(vol, 33, 20, 64, window=W)
    assert fixed.shape == (64, 64)
    with pytest.raises(BadRenderParameter):
        mip_projection(vol, 0, 0, 0)


def test_mip_preview_uses_pooled_volume(rng):
    data = rng.integers(-1000, 1000, (64, 64, 64)).astype(np.int16)
    data[21, 30, 31] = 3000  # one bright voxel must survive the half-resolution preview
    vol = volume_from_array(data, (1.0, 1.0, 1.0), window=Window(1000.5, 4001))
    out = mip_projection(vol, 0, 0, 32, fixed_scale=False)
    assert out.shape == (32, 32)
    assert "_pooled_mip" in vol.__dict__
    assert out.max() == 255 and (out == 255).sum() == 1


# ---------------------------------------------------------------- issue 18: speed paths


def test_coarse_volume_every_second_slice_and_last_pooled_in_plane(data):
    from render.volume import coarse_subset, coarse_volume
    assert coarse_subset(20) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 19]
    assert coarse_subset(5) == [0, 2, 4]
    big = coarse_subset(220)                # about 96 slices: every third, and the last
    assert big[:3] == [0, 3, 6] and big[-2:] == [216, 219] and len(big) == 74
    assert coarse_subset(193)[:2] == [0, 3] and coarse_subset(192)[:2] == [0, 2]
    sl = _slices(data)                      # 20 slices of 30x40, 2.5 mm apart
    full = build_volume(sl)
    vol = coarse_volume([sl[i] for i in coarse_subset(len(sl))])
    assert vol.coarse and not full.coarse and vol.shape == (11, 15, 20)
    k = coarse_subset(20)
    blocks = data[k].astype(float).reshape(11, 15, 2, 20, 2).mean(axis=(2, 4))
    assert vol.data.dtype == np.int16 and np.array_equal(vol.data, np.floor(blocks + 0.5))
    assert vol.spacing == (5.0, 2.0, 2.0)
    # the same extent: first and last slice, voxel (0,0,0) between the first four pixels
    assert np.allclose(vol.index_to_patient(0, 0, 0), full.index_to_patient(0, 0.5, 0.5))
    assert np.allclose(vol.slice_positions[[0, -1]], full.slice_positions[[0, -1]])
    # a plane through the centre of the coarse volume is the pooled full one
    img, geo = mpr_image(vol, "axial", index=3)
    assert np.array_equal(img, vol.data[3]) and geo.pixel_spacing == (2.0, 2.0)


def test_first_sagittal_plane_reads_across_rows_then_the_copy(data):
    vol = volume_from_array(data, (2.5, 1.0, 1.0))
    assert vol._sag is None
    first, _ = mpr_image(vol, "sagittal", index=7)          # strided, copy being built
    slab, _ = mpr_image(vol, "sagittal", index=7, slab_mm=3, slab_mode="avg")
    vol.sagittal_data                                       # wait for the copy
    again, _ = mpr_image(vol, "sagittal", index=7)
    assert np.array_equal(first, again) and np.array_equal(first, data[::-1, :, 7])
    assert np.allclose(slab, data[::-1, :, 6:9].mean(axis=2))
    assert np.allclose(mpr_image(vol, "sagittal", index=7, slab_mm=3, slab_mode="avg")[0], slab)


@pytest.mark.parametrize("mode,window", [
    ("mip", W), ("mip", Window(40.0, 400.0)), ("minip", Window(-500.0, 600.0)),
    ("mip", Window(40.0, 400.0, "LINEAR_EXACT")), ("mip", Window(40.0, 400.0, "SIGMOID")),
])
def test_mip_block_jumps_change_no_pixel(rng, monkeypatch, mode, window):
    """The block jumps and early stops (windowed image only) against plain ray marching."""
    import render.volume as V
    z, y, x = np.mgrid[0:48, 0:64, 0:72]
    body = ((y - 32) / 26.0) ** 2 + ((x - 36) / 30.0) ** 2 <= 1
    data = np.where(body, 40, -1000) + rng.normal(0, 12, body.shape)
    data[(abs(y - 40) < 4) & (abs(x - 36) < 4)] = 700                    # a bright rod
    data[20:28, 20:30, 20:30] = -850                                     # dark inside
    vol = volume_from_array(np.round(data).astype(np.int16), (1.25, 0.7, 0.7))
    args = [(0, 0), (33, 17), (-120, 60), (90, -5)]
    fast = [mip_projection(vol, a, b, 160, window=window, mode=mode) for a, b in args]
    monkeypatch.setattr(V, "MIP_BLOCKS_MIN_PIXELS", 10 ** 9)
    plain = [mip_projection(vol, a, b, 160, window=window, mode=mode) for a, b in args]
    for f, p in zip(fast, plain):
        assert f.shape == p.shape and np.array_equal(f, p)
    assert any(f.std() > 10 for f in fast)        # not blank: the check can fail


def _trilinear_ref(data, k, r, c, fill):
    """numpy trilinear interpolation at index positions, ``fill`` outside the volume."""
    nz, ny, nx = data.shape
    out = np.full(k.shape, float(fill))
    inside = (k >= 0) & (r >= 0) & (c >= 0) & (k <= nz - 1) & (r <= ny - 1) & (c <= nx - 1)
    k, r, c = k[inside], r[inside], c[inside]
    k0 = np.minimum(k.astype(int), nz - 2)
    r0 = np.minimum(r.astype(int), ny - 2)
    c0 = np.minimum(c.astype(int), nx - 2)
    fk, fr, fc = k - k0, r - r0, c - c0
    d = data.astype(float)
    v = 0.0
    for a, wa in ((0, 1 - fk), (1, fk)):
        for b, wb in ((0, 1 - fr), (1, fr)):
            for e, we in ((0, 1 - fc), (1, fc)):
                v = v + d[k0 + a, r0 + b, c0 + e] * wa * wb * we
    out[inside] = v
    return out


@pytest.mark.parametrize("yaw,pitch", [(10, 5), (33, -20), (-70, 45), (90, 0), (0, 90)])
def test_oblique_plane_equals_trilinear_reference(data, yaw, pitch):
    """Every pixel of an oblique plane (inside, at the edges, outside the volume)."""
    vol = volume_from_array(data, (2.5, 1.0, 1.0), origin=(5.0, -3.0, 40.0))
    out, g = mpr_image(vol, "oblique", yaw=yaw, pitch=pitch)
    rows, cols = np.mgrid[0:g.rows, 0:g.cols]
    pts = (g.top_left + cols[..., None] * g.pixel_spacing[1] * g.row_vector
           + rows[..., None] * g.pixel_spacing[0] * g.column_vector)
    kij = np.stack([vol.patient_to_index(p) for p in pts.reshape(-1, 3)]).T
    ref = _trilinear_ref(data, *kij, vol.min_value).reshape(out.shape)
    # a pixel exactly on the volume's face may round to either side: not compared
    hi = np.array(data.shape, float)[:, None] - 1
    edge = (np.abs(kij) < 1e-6).any(0) | (np.abs(kij - hi) < 1e-6).any(0)
    assert out.shape == (g.rows, g.cols) and edge.mean() < 0.2
    assert np.abs(out - ref)[~edge.reshape(out.shape)].max() < 1e-2
    assert (out == vol.min_value).mean() < 0.9 and out.std() > 100   # not all outside
