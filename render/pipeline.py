"""The DICOM grayscale pipeline (PS3.3 C.11) and the fused render kernels.

Two layers:

* plain numpy REFERENCE functions named after the Standard's steps
  (:func:`apply_modality_lut`, :func:`apply_voi`, :func:`invert_monochrome1`,
  :func:`resample_reference`, :func:`render_frame_reference`) that the tests trust;
* the hot path :func:`render_frame`, a fused numba kernel (``njit(nogil=True, cache=True)``)
  that goes from stored pixels to uint8 at the requested viewport in one pass:
  rescale + window + invert + resampling (area-averaging when shrinking, bilinear when
  enlarging), writing into a preallocated output.

Resampling is separable and expressed as per-axis "taps" (source index + weight per output
pixel), computed once per request in numpy (tiny: one row per output pixel), so one kernel
serves shrink, enlarge, anisotropic pixels and any source region.

Conventions: ``frame`` is a 0-based index (DICOMweb's 1-based frame numbers are converted by
the caller). ``rotate`` is clockwise in degrees (0/90/180/270); flips are applied after the
rotation, i.e. to the image as displayed.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, Sequence

import numpy as np
from numba import njit

from .decode import LUT, WINDOW_FUNCTIONS, DecodedImage, Window
from .errors import BadRenderParameter, FrameOutOfRange

log = logging.getLogger(__name__)

MAX_OUTPUT_SIDE = 4096
"""Largest output width or height (pixels) any render function produces."""

FN_LINEAR, FN_LINEAR_EXACT, FN_SIGMOID, FN_NONE = 0, 1, 2, 3
_FN_CODE = {"LINEAR": FN_LINEAR, "LINEAR_EXACT": FN_LINEAR_EXACT, "SIGMOID": FN_SIGMOID}


# =========================================================================== parameters


def parse_window(window: Any) -> Window | None:
    """``None`` | Window | (center, width[, function]) -> Window; BadRenderParameter if malformed."""
    if window is None:
        return None
    if isinstance(window, Window):
        c, w, fn = window.center, window.width, window.function
    else:
        if isinstance(window, str):
            window = [p.strip() for p in window.split(",")]
        try:
            parts = list(window)
        except TypeError:
            raise BadRenderParameter(
                f"window {window!r} is malformed; give center,width[,function], e.g. 40,400,linear"
            ) from None
        if len(parts) not in (2, 3):
            raise BadRenderParameter(
                f"window needs 2 or 3 values (center,width[,function]), got {len(parts)}"
            )
        c, w = parts[0], parts[1]
        fn = parts[2] if len(parts) == 3 else "LINEAR"
    try:
        c, w = float(c), float(w)
    except (TypeError, ValueError):
        raise BadRenderParameter(
            f"window center and width must be numbers, got {c!r},{w!r}"
        ) from None
    if not (math.isfinite(c) and math.isfinite(w)):
        raise BadRenderParameter("window center and width must be finite numbers")
    fn = str(fn or "LINEAR").strip().upper()
    if fn not in WINDOW_FUNCTIONS:
        raise BadRenderParameter(
            f"window function {fn!r} is unknown; use one of {', '.join(WINDOW_FUNCTIONS).lower()}"
        )
    if fn == "LINEAR" and w < 1:
        raise BadRenderParameter(f"window width {w:g} must be >= 1 for LINEAR")
    if w <= 0:
        raise BadRenderParameter(f"window width {w:g} must be > 0")
    return Window(c, w, fn)


def _num(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise BadRenderParameter(f"viewport {name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadRenderParameter(f"viewport {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise BadRenderParameter(f"viewport {name} must be a finite number, got {value!r}")
    return v


def parse_viewport(viewport: Any) -> tuple[int, int, float | None, float | None, float | None, float | None]:
    """(vw, vh[, sx, sy, sw, sh]) -> validated tuple; missing region values are None."""
    if isinstance(viewport, str):
        viewport = [p.strip() or None for p in viewport.split(",")]
    try:
        parts = list(viewport)
    except TypeError:
        raise BadRenderParameter(
            f"viewport {viewport!r} is malformed; give vw,vh[,sx,sy,sw,sh]"
        ) from None
    if len(parts) not in (2, 4, 6):
        raise BadRenderParameter(
            f"viewport needs 2 or 6 values (vw,vh[,sx,sy,sw,sh]), got {len(parts)}"
        )
    parts += [None] * (6 - len(parts))
    vw, vh = _num(parts[0], "width"), _num(parts[1], "height")
    for name, v in (("width", vw), ("height", vh)):
        if v <= 0 or v != int(v):
            raise BadRenderParameter(f"viewport {name} must be a positive integer, got {v:g}")
        if v > MAX_OUTPUT_SIDE:
            raise BadRenderParameter(
                f"viewport {name} {int(v)} exceeds the maximum of {MAX_OUTPUT_SIDE} pixels"
            )
    region: list[float | None] = []
    for name, v in zip(("sx", "sy", "sw", "sh"), parts[2:]):
        if v is None:
            region.append(None)
            continue
        f = _num(v, name)
        if name in ("sx", "sy") and f < 0:
            raise BadRenderParameter(f"viewport {name} must be >= 0, got {f:g}")
        if name in ("sw", "sh") and f <= 0:
            raise BadRenderParameter(f"viewport {name} must be > 0, got {f:g}")
        region.append(f)
    return (int(vw), int(vh), region[0], region[1], region[2], region[3])


def cap_viewport(viewport, cap: int):
    """A parsed viewport whose longest side is at most ``cap`` pixels (scaled down keeping
    its aspect and source region): the render-size cap of a principal (issue 14)."""
    if viewport is None or not cap or max(viewport[0], viewport[1]) <= cap:
        return viewport
    f = cap / max(viewport[0], viewport[1])
    return (max(1, int(viewport[0] * f)), max(1, int(viewport[1] * f)), *viewport[2:])


def _check_rotate(rotate: Any) -> int:
    try:
        r = int(rotate)
    except (TypeError, ValueError):
        raise BadRenderParameter(f"rotate must be 0, 90, 180 or 270, got {rotate!r}") from None
    if r != rotate or r % 90:
        raise BadRenderParameter(f"rotate must be a multiple of 90 degrees, got {rotate!r}")
    return r % 360


def check_frame(img: DecodedImage, frame: Any) -> int:
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise BadRenderParameter(f"frame must be an integer index, got {frame!r}")
    if not 0 <= int(frame) < img.frames:
        raise FrameOutOfRange(
            f"frame index {int(frame)} does not exist: this image has {img.frames} frame(s), "
            f"valid indices are 0..{img.frames - 1}"
        )
    return int(frame)


def fit_size(disp_w: float, disp_h: float, vw: float, vh: float) -> tuple[int, int]:
    """Largest size with the aspect ratio disp_w:disp_h that fits inside vw x vh."""
    scale = min(vw / disp_w, vh / disp_h)
    return max(1, min(int(vw), round(disp_w * scale))), max(1, min(int(vh), round(disp_h * scale)))


def plan_output(
    src_w: int,
    src_h: int,
    viewport: Any,
    rotate: int = 0,
    aspect: float = 1.0,
) -> tuple[tuple[float, float, float, float], int, int]:
    """Source region and kernel output size (in source orientation: width, height).

    ``aspect`` is the physical height/width of one source pixel (row spacing / column
    spacing); the output keeps physical proportions. Native size (viewport None) keeps one
    output pixel per source column, capped at MAX_OUTPUT_SIDE.
    """
    if viewport is None:
        sx, sy, sw, sh = 0.0, 0.0, float(src_w), float(src_h)
        vw = vh = None
    else:
        vw, vh, sx, sy, sw, sh = parse_viewport(viewport)
        sx = 0.0 if sx is None else sx
        sy = 0.0 if sy is None else sy
        if sx >= src_w or sy >= src_h:
            raise BadRenderParameter(
                f"viewport region starts at ({sx:g},{sy:g}), outside the {src_w}x{src_h} image"
            )
        sw = src_w - sx if sw is None else min(sw, src_w - sx)
        sh = src_h - sy if sh is None else min(sh, src_h - sy)
    disp_w, disp_h = sw, sh * aspect
    if rotate in (90, 270):
        disp_w, disp_h = disp_h, disp_w
    if vw is None:
        # native: one output pixel per source column (disp_* are in column-pixel units)
        cap = min(1.0, MAX_OUTPUT_SIDE / max(disp_w, disp_h))
        ow, oh = max(1, round(disp_w * cap)), max(1, round(disp_h * cap))
    else:
        ow, oh = fit_size(disp_w, disp_h, vw, vh)
    if rotate in (90, 270):
        ow, oh = oh, ow
    return (sx, sy, sw, sh), ow, oh


# =========================================================================== taps


def axis_taps(src_len: int, start: float, length: float, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-pixel source indices and weights along one axis (memoised: phones ask for
    the same few viewport sizes again and again; the arrays are read-only)."""
    return _axis_taps_cached(int(src_len), float(start), float(length), int(out_len))


