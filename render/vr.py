"""Volume rendering (VR): emission-absorption ray casting of a series volume with presets.

The rays are the ones :func:`render.volume.mip_projection` casts (same yaw/pitch, the same
fixed mm per pixel, so MIP and VR of one angle overlay exactly). Every sample's value (HU
for CT) is looked up in the preset's transfer function: a piecewise-linear opacity ramp and
a colour map laid over a window ``[wc - ww/2, wc + ww/2]``. The user's window (wc, ww)
replaces the preset's own, so it shifts (wc) and stretches (ww) the ramp: the "windowed
opacity ramp". Outside the window the ramp keeps its end values.

Opacities are given per millimetre of ray and corrected for the sampling step
(``1 - (1 - a)^step``), so a half-resolution preview looks like the full render. Samples are
composited front to back; a ray stops once it is 95 % opaque. Blocks of 8x8x8 voxels whose
values the ramp leaves fully transparent are jumped over (their min/max is computed once
per volume). Optional shading: Lambert with a head light, gradient by central differences
of the nearest voxels, computed only for samples that add colour.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from .errors import BadRenderParameter
from .pipeline import MAX_OUTPUT_SIDE, parse_window
from .volume import MIP_THREADS, Volume, _angle, _pool, _trilinear

LUT_SIZE = 2048
BLOCK_SHIFT = 3  # 8x8x8 blocks for empty-space skipping
OPAQUE = 0.95  # early ray termination
AMBIENT = 0.35


@dataclass(frozen=True)
class Preset:
    """A transfer function over the window [wc - ww/2, wc + ww/2] (x = 0..1 across it).

    ``opacity``: (x, opacity per mm) points; ``colour``: (x, r, g, b) points, 0..1."""

    name: str
    center: float
    width: float
    opacity: tuple[tuple[float, float], ...]
    colour: tuple[tuple[float, float, float, float], ...]
    shade: bool = True


PRESETS: dict[str, Preset] = {
    # bone from 150 HU: dark ivory at the ramp's foot, white ivory for cortical bone
    "bone": Preset("bone", 500.0, 700.0,
                   ((0.0, 0.0), (0.15, 0.08), (0.45, 0.6), (1.0, 0.95)),
                   ((0.0, 0.55, 0.35, 0.25), (0.3, 0.9, 0.8, 0.65), (0.7, 1.0, 0.96, 0.86),
                    (1.0, 1.0, 1.0, 0.97))),
    # contrast-filled vessels (~150..450 HU) red, dense bone ivory; soft tissue transparent
    "cta": Preset("cta", 350.0, 500.0,
                  ((0.0, 0.0), (0.1, 0.0), (0.3, 0.35), (0.6, 0.8), (1.0, 0.95)),
                  ((0.0, 0.5, 0.05, 0.05), (0.3, 0.85, 0.12, 0.1), (0.55, 0.95, 0.35, 0.25),
                   (0.8, 1.0, 0.85, 0.72), (1.0, 1.0, 0.97, 0.9))),
    # lung parenchyma and airway walls (-900..-300 HU) faint pink; air and the body clear
    "lung": Preset("lung", -650.0, 700.0,
                   ((0.0, 0.0), (0.12, 0.0), (0.35, 0.05), (0.7, 0.08), (0.9, 0.02),
                    (1.0, 0.0)),
                   ((0.0, 0.75, 0.45, 0.4), (0.5, 0.95, 0.7, 0.65), (1.0, 1.0, 0.9, 0.85)),
                   shade=True),
    # skin and fat faint tan, muscle and organs red, bone ivory
    "soft": Preset("soft", 150.0, 500.0,
                   ((0.0, 0.0), (0.1, 0.01), (0.35, 0.04), (0.45, 0.3), (1.0, 0.9)),
                   ((0.0, 0.85, 0.65, 0.5), (0.35, 0.8, 0.35, 0.28), (0.5, 0.85, 0.25, 0.2),
                    (0.8, 1.0, 0.85, 0.75), (1.0, 1.0, 0.97, 0.92))),
}
PRESET_NAMES = tuple(PRESETS)


def check_preset(preset: Any) -> Preset:
    name = str(preset or "").strip().lower()
    if name not in PRESETS:
        raise BadRenderParameter(
            f"preset {preset!r} is unknown; use {', '.join(PRESET_NAMES)}")
    return PRESETS[name]


def transfer_lut(preset: Preset, window: Any = None, step_mm: float = 1.0):
    """(alpha per sample [n], rgb [n, 3], lo HU, scale 1/HU, lowest and highest HU with
    alpha > 0) for the preset laid over ``window`` (default: the preset's own)."""
    win = parse_window(window)
    wc, ww = (win.center, win.width) if win else (preset.center, preset.width)
    if ww < 1.0:
        raise BadRenderParameter(f"window width must be >= 1, got {ww:g}")
    x = np.linspace(0.0, 1.0, LUT_SIZE)
    ox, oy = np.array(preset.opacity, np.float64).T
    a_mm = np.clip(np.interp(x, ox, oy), 0.0, 0.999)
    alpha = (1.0 - (1.0 - a_mm) ** max(step_mm, 1e-3)).astype(np.float32)
    cols = np.array(preset.colour, np.float64)
    rgb = np.stack([np.interp(x, cols[:, 0], cols[:, i]) for i in (1, 2, 3)], axis=1)
    lo = wc - ww / 2.0
    scale = (LUT_SIZE - 1) / ww
    nz = np.nonzero(alpha > 0)[0]
    if nz.size == 0:
        t_lo, t_hi = math.inf, -math.inf
    else:
        # the LUT clamps at both ends: a non-zero end extends to +-infinity
        t_lo = -math.inf if nz[0] == 0 else lo + (nz[0] - 1) / scale
        t_hi = math.inf if nz[-1] == LUT_SIZE - 1 else lo + (nz[-1] + 1) / scale
    return alpha, rgb.astype(np.float32), float(lo), float(scale), float(t_lo), float(t_hi)


@njit(nogil=True, cache=True)
def _block_minmax(data, shift, bk0, bk1, out):
    """out[0/1, b] = min/max over block b and one voxel beyond it on each axis (everything
    a trilinear sample inside the block reads), for block slices bk0..bk1-1."""
    nz, ny, nx = data.shape
    B = 1 << shift
    for bk in range(bk0, bk1):
        for br in range(out.shape[2]):
            for bc in range(out.shape[3]):
                lo = np.inf
                hi = -np.inf
                for k in range(bk * B, min(bk * B + B + 1, nz)):
                    for r in range(br * B, min(br * B + B + 1, ny)):
                        for c in range(bc * B, min(bc * B + B + 1, nx)):
                            v = data[k, r, c]
                            if v < lo:
                                lo = v
                            if v > hi:
                                hi = v
                out[0, bk, br, bc] = lo
                out[1, bk, br, bc] = hi


def block_minmax(vol: Volume) -> np.ndarray:
    """(2, bz, by, bx) float32 block min/max, built once per volume (counted in its nbytes)."""
    key = "_pooled_vrblocks"
    b = vol.__dict__.get(key)
    if b is None:
        with vol._lock:
            b = vol.__dict__.get(key)
            if b is None:
                nz, ny, nx = vol.data.shape
                n = 1 << BLOCK_SHIFT
                b = np.empty((2, -(-nz // n), -(-ny // n), -(-nx // n)), np.float32)
                cuts = np.linspace(0, b.shape[1], MIP_THREADS + 1).astype(int)
                futs = [_pool().submit(_block_minmax, vol.data, BLOCK_SHIFT, int(a), int(e), b)
                        for a, e in zip(cuts[:-1], cuts[1:]) if e > a]
                for f in futs:
                    f.result()
                vol.__dict__[key] = b
    return b


@njit(nogil=True, cache=True, inline="always")
def _transparent(blocks, shift, k, r, c, t_lo, t_hi):
    bk = int(k) >> shift
    br = int(r) >> shift
    bc = int(c) >> shift
    return blocks[1, bk, br, bc] < t_lo or blocks[0, bk, br, bc] > t_hi


@njit(nogil=True, cache=True)
def vr_kernel(data, blocks, shift, p0, du, dv, dd, nsteps, lut_a, lut_rgb, lut_lo, lut_scale,
              t_lo, t_hi, shade, light, gscale, row0, row1, out):
    """Front-to-back emission-absorption compositing, rays as in ``mip_kernel`` (index space
    (k, r, c): pixel (i, j) starts at p0 + i*dv + j*du, sample t at + t*dd). ``out`` is
    (nv, nu, 3) uint8 on black."""
    nz, ny, nx = data.shape
    hi_k = nz - 1.0
    hi_r = ny - 1.0
    hi_c = nx - 1.0
    nu = out.shape[1]
    nl = lut_a.shape[0]
    B = 1 << shift
    for i in range(row0, row1):
        for j in range(nu):
            sk = p0[0] + i * dv[0] + j * du[0]
            sr = p0[1] + i * dv[1] + j * du[1]
            sc = p0[2] + i * dv[2] + j * du[2]
            t0 = 0.0
            t1 = nsteps - 1.0
            for ax in range(3):
                if ax == 0:
                    s, d, hi = sk, dd[0], hi_k
                elif ax == 1:
                    s, d, hi = sr, dd[1], hi_r
                else:
                    s, d, hi = sc, dd[2], hi_c
                if abs(d) < 1e-12:
                    if s < 0.0 or s > hi:
                        t0 = 1.0
                        t1 = 0.0
                else:
                    a = (0.0 - s) / d
                    b = (hi - s) / d
                    if a > b:
                        a, b = b, a
                    t0 = max(t0, a)
                    t1 = min(t1, b)
            ta = int(math.ceil(t0 - 1e-9))
            tb = int(math.floor(t1 + 1e-9))
            acc_a = 0.0
            cr = 0.0
            cg = 0.0
            cb = 0.0
            t = ta
            while t <= tb:
                k = min(max(sk + t * dd[0], 0.0), hi_k)
                r = min(max(sr + t * dd[1], 0.0), hi_r)
                c = min(max(sc + t * dd[2], 0.0), hi_c)
                if _transparent(blocks, shift, k, r, c, t_lo, t_hi):
                    # jump to the first sample past this block
                    te = 1e30
                    for ax in range(3):
                        if ax == 0:
                            p, d = k, dd[0]
                        elif ax == 1:
                            p, d = r, dd[1]
                        else:
                            p, d = c, dd[2]
                        base = (int(p) >> shift) * B
                        if d > 1e-12:
                            te = min(te, (base + B - p) / d)
                        elif d < -1e-12:
                            te = min(te, (base - p) / d)
                    t = max(t + 1, int(t + te) + 1)
                    continue
                v = _trilinear(data, k, r, c, 0.0)
                x = (v - lut_lo) * lut_scale
                li = 0 if x <= 0.0 else (nl - 1 if x >= nl - 1 else int(x + 0.5))
                a = lut_a[li]
                if a > 0.0:
                    f = 1.0
                    if shade:
                        ik = int(k + 0.5)
                        ir = int(r + 0.5)
                        ic = int(c + 0.5)
                        gk = (data[min(ik + 1, nz - 1), ir, ic] - data[max(ik - 1, 0), ir, ic]) * gscale[0]
                        gr = (data[ik, min(ir + 1, ny - 1), ic] - data[ik, max(ir - 1, 0), ic]) * gscale[1]
                        gc = (data[ik, ir, min(ic + 1, nx - 1)] - data[ik, ir, max(ic - 1, 0)]) * gscale[2]
                        gn = math.sqrt(gk * gk + gr * gr + gc * gc)
                        if gn > 1e-6:
                            f = AMBIENT + (1.0 - AMBIENT) * abs(gk * light[0] + gr * light[1]
                                                                + gc * light[2]) / gn
                    w = (1.0 - acc_a) * a
                    cr += w * f * lut_rgb[li, 0]
                    cg += w * f * lut_rgb[li, 1]
                    cb += w * f * lut_rgb[li, 2]
                    acc_a += w
                    if acc_a > OPAQUE:
                        break
                t += 1
            out[i, j, 0] = min(255, int(cr * 255.0 + 0.5))
            out[i, j, 1] = min(255, int(cg * 255.0 + 0.5))
            out[i, j, 2] = min(255, int(cb * 255.0 + 0.5))


def vr_projection(vol: Volume, yaw_deg: float = 0.0, pitch_deg: float = 0.0, size: int = 256,
                  *, preset: Any = "bone", window: Any = None, fixed_scale: bool = True,
                  invert: bool = False) -> np.ndarray:
    """Volume rendering rotated about the volume centre: (h, w, 3) uint8 RGB on black.

    Angles, ``size`` and ``fixed_scale`` as in :func:`render.volume.mip_projection` (same
    view, same mm per pixel). ``preset``: bone, cta, lung or soft; ``window`` (centre,
    width) moves the preset's opacity ramp (default: the preset's own window)."""
    yaw, pitch = _angle(yaw_deg, "yaw"), _angle(pitch_deg, "pitch")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= MAX_OUTPUT_SIDE:
        raise BadRenderParameter(f"size must be an integer 1..{MAX_OUTPUT_SIDE}, got {size!r}")
    pre = check_preset(preset)
    nz, ny, nx = vol.data.shape
    dz, dy, dx = vol.spacing
    up = 1.0 if vol.head_up else -1.0
    # the frame of mip_projection: screen right u, screen down v, ray d (volume x, y, z)
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    u = np.array([cy, sy, 0.0])
    d0 = np.array([-sy, cy, 0.0])
    v0 = np.array([0.0, 0.0, -up])
    v = v0 * cp + d0 * sp * up
    d = d0 * cp - v0 * sp * up
    L = np.array([nx * dx, ny * dy, nz * dz])
    C = np.array([(nx - 1) / 2 * dx, (ny - 1) / 2 * dy, (nz - 1) / 2 * dz])
    if fixed_scale:
        ext_u = ext_v = ext_d = float(np.linalg.norm(L))
    else:
        ext_u, ext_v, ext_d = float(np.abs(u) @ L), float(np.abs(v) @ L), float(np.abs(d) @ L)
    s = max(ext_u, ext_v) / size
    if s >= 2.0 * min(dx, dy, dz) and min(nz, ny, nx) >= 8:
        C = C - 0.5 * np.array([dx, dy, dz])  # preview: the mean-pooled half-size copy
        vol = vol.pooled("avg")
        nz, ny, nx = vol.data.shape
        dz, dy, dx = vol.spacing
    nu = max(1, int(round(ext_u / s)))
    nv = max(1, int(round(ext_v / s)))
    # about one voxel: the pixel size, between the finest and the mean voxel spacing
    step = max(min(dx, dy, dz), min(s, (dx + dy + dz) / 3))
    nsteps = max(1, int(round(ext_d / step)))
    start = C - (nu - 1) / 2 * s * u - (nv - 1) / 2 * s * v - (nsteps - 1) / 2 * step * d
    scale = np.array([1 / dz, 1 / dy, 1 / dx])
    to_idx = lambda p: np.array([p[2], p[1], p[0]]) * scale  # noqa: E731
    alpha, rgb, lo, lscale, t_lo, t_hi = transfer_lut(pre, window, step)
    light = np.array([d[2], d[1], d[0]])  # head light along the ray, (k, r, c) in mm
    gscale = np.array([0.5 / dz, 0.5 / dy, 0.5 / dx])
    out = np.zeros((nv, nu, 3), np.uint8)
    args = (vol.data, block_minmax(vol), BLOCK_SHIFT, to_idx(start), to_idx(u * s),
            to_idx(v * s), to_idx(d * step), nsteps, alpha, rgb, lo, lscale, t_lo, t_hi,
            bool(pre.shade), light, gscale)
    if nv >= 64 and MIP_THREADS > 1:
        bands = np.linspace(0, nv, MIP_THREADS * 8 + 1).astype(int)
        futs = [_pool().submit(vr_kernel, *args, int(a), int(b), out)
                for a, b in zip(bands[:-1], bands[1:]) if b > a]
        for f in futs:
            f.result()
    else:
        vr_kernel(*args, 0, nv, out)
    return 255 - out if invert else out


def warm_up_kernels() -> None:
    """Load (compile on the very first run) the MIP and VR kernels for int16 volumes and for
    the float32 half-size copies previews use."""
    from .volume import mip_projection, volume_from_array
    vol = volume_from_array(np.zeros((16, 16, 16), np.int16))
    for size in (16, 6):                # 6 px: the pooled (float32) preview path
        mip_projection(vol, 10, 10, size)
        vr_projection(vol, 10, 10, size, preset="bone")


__all__ = ("PRESETS", "PRESET_NAMES", "Preset", "check_preset", "transfer_lut",
           "vr_projection")