@functools.lru_cache(maxsize=4096)
def _axis_taps_cached(src_len: int, start: float, length: float,
                      out_len: int) -> tuple[np.ndarray, np.ndarray]:
    idx, w = _axis_taps(src_len, start, length, out_len)
    idx.flags.writeable = False
    w.flags.writeable = False
    return idx, w


def _axis_taps(src_len: int, start: float, length: float, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-pixel source indices and weights along one axis.

    Shrinking (length >= out_len): exact box filter (area averaging) with fractional edge
    weights. Enlarging: bilinear (pixel centres aligned, edges clamped). Weights sum to 1.
    """
    scale = length / out_len
    o = np.arange(out_len, dtype=np.float64)
    if scale >= 1.0:
        a = start + o * scale
        b = a + scale
        i0 = np.floor(a).astype(np.int64)
        ntaps = int(np.max(np.ceil(b - 1e-9).astype(np.int64) - i0)) if out_len else 1
        ntaps = max(ntaps, 1)
        idx = i0[:, None] + np.arange(ntaps)[None, :]
        w = np.minimum(b[:, None], idx + 1.0) - np.maximum(a[:, None], idx.astype(np.float64))
        w = np.clip(w, 0.0, None)
        w[w < 1e-12] = 0.0
    else:
        x = start + (o + 0.5) * scale - 0.5
        x = np.clip(x, 0.0, src_len - 1.0)
        i0 = np.floor(x).astype(np.int64)
        f = x - i0
        idx = np.stack([i0, i0 + 1], axis=1)
        w = np.stack([1.0 - f, f], axis=1)
    # zero-weight taps past the edge are clipped for the numpy reference; kernels use idx[:, 0]
    # as a contiguous start and rely on those weights being 0
    w[idx > src_len - 1] = 0.0
    idx = np.clip(idx, 0, src_len - 1)
    s = w.sum(axis=1, keepdims=True)
    s[s == 0] = 1.0
    w = w / s
    return np.ascontiguousarray(idx, dtype=np.int64), np.ascontiguousarray(w, dtype=np.float64)


# =========================================================================== numpy reference


def apply_modality_lut(arr: np.ndarray, slope: float = 1.0, intercept: float = 0.0,
                       lut: LUT | None = None) -> np.ndarray:
    """PS3.3 C.11.1: stored values -> modality values (float64), by LUT or rescale."""
    if lut is not None:
        return lut.apply(arr).astype(np.float64)
    return np.asarray(arr, dtype=np.float64) * slope + intercept


def apply_voi(arr: np.ndarray, window: Window | None = None, lut: LUT | None = None) -> np.ndarray:
    """PS3.3 C.11.2: modality values -> display values in [0, 255] (float64).

    Window functions per C.11.2.1.2 (LINEAR), C.11.2.1.3.1 (SIGMOID), C.11.2.1.3.2
    (LINEAR_EXACT); a VOI LUT maps through its table and scales its output range to 0..255.
    """
    x = np.asarray(arr, dtype=np.float64)
    if lut is not None:
        return lut.apply(x).astype(np.float64) * (255.0 / lut.out_max)
    if window is None:
        raise ValueError("apply_voi needs a window or a LUT")
    c, w, fn = window.center, window.width, window.function
    if fn == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if fn == "LINEAR":
        c, w = c - 0.5, w - 1.0
    out = np.empty_like(x)
    below = x <= c - w / 2
    above = x > c + w / 2
    between = ~(below | above)
    out[below] = 0.0
    out[above] = 255.0
    out[between] = ((x[between] - c) / w + 0.5) * 255.0 if w > 0 else 0.0
    return out


def to_uint8(display: np.ndarray) -> np.ndarray:
    """Round display values in [0,255] to uint8 (half up)."""
    return np.clip(np.floor(np.asarray(display, dtype=np.float64) + 0.5), 0, 255).astype(np.uint8)


def invert_monochrome1(arr_u8: np.ndarray) -> np.ndarray:
    """MONOCHROME1 (or a user's invert): 255 - v."""
    return (255 - arr_u8.astype(np.int16)).astype(np.uint8)


def resample_reference(src: np.ndarray, yi, yw, xi, xw) -> np.ndarray:
    """Separable resample with taps, in float64 (2D or HxWxC)."""
    s = np.asarray(src, dtype=np.float64)
    rows = np.einsum("ot,ot...->o...", yw, s[yi])  # (oh, W[, C])
    return np.einsum("pt,opt...->op...", xw, rows[:, xi])


def _orient(out: np.ndarray, rotate: int, flip_h: bool, flip_v: bool) -> np.ndarray:
    if rotate:
        out = np.rot90(out, k=-(rotate // 90))
    if flip_h:
        out = out[:, ::-1]
    if flip_v:
        out = out[::-1]
    return np.ascontiguousarray(out)


def _uses_lut_path(img: DecodedImage, win: Window | None) -> bool:
    return img.modality_lut is not None or (win is None and img.voi_lut is not None)


def display_window(img: DecodedImage, frame: int, window: Any = None) -> Window | None:
    """The window that applies: the request's, else the file's, else (no VOI LUT) the default."""
    win = parse_window(window)
    if win is not None:
        return win
    if img.voi_lut is not None:
        return None  # the Standard: prefer the VOI LUT when both are present (as pydicom does)
    return img.window(frame) or img.default_window


def grey_display_reference(img: DecodedImage, frame: int, window: Any = None) -> np.ndarray:
    """Full-resolution display values (float64, 0..255) of a grey frame, numpy only."""
    win = display_window(img, frame, window)
    slope, intercept = img.rescale(frame)
    mod = apply_modality_lut(img.pixels[frame], slope, intercept, img.modality_lut)
    if win is None:
        return apply_voi(mod, lut=img.voi_lut)
    return apply_voi(mod, win)


def render_frame_reference(img: DecodedImage, frame: int, *, window=None, viewport=None,
                           rotate=0, flip_h=False, flip_v=False, invert=False) -> np.ndarray:
    """Numpy twin of :func:`render_frame` (slow; for tests).

    Grey: resample stored values (area/bilinear), then modality LUT, VOI, round, invert.
    The LUT path resamples display values instead (a LUT is not linear).
    """
    frame = check_frame(img, frame)
    rotate = _check_rotate(rotate)
    (sx, sy, sw, sh), ow, oh = plan_output(img.cols, img.rows, viewport, rotate, _aspect(img))
    yi, yw = axis_taps(img.rows, sy, sh, oh)
    xi, xw = axis_taps(img.cols, sx, sw, ow)
    if img.is_color:
        out = to_uint8(resample_reference(img.pixels[frame], yi, yw, xi, xw))
        if invert:
            out = invert_monochrome1(out)
        return _orient(out, rotate, flip_h, flip_v)
    win = display_window(img, frame, window)
    if _uses_lut_path(img, win):
        disp = resample_reference(grey_display_reference(img, frame, window), yi, yw, xi, xw)
    else:
        slope, intercept = img.rescale(frame)
        stored = resample_reference(img.pixels[frame], yi, yw, xi, xw)
        disp = apply_voi(apply_modality_lut(stored, slope, intercept), win)
    out = to_uint8(disp)
    if bool(invert) != bool(img.invert):
        out = invert_monochrome1(out)
    return _orient(out, rotate, flip_h, flip_v)


# =========================================================================== numba kernels


@njit(nogil=True, cache=True, inline="always")
def _window_u8(v, fn, c, w, lo, hi, invert):
    if fn == 3:  # already display values
        y = v
    elif fn == 2:  # SIGMOID
        y = 255.0 / (1.0 + math.exp(-4.0 * (v - c) / w))
    else:  # LINEAR / LINEAR_EXACT with c, w pre-adjusted
        if v <= lo:
            y = 0.0
        elif v > hi:
            y = 255.0
        else:
            y = ((v - c) / w + 0.5) * 255.0
    y = math.floor(y + 0.5)
    if y < 0.0:
        y = 0.0
    elif y > 255.0:
        y = 255.0
    r = np.uint8(y)
    if invert:
        r = np.uint8(255 - r)
    return r


@njit(nogil=True, cache=True, inline="always")
def _tap_span(xi, xw, W, ow):
    """The horizontal taps' layout: the first source column they read, how many columns
    they span, taps per output column, and each output column's offset into the span."""
    tx = xw.shape[1]
    x0 = xi[:, 0].min()
    xs = np.empty(ow, np.int64)
    for p in range(ow):
        xs[p] = xi[p, 0] - x0
    return x0, min(xi[:, 0].max() + tx, W) - x0, tx, xs


@njit(nogil=True, cache=True, inline="always")
def _window_bounds(fn, center, width):
    """(c, w, lo, hi) of a window: LINEAR (fn 0) shifts by half a value (PS3.3 C.11.2.1.2)."""
    c = center
    w = width
    if fn == 0:
        c = center - 0.5
        w = width - 1.0
    return c, w, c - w / 2.0, c + w / 2.0


@njit(nogil=True, cache=True, inline="always")
def _linear_coeffs(slope, intercept, fn, center, width):
    """Fold rescale + LINEAR/LINEAR_EXACT into y = s*A + B (then clip): (A, B, ok)."""
    c, w, _lo, _hi = _window_bounds(fn, center, width)
    if (fn == 0 or fn == 1) and w > 0.0:
        a = 255.0 / w
        return slope * a, (intercept - c) * a + 127.5, True
    return 0.0, 0.0, False


@njit(nogil=True, cache=True, inline="always")
def _lin_u8(y, invert):
    if y < 0.0:
        y = 0.0
    elif y > 255.0:
        y = 255.0
    r = np.uint8(math.floor(y + 0.5))
    if invert:
        r = np.uint8(255 - r)
    return r


@njit(nogil=True, cache=True, inline="always")
def _window_row(row, n, linear, A, B, slope, intercept, fn, c, w, lo, hi, invert, dst):
    """Window a row of accumulated values into dst[:n] (branch-free loop for LINEAR)."""
    if linear:
        a32 = np.float32(A)
        b32 = np.float32(B)
        if invert:
            for p in range(n):
                y = np.float32(row[p]) * a32 + b32
                y = min(max(y, np.float32(0.0)), np.float32(255.0))
                dst[p] = np.uint8(255 - np.int32(y + np.float32(0.5)))
        else:
            for p in range(n):
                y = np.float32(row[p]) * a32 + b32
                y = min(max(y, np.float32(0.0)), np.float32(255.0))
                dst[p] = np.uint8(np.int32(y + np.float32(0.5)))
    else:
        for p in range(n):
            dst[p] = _window_u8(row[p] * slope + intercept, fn, c, w, lo, hi, invert)


@njit(nogil=True, cache=True)
def render_grey_kernel(src, yi, yw, xi, xw, slope, intercept, fn, center, width, invert, out):
    """Fused: resample (separable taps) stored values -> rescale -> window -> invert -> uint8.

    Per output row: vertical taps accumulate a row buffer over the needed columns (SIMD),
    horizontal taps gather into a second buffer, then one branch-free window loop.
    """
    A, B, linear = _linear_coeffs(slope, intercept, fn, center, width)
    c, w, lo, hi = _window_bounds(fn, center, width)
    oh = out.shape[0]
    ow = out.shape[1]
    ty = yi.shape[1]
    # horizontal taps are contiguous from xi[p, 0]; taps past the image edge weigh 0 and
    # read the zero padding of the row buffer
    x0, nx, tx, xs = _tap_span(xi, xw, src.shape[1], ow)
    tmp = np.zeros(nx + tx)
    row = np.empty(ow)
    for o in range(oh):
        for k in range(nx):
            tmp[k] = 0.0
        for a in range(ty):
            wy = yw[o, a]
            if wy == 0.0:
                continue
            r = yi[o, a]
            for k in range(nx):
                tmp[k] += wy * src[r, x0 + k]
        if tx == 1:
            for p in range(ow):
                row[p] = tmp[xs[p]]
        elif tx == 2:
            for p in range(ow):
                st = xs[p]
                row[p] = xw[p, 0] * tmp[st] + xw[p, 1] * tmp[st + 1]
        else:
            for p in range(ow):
                s = 0.0
                st = xs[p]
                for b in range(tx):
                    s += xw[p, b] * tmp[st + b]
                row[p] = s
        _window_row(row, ow, linear, A, B, slope, intercept, fn, c, w, lo, hi, invert, out[o])


@njit(nogil=True, cache=True)
def window_grey_kernel(src, y0, x0, slope, intercept, fn, center, width, invert, out):
    """Native-size fast path: out = window(src[y0:y0+oh, x0:x0+ow] * slope + intercept)."""
    A, B, linear = _linear_coeffs(slope, intercept, fn, center, width)
    c, w, lo, hi = _window_bounds(fn, center, width)
    ow = out.shape[1]
    for o in range(out.shape[0]):
        _window_row(src[y0 + o, x0:x0 + ow], ow, linear, A, B, slope, intercept, fn, c, w,
                    lo, hi, invert, out[o])


@njit(nogil=True, cache=True)
def render_color_kernel(src, yi, yw, xi, xw, invert, out):
    """Resample an (H, W, C) uint8 image with separable taps into out (oh, ow, C)."""
    oh = out.shape[0]
    ow = out.shape[1]
    nc = out.shape[2]
    ty = yi.shape[1]
    x0, nx, tx, xs = _tap_span(xi, xw, src.shape[1], ow)
    tmp = np.zeros((nx + tx, nc))
    for o in range(oh):
        tmp[:nx, :] = 0.0
        for a in range(ty):
            wy = yw[o, a]
            if wy == 0.0:
                continue
            r = yi[o, a]
            for k in range(nx):
                for ch in range(nc):
                    tmp[k, ch] += wy * src[r, x0 + k, ch]
        for p in range(ow):
            st = xs[p]
            for ch in range(nc):
                s = 0.0
                for b in range(tx):
                    s += xw[p, b] * tmp[st + b, ch]
                out[o, p, ch] = _lin_u8(s, invert)


# =========================================================================== hot path


def _aspect(img: DecodedImage) -> float:
    if img.pixel_spacing is None:
        return 1.0
    r, c = img.pixel_spacing
    a = r / c
    return 1.0 if abs(a - 1.0) < 1e-3 else a


def render_region(src: np.ndarray, region: tuple[float, float, float, float], ow: int, oh: int,
                  *, slope: float = 1.0, intercept: float = 0.0, window: Window | None = None,
                  invert: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Render a 2D grey array (stored/modality values; ``window`` None = already 0..255) or an
    (H, W, 3) uint8 colour array: source ``region`` (sx, sy, sw, sh) -> (oh, ow[, 3]) uint8."""
    sx, sy, sw, sh = region
    color = src.ndim == 3
    shape = (oh, ow, src.shape[2]) if color else (oh, ow)
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 of shape {shape}")
    H, W = src.shape[0], src.shape[1]
    if color:
        yi, yw = axis_taps(H, sy, sh, oh)
        xi, xw = axis_taps(W, sx, sw, ow)
        render_color_kernel(src, yi, yw, xi, xw, bool(invert), out)
        return out
    if window is None:
        fn, c, w = FN_NONE, 0.0, 1.0
    else:
        fn, c, w = _FN_CODE[window.function], float(window.center), float(window.width)
    if (ow == sw and oh == sh and sx == int(sx) and sy == int(sy)):
        window_grey_kernel(src, int(sy), int(sx), float(slope), float(intercept), fn, c, w,
                           bool(invert), out)
        return out
    yi, yw = axis_taps(H, sy, sh, oh)
    xi, xw = axis_taps(W, sx, sw, ow)
    render_grey_kernel(src, yi, yw, xi, xw, float(slope), float(intercept), fn, c, w,
                       bool(invert), out)
    return out


def render_frame(img: DecodedImage, frame: int, *, window: Any = None, viewport: Any = None,
                 rotate: int = 0, flip_h: bool = False, flip_v: bool = False,
                 invert: bool = False) -> np.ndarray:
    """Render one frame to uint8: (H, W) grey or (H, W, 3) RGB.

    window: (center, width[, function]) or None for the file's window / VOI LUT / default.
    viewport: (vw, vh[, sx, sy, sw, sh]) per DICOMweb rendered resources; the output keeps the
    aspect ratio and fits inside vw x vh. None = native size (capped at MAX_OUTPUT_SIDE).
    invert: toggles the display inversion (MONOCHROME1 images are already inverted).
    """
    frame = check_frame(img, frame)
    rotate = _check_rotate(rotate)
    region, ow, oh = plan_output(img.cols, img.rows, viewport, rotate, _aspect(img))
    src = img.pixels[frame]
    if img.is_color:
        out = render_region(src, region, ow, oh, invert=bool(invert))
    else:
        win = display_window(img, frame, window)
        inv = bool(invert) != bool(img.invert)
        if _uses_lut_path(img, win):
            disp = grey_display_reference(img, frame, window)
            out = render_region(disp, region, ow, oh, window=None, invert=inv)
        else:
            slope, intercept = img.rescale(frame)
            out = render_region(src, region, ow, oh, slope=slope, intercept=intercept,
                                window=win, invert=inv)
    if rotate or flip_h or flip_v:
        out = _orient(out, rotate, flip_h, flip_v)
    return out


__all__: Sequence[str] = (
    "MAX_OUTPUT_SIDE",
    "apply_modality_lut",
    "apply_voi",
    "invert_monochrome1",
    "to_uint8",
    "axis_taps",
    "resample_reference",
    "render_frame",
    "render_frame_reference",
    "render_region",
    "parse_window",
    "parse_viewport",
    "plan_output",
    "display_window",
)
