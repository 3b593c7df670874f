"""Volumes from series of slices, multiplanar reformatting (MPR) and 3D projections (MIP).

Index and patient space: ``vol.data[k, r, c]`` (z, y, x) is the voxel whose centre lies at

    origin + c*dx*row_dir + r*dy*col_dir + k*dz*normal        (patient LPS, mm)

where ``row_dir``/``col_dir`` are ImageOrientationPatient's two vectors, ``normal`` their
cross product, and slices are sorted by increasing position along ``normal``.

Plane names follow the volume's axes (for an axial acquisition they are the anatomical
planes): ``axial`` = a slice ``data[k]``; ``coronal`` = ``data[:, r, :]``; ``sagittal`` =
``data[:, :, c]``. Coronal and sagittal planes are shown head up (rows run towards -normal
when the normal points to the head, +z in LPS). Every plane is rendered with its physical
aspect ratio (a 2.5 mm slice is 2.5 mm tall on screen).
"""
from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from numba import njit

from .decode import DecodedImage, Window
from .errors import BadRenderParameter, FrameOutOfRange, VolumeError
from .pipeline import MAX_OUTPUT_SIDE, parse_window, plan_output, render_region

log = logging.getLogger(__name__)

PLANES = ("axial", "coronal", "sagittal", "oblique")
SLAB_MODES = ("mip", "minip", "avg")
_MODE_CODE = {"mip": 0, "minip": 1, "avg": 2}

ORIENTATION_TOLERANCE = 1e-3  # difference in direction cosines still called "the same"
SPACING_TOLERANCE = 1e-3  # relative
IRREGULAR_TOLERANCE = 0.05  # relative deviation of one slice gap from the median: flag
GAP_FACTOR = 1.5  # a gap this many median spacings wide means a missing slice: reject


_SAG_START_LOCK = threading.Lock()


@dataclass(eq=False)
class Volume:
    data: np.ndarray  # (z, y, x) int16 or float32 modality values (HU for CT)
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    origin: np.ndarray  # patient position of voxel (0, 0, 0)
    row_dir: np.ndarray  # direction of increasing x (column index)
    col_dir: np.ndarray  # direction of increasing y (row index)
    normal: np.ndarray  # direction of increasing z (slice index)
    default_window: Window = Window(40.0, 400.0)
    irregular: bool = False  # slice gaps vary more than IRREGULAR_TOLERANCE (but no gap)
    tilted: bool = False  # slice origins drift in-plane (gantry tilt): the volume is sheared
    min_value: float = 0.0
    slice_positions: np.ndarray | None = None  # sorted positions along the normal (mm)
    coarse: bool = False  # a quick preview volume (coarse_volume), not the series' own
    _sag: np.ndarray | None = field(default=None, repr=False)
    _sag_started: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        n = int(self.data.nbytes) + (0 if self._sag is None else int(self._sag.nbytes))
        for k, v in self.__dict__.items():
            if k.startswith("_pooled_"):
                n += v.nbytes
        return n

    def index_to_patient(self, k: float, r: float, c: float) -> np.ndarray:
        dz, dy, dx = self.spacing
        return self.origin + c * dx * self.row_dir + r * dy * self.col_dir + k * dz * self.normal

    def patient_to_index(self, point: Sequence[float]) -> np.ndarray:
        """(k, r, c) float indices of a patient-space point."""
        d = np.asarray(point, dtype=np.float64) - self.origin
        dz, dy, dx = self.spacing
        return np.array([d @ self.normal / dz, d @ self.col_dir / dy, d @ self.row_dir / dx])

    @property
    def sagittal_data(self) -> np.ndarray:
        """(x, z, y) C-contiguous copy, built once on first use (sagittal planes read rows)."""
        if self._sag is None:
            with self._lock:
                if self._sag is None:
                    sag = np.empty((self.data.shape[2], self.data.shape[0], self.data.shape[1]),
                                   self.data.dtype)
                    _transpose_zyx_to_xzy(self.data, sag)
                    self._sag = sag
        return self._sag

    def sagittal_copy(self) -> np.ndarray | None:
        """The sagittal copy if built; else None, and it is being built in the background
        (about 0.3 s for 220x512x512: the first sagittal plane does not wait for it)."""
        if self._sag is not None:
            return self._sag
        if self._sag_started:
            return None
        with _SAG_START_LOCK:    # not self._lock: the transpose holds that one
            start = not self._sag_started
            self._sag_started = True
        if start:
            _background().submit(lambda: self.sagittal_data)
        return None

    def pooled(self, mode: str) -> "Volume":
        """Half-resolution copy (2x2x2 blocks reduced by max/min/mean), built once per mode:
        anti-aliased input for small 3D projections (a max-pool keeps thin bright vessels)."""
        key = "_pooled_" + mode
        v = self.__dict__.get(key)
        if v is None:
            with self._lock:
                v = self.__dict__.get(key)
                if v is None:
                    nz, ny, nx = self.data.shape
                    out = np.empty(((nz + 1) // 2, (ny + 1) // 2, (nx + 1) // 2), np.float32)
                    _pool2(self.data, _MODE_CODE[mode], out)
                    dz, dy, dx = self.spacing
                    v = Volume(out, (dz * 2, dy * 2, dx * 2),
                               self.index_to_patient(0.5, 0.5, 0.5), self.row_dir, self.col_dir,
                               self.normal, self.default_window, min_value=self.min_value)
                    self.__dict__[key] = v
        return v

    @property
    def head_up(self) -> bool:
        """Show coronal/sagittal planes with decreasing slice index downwards."""
        return bool(self.normal[2] >= 0)


# =========================================================================== assembly


@njit(nogil=True, cache=True)
def _minmax(a):
    lo = a.flat[0]
    hi = a.flat[0]
    for v in a.flat:
        if v < lo:
            lo = v
        elif v > hi:
            hi = v
    return lo, hi


@njit(nogil=True, cache=True)
def _rescale_into(src, slope, intercept, out):
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            out[i, j] = src[i, j] * slope + intercept


@njit(nogil=True, cache=True)
def _transpose_zyx_to_xzy(src, out):
    """out[x, z, y] = src[z, y, x], in 32x32 tiles so both sides stay in cache."""
    nz, ny, nx = src.shape
    B = 32
    for z in range(nz):
        for y0 in range(0, ny, B):
            y1 = min(y0 + B, ny)
            for x0 in range(0, nx, B):
                x1 = min(x0 + B, nx)
                for x in range(x0, x1):
                    for y in range(y0, y1):
                        out[x, z, y] = src[z, y, x]


@njit(nogil=True, cache=True, inline="always")
def _fold_start(mode):
    """The empty projection: -inf for a maximum, +inf for a minimum, 0 for a sum."""
    if mode == 0:
        return -np.inf
    if mode == 1:
        return np.inf
    return 0.0


@njit(nogil=True, cache=True, inline="always")
def _fold(mode, acc, v):
    """One value into a projection: 0 maximum (MIP), 1 minimum (MinIP), 2 sum (average)."""
    if mode == 0:
        return max(acc, v)
    if mode == 1:
        return min(acc, v)
    return acc + v


@njit(nogil=True, cache=True)
def _pool2(src, mode, out):
    nz, ny, nx = src.shape
    for k in range(out.shape[0]):
        for r in range(out.shape[1]):
            for c in range(out.shape[2]):
                acc = _fold_start(mode)
                n = 0
                for a in range(2 * k, min(2 * k + 2, nz)):
                    for b in range(2 * r, min(2 * r + 2, ny)):
                        for e in range(2 * c, min(2 * c + 2, nx)):
                            acc = _fold(mode, acc, src[a, b, e])
                            n += 1
                out[k, r, c] = acc / n if mode == 2 else acc


def _slices(images: Sequence[DecodedImage]):
    for n, img in enumerate(images):
        if img.is_color:
            raise VolumeError(f"image {n} is colour ({img.photometric}); volumes need grey images")
        if img.positions is None or img.orientations is None:
            raise VolumeError(
                f"image {n} has no Image Position/Orientation (Patient); it cannot be placed "
                "in a volume"
            )
        if img.pixel_spacing is None:
            raise VolumeError(f"image {n} has no Pixel Spacing (0028,0030)")
        for f in range(img.frames):
            yield img, f


def build_volume(images: Sequence[DecodedImage], *, allow_irregular: bool = True) -> Volume:
    """Stack grey slices (single-frame images and/or multi-frame with per-frame positions).

    Raises VolumeError naming the reason: fewer than 2 slices, mixed sizes, orientations or
    pixel spacings, duplicate positions (several series or phases mixed), or a gap (missing
    slices). Small irregularities (< GAP_FACTOR) are flagged in ``Volume.irregular`` unless
    ``allow_irregular`` is False.
    """
    if not images:
        raise VolumeError("no images given: a volume needs at least 2 slices")
    items = list(_slices(images))
    if len(items) < 2:
        raise VolumeError("only one slice: a volume needs at least 2 slices")
    img0, _ = items[0]
    rows, cols = img0.rows, img0.cols
    iop0 = img0.orientations[0]
    sp0 = img0.pixel_spacing
    for img, f in items:
        if (img.rows, img.cols) != (rows, cols):
            raise VolumeError(
                f"mixed image sizes: {cols}x{rows} and {img.cols}x{img.rows}; the series "
                "mixes different acquisitions (scouts, reformats) and cannot form one volume"
            )
        if np.max(np.abs(img.orientations[f] - iop0)) > ORIENTATION_TOLERANCE:
            raise VolumeError(
                "mixed orientations: Image Orientation (Patient) "
                f"{np.round(iop0, 4).tolist()} vs {np.round(img.orientations[f], 4).tolist()}; "
                "choose slices of one orientation"
            )
        sp = img.pixel_spacing
        if abs(sp[0] - sp0[0]) > SPACING_TOLERANCE * sp0[0] or abs(sp[1] - sp0[1]) > SPACING_TOLERANCE * sp0[1]:
            raise VolumeError(f"mixed pixel spacings: {sp0} and {sp} mm")
    row_dir = np.asarray(iop0[:3], np.float64)
    col_dir = np.asarray(iop0[3:], np.float64)
    row_dir /= np.linalg.norm(row_dir)
    col_dir /= np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    nn = np.linalg.norm(normal)
    if nn < 1e-6:
        raise VolumeError("Image Orientation (Patient) row and column vectors are parallel")
    normal /= nn
    pos = np.array([img.positions[f] for img, f in items])
    d = pos @ normal
    order = np.argsort(d, kind="stable")
    d = d[order]
    gaps = np.diff(d)
    dy, dx = float(sp0[0]), float(sp0[1])
    if np.any(gaps < 1e-3 * min(dx, dy)):
        i = int(np.argmin(gaps))
        raise VolumeError(
            f"two slices share the position {d[i]:.3f} mm along the normal; the series holds "
            "several phases, echoes or duplicates: split it before building a volume"
        )
    dz = float(np.median(gaps))
    irregular = bool(np.max(np.abs(gaps - dz)) > IRREGULAR_TOLERANCE * dz)
    if np.any(gaps > GAP_FACTOR * dz):
        i = int(np.argmax(gaps))
        raise VolumeError(
            f"gap in the series: {gaps[i]:.2f} mm between slices at {d[i]:.2f} and "
            f"{d[i + 1]:.2f} mm (usual spacing {dz:.2f} mm); slices are missing, send the "
            "complete series"
        )
    if irregular and not allow_irregular:
        raise VolumeError(f"irregular slice spacing ({gaps.min():.3f}..{gaps.max():.3f} mm)")
    p_sorted = pos[order]
    inplane = (p_sorted - p_sorted[0]) - np.outer(d - d[0], normal)
    tilted = bool(np.max(np.linalg.norm(inplane, axis=1)) > 0.01 * min(dx, dy) * 10)

    # value range -> int16 when exact, else float32
    sorted_items = [items[i] for i in order]
    exact = True
    lo, hi = np.inf, -np.inf
    for img, f in sorted_items:
        if img.modality_lut is not None:
            exact = exact and img.modality_lut.data.max() < 32768
            lo, hi = min(lo, 0), max(hi, float(img.modality_lut.data.max()))
            continue
        s, b = img.rescale(f)
        a, z = _minmax(img.pixels[f])
        v1, v2 = float(a) * s + b, float(z) * s + b
        lo, hi = min(lo, v1, v2), max(hi, v1, v2)
        if s != int(s) or b != int(b):
            exact = False
    dtype = np.int16 if exact and lo >= -32768 and hi <= 32767 else np.float32
    data = np.empty((len(sorted_items), rows, cols), dtype)
    for k, (img, f) in enumerate(sorted_items):
        if img.modality_lut is not None:
            data[k] = img.modality_lut.apply(img.pixels[f])
            continue
        s, b = img.rescale(f)
        if s == 1.0 and b == 0.0 and img.pixels.dtype == dtype:
            data[k] = img.pixels[f]
        else:
            _rescale_into(img.pixels[f], float(s), float(b), data[k])
    mid_img, mid_f = sorted_items[len(sorted_items) // 2]
    win = mid_img.window(mid_f) or mid_img.default_window
    return Volume(
        data=data,
        spacing=(dz, dy, dx),
        origin=p_sorted[0].copy(),
        row_dir=row_dir,
        col_dir=col_dir,
        normal=normal,
        default_window=win,
        irregular=irregular,
        tilted=tilted,
        min_value=float(lo),
        slice_positions=d,
    )


@njit(nogil=True, cache=True)
def _pool_inplane(src, is_int, out):
    """out[k, r, c] = mean of src[k, 2r:2r+2, 2c:2c+2] (rounded half up for integer out)."""
    nz, ny, nx = src.shape
    for k in range(out.shape[0]):
        for r in range(out.shape[1]):
            for c in range(out.shape[2]):
                acc = 0.0
                n = 0
                for b in range(2 * r, min(2 * r + 2, ny)):
                    for e in range(2 * c, min(2 * c + 2, nx)):
                        acc += src[k, b, e]
                        n += 1
                v = acc / n
                out[k, r, c] = math.floor(v + 0.5) if is_int else v


COARSE_SLICES = 96  # a coarse volume reads about this many slices (every 2nd one at least)


def coarse_subset(n: int) -> list[int]:
    """Which of n slices (in series order) a coarse volume reads: every second one (every
    third for 193..288 slices, and so on: about COARSE_SLICES), and the last, so the coarse
    volume spans the same extent."""
    idx = list(range(0, n, max(2, -(-n // COARSE_SLICES))))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    return idx


def coarse_volume(images: Sequence[DecodedImage]) -> Volume:
    """A quick preview volume from a subset of slices (:func:`coarse_subset`): built like
    :func:`build_volume` (same checks, irregular spacing allowed) and then averaged 2x2
    in-plane, so it is an eighth of the full volume or less. Its voxel (0, 0, 0) is centred
    between the first four pixels of the first slice; ``coarse`` is True."""
    full = build_volume(images, allow_irregular=True)
    nz, ny, nx = full.data.shape
    if ny < 4 or nx < 4:
        full.coarse = True
        return full
    out = np.empty((nz, (ny + 1) // 2, (nx + 1) // 2), full.data.dtype)
    _pool_inplane(full.data, full.data.dtype.kind in "iu", out)
    dz, dy, dx = full.spacing
    return Volume(out, (dz, dy * 2, dx * 2), full.index_to_patient(0, 0.5, 0.5), full.row_dir,
                  full.col_dir, full.normal, full.default_window, irregular=full.irregular,
                  tilted=full.tilted, min_value=full.min_value,
                  slice_positions=full.slice_positions, coarse=True)


def volume_from_array(data: np.ndarray, spacing=(1.0, 1.0, 1.0), *, origin=(0.0, 0.0, 0.0),
                      orientation=(1, 0, 0, 0, 1, 0), window: Window | None = None) -> Volume:
    """Wrap a (z, y, x) array (e.g. synthetic test data) as a Volume."""
    iop = np.asarray(orientation, np.float64)
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row_dir, col_dir)
    data = np.ascontiguousarray(data)
    lo, hi = float(data.min()), float(data.max())
    return Volume(
        data=data, spacing=tuple(float(s) for s in spacing), origin=np.asarray(origin, float),
        row_dir=row_dir, col_dir=col_dir, normal=normal / np.linalg.norm(normal),
        default_window=window or Window((lo + hi) / 2 + 0.5, max(hi - lo + 1, 1.0)),
        min_value=lo,
    )


# =========================================================================== geometry


@dataclass
class PlaneGeometry:
    """Where a rendered plane lies in patient space.

    ``top_left`` is the patient position (mm) of the centre of the first *native* pixel;
    ``row_vector`` points along increasing output column, ``column_vector`` along increasing
    output row (unit vectors); ``pixel_spacing`` is (row, column) mm at native size and
    ``output_pixel_spacing`` the same for the requested viewport. Cross-reference lines and
    linked viewports can be computed from these alone.
    """

    plane: str
    index: int | None
    rows: int  # native
    cols: int
    top_left: np.ndarray
    row_vector: np.ndarray
    column_vector: np.ndarray
    normal: np.ndarray
    pixel_spacing: tuple[float, float]
    center: np.ndarray
    output_size: tuple[int, int] = (0, 0)  # (width, height) for the viewport asked
    output_pixel_spacing: tuple[float, float] = (0.0, 0.0)

    def pixel_to_patient(self, row: float, col: float) -> np.ndarray:
        """Patient position of a native pixel (row, col)."""
        return (self.top_left + col * self.pixel_spacing[1] * self.row_vector
                + row * self.pixel_spacing[0] * self.column_vector)

    def as_dict(self) -> dict[str, Any]:
        return {
            "plane": self.plane,
            "index": self.index,
            "rows": self.rows,
            "cols": self.cols,
            "top_left": [float(v) for v in self.top_left],
            "row_vector": [float(v) for v in self.row_vector],
            "column_vector": [float(v) for v in self.column_vector],
            "normal": [float(v) for v in self.normal],
            "pixel_spacing": list(self.pixel_spacing),
            "center": [float(v) for v in self.center],
            "output_size": list(self.output_size),
            "output_pixel_spacing": list(self.output_pixel_spacing),
        }


def _plane_axis(plane: str) -> int:
    return {"axial": 0, "coronal": 1, "sagittal": 2}[plane]


def _check_plane(plane: Any) -> str:
    p = str(plane).strip().lower()
    if p not in PLANES:
        raise BadRenderParameter(f"plane {plane!r} is unknown; use one of {', '.join(PLANES)}")
    return p


def _angle(v: Any, name: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise BadRenderParameter(f"{name} must be a number of degrees, got {v!r}") from None
    if not math.isfinite(f):
        raise BadRenderParameter(f"{name} must be finite, got {v!r}")
    return f


def _resolve_index(vol: Volume, axis: int, position_mm: Any, index: Any) -> int:
    n = vol.data.shape[axis]
    if index is not None:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise BadRenderParameter(f"index must be an integer, got {index!r}")
        i = int(index)
    elif position_mm is None:
        i = (n - 1) // 2
    else:
        ijk = _position_to_index(vol, position_mm, axis)
        i = int(math.floor(ijk + 0.5))
    if not 0 <= i < n:
        raise FrameOutOfRange(f"plane index {i} is outside the volume (0..{n - 1} on this axis)")
    return i


def _position_to_index(vol: Volume, position_mm: Any, axis: int) -> float:
    """A scalar is mm from the first voxel along the axis; a 3-vector a patient point."""
    if np.ndim(position_mm) == 0:
        try:
            v = float(position_mm)
        except (TypeError, ValueError):
            raise BadRenderParameter(f"position must be mm or a 3D point, got {position_mm!r}") from None
        if not math.isfinite(v):
            raise BadRenderParameter("position must be finite")
        return v / vol.spacing[axis]
    p = np.asarray(position_mm, dtype=np.float64).ravel()
    if p.size != 3 or not np.all(np.isfinite(p)):
        raise BadRenderParameter(f"position must be mm or a 3D point (x,y,z), got {position_mm!r}")
    return float(vol.patient_to_index(p)[axis])


def _ortho_geometry(vol: Volume, plane: str, i: int) -> PlaneGeometry:
    nz, ny, nx = vol.data.shape
    dz, dy, dx = vol.spacing
    up = vol.head_up
    if plane == "axial":
        tl = vol.index_to_patient(i, 0, 0)
        rv, cv, nv, sp, rows, cols = vol.row_dir, vol.col_dir, vol.normal, (dy, dx), ny, nx
    elif plane == "coronal":
        tl = vol.index_to_patient(nz - 1 if up else 0, i, 0)
        rv, cv, nv = vol.row_dir, (-vol.normal if up else vol.normal), vol.col_dir
        sp, rows, cols = (dz, dx), nz, nx
    else:
        tl = vol.index_to_patient(nz - 1 if up else 0, 0, i)
        rv, cv, nv = vol.col_dir, (-vol.normal if up else vol.normal), vol.row_dir
        sp, rows, cols = (dz, dy), nz, ny
    center = tl + (cols - 1) / 2 * sp[1] * rv + (rows - 1) / 2 * sp[0] * cv
    return PlaneGeometry(plane, i, rows, cols, tl, rv.copy(), cv.copy(), nv.copy(), sp, center)


def _oblique_frame(yaw: float, pitch: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit u (columns), v (rows), n in the volume's (x, y, z) axes. yaw=pitch=0: axial."""
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    u = np.array([cy, sy, 0.0])
    v0 = np.array([-sy, cy, 0.0])
    n0 = np.array([0.0, 0.0, 1.0])
    v = v0 * cp + n0 * sp
    n = -v0 * sp + n0 * cp
    return u, v, n


def _oblique_setup(vol: Volume, position_mm: Any, index: Any, yaw: float, pitch: float):
    nz, ny, nx = vol.data.shape
    dz, dy, dx = vol.spacing
    u, v, n = _oblique_frame(yaw, pitch)
    L = np.array([nx * dx, ny * dy, nz * dz])  # extents in the volume's x, y, z (mm)
    C = np.array([(nx - 1) / 2 * dx, (ny - 1) / 2 * dy, (nz - 1) / 2 * dz])
    if index is not None:
        k = _resolve_index(vol, 0, None, index)
        P = np.array([C[0], C[1], k * dz])
    elif position_mm is None:
        P = C.copy()
    elif np.ndim(position_mm) == 0:
        off = _position_to_index(vol, position_mm, 0)  # validated scalar
        P = C + (off * dz - C[2]) * n  # scalar: mm along the plane normal, from the origin
    else:
        kij = _position_to_index(vol, position_mm, 0), _position_to_index(vol, position_mm, 1), \
            _position_to_index(vol, position_mm, 2)
        P = np.array([kij[2] * dx, kij[1] * dy, kij[0] * dz])
    Cp = C - ((C - P) @ n) * n
    ds = min(dx, dy)
    ext_u = float(np.abs(u) @ L)
    ext_v = float(np.abs(v) @ L)
    nu = int(min(MAX_OUTPUT_SIDE, max(1, round(ext_u / ds))))
    nv = int(min(MAX_OUTPUT_SIDE, max(1, round(ext_v / ds))))
    tl = Cp - (nu - 1) / 2 * ds * u - (nv - 1) / 2 * ds * v
    return u, v, n, tl, ds, nu, nv


def _xyz_to_patient(vol: Volume, p: np.ndarray) -> np.ndarray:
    return vol.origin + p[0] * vol.row_dir + p[1] * vol.col_dir + p[2] * vol.normal


def _dir_to_patient(vol: Volume, d: np.ndarray) -> np.ndarray:
    return d[0] * vol.row_dir + d[1] * vol.col_dir + d[2] * vol.normal


def plane_geometry(vol: Volume, plane: str, position_mm: Any = None, *, index: Any = None,
                   yaw: float = 0.0, pitch: float = 0.0, viewport: Any = None) -> PlaneGeometry:
    """Patient-space geometry of the plane :func:`mpr_plane` renders with the same arguments."""
    plane = _check_plane(plane)
    if plane == "oblique":
        u, v, n, tl, ds, nu, nv = _oblique_setup(vol, position_mm, index,
                                                 _angle(yaw, "yaw"), _angle(pitch, "pitch"))
        c = tl + (nu - 1) / 2 * ds * u + (nv - 1) / 2 * ds * v
        g = PlaneGeometry("oblique", None, nv, nu, _xyz_to_patient(vol, tl),
                          _dir_to_patient(vol, u), _dir_to_patient(vol, v),
                          _dir_to_patient(vol, n), (ds, ds), _xyz_to_patient(vol, c))
    else:
        i = _resolve_index(vol, _plane_axis(plane), position_mm, index)
        g = _ortho_geometry(vol, plane, i)
    _, ow, oh = plan_output(g.cols, g.rows, viewport, 0, g.pixel_spacing[0] / g.pixel_spacing[1])
    g.output_size = (ow, oh)
    g.output_pixel_spacing = (g.rows * g.pixel_spacing[0] / oh, g.cols * g.pixel_spacing[1] / ow)
    return g


# =========================================================================== MPR


@njit(nogil=True, cache=True, inline="always")
def _trilinear(data, k, r, c, fill):
    nz, ny, nx = data.shape
    if k < 0.0 or r < 0.0 or c < 0.0 or k > nz - 1 or r > ny - 1 or c > nx - 1:
        return fill
    k0 = min(int(k), nz - 2) if nz > 1 else 0
    r0 = min(int(r), ny - 2) if ny > 1 else 0
    c0 = min(int(c), nx - 2) if nx > 1 else 0
    fk = k - k0
    fr = r - r0
    fc = c - c0
    k1 = min(k0 + 1, nz - 1)
    r1 = min(r0 + 1, ny - 1)
    c1 = min(c0 + 1, nx - 1)
    a = data[k0, r0, c0] * (1 - fc) + data[k0, r0, c1] * fc
    b = data[k0, r1, c0] * (1 - fc) + data[k0, r1, c1] * fc
    e = data[k1, r0, c0] * (1 - fc) + data[k1, r0, c1] * fc
    f = data[k1, r1, c0] * (1 - fc) + data[k1, r1, c1] * fc
    return (a * (1 - fr) + b * fr) * (1 - fk) + (e * (1 - fr) + f * fr) * fk


@njit(nogil=True, cache=True)
def _inner_span(p, d, hi, nu):
    """Pixels j (a..b inclusive) whose coordinate p + j*d lies strictly inside (0, hi),
    with a pixel to spare at each end."""
    eps = 1e-6
    if abs(d) < 1e-12:
        if p <= eps or p >= hi - eps:
            return 1, 0
        return 0, nu - 1
    lo = (eps - p) / d
    up = (hi - eps - p) / d
    if lo > up:
        lo, up = up, lo
    return int(math.ceil(max(0.0, lo))) + 1, int(math.floor(min(nu - 1.0, up))) - 1


@njit(nogil=True, cache=True)
def oblique_kernel(data, p0, du, dv, dn, nslab, mode, fill, row0, row1, out):
    """Sample a (thick) plane by trilinear interpolation. Positions are (k, r, c) indices:
    pixel (i, j), slab sample s -> p0 + i*dv + j*du + (s - (nslab-1)/2)*dn; rows
    row0..row1-1. A thin plane's pixels well inside the volume skip the bounds checks
    (the same arithmetic as _trilinear, so the same values)."""
    nz, ny, nx = data.shape
    nu = out.shape[1]
    half = (nslab - 1) / 2.0
    for i in range(row0, row1):
        if nslab != 1:
            for j in range(nu):
                acc = _fold_start(mode)
                cnt = 0
                for s in range(nslab):
                    t = s - half
                    k = p0[0] + i * dv[0] + j * du[0] + t * dn[0]
                    r = p0[1] + i * dv[1] + j * du[1] + t * dn[1]
                    c = p0[2] + i * dv[2] + j * du[2] + t * dn[2]
                    acc = _fold(mode, acc, _trilinear(data, k, r, c, fill))
                    cnt += 1
                if mode == 2:
                    acc /= cnt
                out[i, j] = acc
            continue
        t = 0.0 - half
        ja, jb = 1, 0
        if nz > 1 and ny > 1 and nx > 1:
            ja, jb = _inner_span(p0[0] + i * dv[0] + t * dn[0], du[0], nz - 1.0, nu)
            a, b = _inner_span(p0[1] + i * dv[1] + t * dn[1], du[1], ny - 1.0, nu)
            ja, jb = max(ja, a), min(jb, b)
            a, b = _inner_span(p0[2] + i * dv[2] + t * dn[2], du[2], nx - 1.0, nu)
            ja, jb = max(ja, a), min(jb, b)
        for j in range(nu):
            k = p0[0] + i * dv[0] + j * du[0] + t * dn[0]
            r = p0[1] + i * dv[1] + j * du[1] + t * dn[1]
            c = p0[2] + i * dv[2] + j * du[2] + t * dn[2]
            if j < ja or j > jb:
                v = _trilinear(data, k, r, c, fill)
            else:
                k0 = int(k)
                r0 = int(r)
                c0 = int(c)
                fk = k - k0
                fr = r - r0
                fc = c - c0
                k1 = k0 + 1
                r1 = r0 + 1
                c1 = c0 + 1
                a_ = data[k0, r0, c0] * (1 - fc) + data[k0, r0, c1] * fc
                b_ = data[k0, r1, c0] * (1 - fc) + data[k0, r1, c1] * fc
                e_ = data[k1, r0, c0] * (1 - fc) + data[k1, r0, c1] * fc
                f_ = data[k1, r1, c0] * (1 - fc) + data[k1, r1, c1] * fc
                v = (a_ * (1 - fr) + b_ * fr) * (1 - fk) + (e_ * (1 - fr) + f_ * fr) * fk
            out[i, j] = v


def _check_slab(slab_mm: Any, slab_mode: Any) -> tuple[float, str]:
    try:
        s = float(slab_mm or 0.0)
    except (TypeError, ValueError):
        raise BadRenderParameter(f"slab_mm must be a number, got {slab_mm!r}") from None
    if not math.isfinite(s) or s < 0:
        raise BadRenderParameter(f"slab_mm must be >= 0, got {slab_mm!r}")
    m = str(slab_mode).strip().lower()
    if m not in SLAB_MODES:
        raise BadRenderParameter(f"slab_mode {slab_mode!r} is unknown; use mip, minip or avg")
    return s, m


def _reduce(block: np.ndarray, axis: int, mode: str) -> np.ndarray:
    if mode == "mip":
        return block.max(axis=axis)
    if mode == "minip":
        return block.min(axis=axis)
    return block.mean(axis=axis, dtype=np.float32)


def mpr_image(vol: Volume, plane: str, position_mm: Any = None, *, index: Any = None,
              slab_mm: float = 0.0, slab_mode: str = "mip", yaw: float = 0.0,
              pitch: float = 0.0) -> tuple[np.ndarray, PlaneGeometry]:
    """The plane's modality values at native resolution (2D array) and its geometry."""
    plane = _check_plane(plane)
    slab, mode = _check_slab(slab_mm, slab_mode)
    geo = plane_geometry(vol, plane, position_mm, index=index, yaw=yaw, pitch=pitch)
    if plane == "oblique":
        dz, dy, dx = vol.spacing
        u, v, n, tl, ds, nu, nv = _oblique_setup(vol, position_mm, index, float(yaw), float(pitch))
        scale = np.array([1 / dz, 1 / dy, 1 / dx])
        to_idx = lambda p: np.array([p[2], p[1], p[0]]) * scale  # noqa: E731 (x,y,z)->(k,r,c)
        nslab = max(1, int(round(slab / ds))) if slab > 0 else 1
        out = np.empty((nv, nu), np.float32)
        args = (vol.data, to_idx(tl), to_idx(u * ds), to_idx(v * ds), to_idx(n * ds),
                nslab, _MODE_CODE[mode], float(vol.min_value))
        oblique_kernel(*args, 0, nv, out)   # ~4 ms: handing bands to threads costs more
        return out, geo
    axis = _plane_axis(plane)
    i = geo.index
    n = vol.data.shape[axis]
    w = max(1, int(round(slab / vol.spacing[axis]))) if slab > 0 else 1
    i0 = max(0, i - w // 2)
    i1 = min(n, i0 + w)
    up = vol.head_up
    if plane == "axial":
        img = vol.data[i] if w == 1 else _reduce(vol.data[i0:i1], 0, mode)
    elif plane == "coronal":
        img = vol.data[:, i, :] if w == 1 else _reduce(vol.data[:, i0:i1, :], 1, mode)
        img = img[::-1] if up else img
    else:
        sag = vol.sagittal_copy()
        if sag is None:     # read across the rows meanwhile (same values, a strided read)
            img = vol.data[:, :, i] if w == 1 else _reduce(vol.data[:, :, i0:i1], 2, mode)
        else:
            img = sag[i] if w == 1 else _reduce(sag[i0:i1], 0, mode)
        img = img[::-1] if up else img
    return img, geo


def mpr_plane(vol: Volume, plane: str, position_mm: Any = None, *, index: Any = None,
              window: Any = None, viewport: Any = None, slab_mm: float = 0.0,
              slab_mode: str = "mip", yaw: float = 0.0, pitch: float = 0.0,
              invert: bool = False) -> np.ndarray:
    """Render an MPR plane to uint8 with its physical aspect ratio.

    position_mm: None (centre) | mm along the plane's axis from the first voxel | an (x,y,z)
    patient point the plane passes through. index: slice index on the plane's axis instead.
    oblique: the axial plane turned by ``yaw`` about the slice normal, then ``pitch`` about
    its new row direction, through the point; trilinear sampling.
    """
    win = parse_window(window) or vol.default_window
    img, geo = mpr_image(vol, plane, position_mm, index=index, slab_mm=slab_mm,
                         slab_mode=slab_mode, yaw=yaw, pitch=pitch)
    aspect = geo.pixel_spacing[0] / geo.pixel_spacing[1]
    region, ow, oh = plan_output(img.shape[1], img.shape[0], viewport, 0, aspect)
    return render_region(img, region, ow, oh, window=win, invert=invert)


# =========================================================================== MIP (3D)

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
MIP_THREADS = 2
MIP_BLOCKS_MIN_PIXELS = 128 * 128   # smaller projections skip no blocks (not worth building)


_BACKGROUND: ThreadPoolExecutor | None = None


def _background() -> ThreadPoolExecutor:
    """One thread for copies built ahead of need (sagittal), not queued before 3D bands."""
    global _BACKGROUND
    with _POOL_LOCK:
        if _BACKGROUND is None:
            _BACKGROUND = ThreadPoolExecutor(1, thread_name_prefix="render-copy")
        return _BACKGROUND


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(MIP_THREADS, thread_name_prefix="render-mip")
        return _POOL


def _in_bands(kernel, args, nv: int, work_per_row: int, out) -> None:
    """kernel(*args, row0, row1, out) over all nv rows: in bands on the MIP threads when
    there is enough work (a 512² plane or projection), else here."""
    if nv >= 64 and MIP_THREADS > 1 and nv * work_per_row >= 1 << 17:
        bands = np.linspace(0, nv, MIP_THREADS * 4 + 1).astype(int)
        futs = [_pool().submit(kernel, *args, int(a), int(b), out)
                for a, b in zip(bands[:-1], bands[1:]) if b > a]
        for f in futs:
            f.result()
    else:
        kernel(*args, 0, nv, out)


@njit(nogil=True, cache=True, inline="always")
def _ray_clip(sk, sr, sc, dd, nsteps, hi_k, hi_r, hi_c):
    """[ta, tb]: the samples t of the ray s + t*dd (t in 0..nsteps-1) inside the box
    (slab method); tb < ta when the ray misses it."""
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
    return int(math.ceil(t0 - 1e-9)), int(math.floor(t1 + 1e-9))


@njit(nogil=True, cache=True)
def mip_kernel(data, blocks, shift, p0, du, dv, dd, nsteps, mode, fill, lo_sat, hi_sat,
               row0, row1, out):
    """Ray casting in index space (k, r, c): ray of pixel (i, j) starts at p0 + i*dv + j*du
    and advances by dd for nsteps samples; only the part inside the volume is sampled.
    mode 0 max, 1 min, 2 mean of inside samples.

    Exact shortcuts for the windowed image (mode 0/1): ``blocks`` (2, bz, by, bx) holds each
    2**shift block's min/max including the voxel beyond it (all a trilinear sample in the
    block reads); a block that cannot raise the maximum above max(running maximum, lo_sat)
    is jumped over, and a ray stops once its maximum reaches hi_sat (values <= lo_sat all
    show black, >= hi_sat all white; +-inf: no such bound). Mirrored for the minimum. An
    empty ``blocks`` (bz == 0) disables the jumps."""
    nz, ny, nx = data.shape
    hi_k = nz - 1.0
    hi_r = ny - 1.0
    hi_c = nx - 1.0
    nu = out.shape[1]
    B = 1 << shift
    skip = mode != 2 and blocks.shape[1] > 0
    for i in range(row0, row1):
        for j in range(nu):
            sk = p0[0] + i * dv[0] + j * du[0]
            sr = p0[1] + i * dv[1] + j * du[1]
            sc = p0[2] + i * dv[2] + j * du[2]
            ta, tb = _ray_clip(sk, sr, sc, dd, nsteps, hi_k, hi_r, hi_c)
            if tb < ta:
                out[i, j] = fill
                continue
            acc = _fold_start(mode)
            if not skip:
                for t in range(ta, tb + 1):
                    acc = _fold(mode, acc, _trilinear(data, sk + t * dd[0], sr + t * dd[1],
                                                      sc + t * dd[2], fill))
                if mode == 2:
                    acc /= tb - ta + 1
                out[i, j] = acc
                continue
            t = ta
            while t <= tb:
                k = sk + t * dd[0]
                r = sr + t * dd[1]
                c = sc + t * dd[2]
                kc = min(max(k, 0.0), hi_k)
                rc = min(max(r, 0.0), hi_r)
                cc = min(max(c, 0.0), hi_c)
                bk = int(kc) >> shift
                br = int(rc) >> shift
                bc = int(cc) >> shift
                if mode == 0:
                    jump = blocks[1, bk, br, bc] <= max(acc, lo_sat)
                else:
                    jump = blocks[0, bk, br, bc] >= min(acc, hi_sat)
                if jump:
                    # to the first sample past this block
                    te = 1e30
                    for ax in range(3):
                        if ax == 0:
                            p, d = kc, dd[0]
                        elif ax == 1:
                            p, d = rc, dd[1]
                        else:
                            p, d = cc, dd[2]
                        base = (int(p) >> shift) * B
                        if d > 1e-12:
                            te = min(te, (base + B - p) / d)
                        elif d < -1e-12:
                            te = min(te, (base - p) / d)
                    t = max(t + 1, int(t + te) + 1)
                    continue
                acc = _fold(mode, acc, _trilinear(data, k, r, c, fill))
                if (mode == 0 and acc >= hi_sat) or (mode == 1 and acc <= lo_sat):
                    break
                t += 1
            if mode == 0 and acc == -np.inf:
                acc = lo_sat         # every block jumped: all at or below the black level
            elif mode == 1 and acc == np.inf:
                acc = hi_sat
            out[i, j] = acc


def _saturation(win: Window) -> tuple[float, float]:
    """Values at or below lo all show black, at or above hi white (pipeline's LINEAR and
    LINEAR_EXACT windows); (-inf, inf) for other window functions."""
    c, w = float(win.center), float(win.width)
    if win.function == "LINEAR":
        c, w = c - 0.5, w - 1.0
    elif win.function != "LINEAR_EXACT":
        return -math.inf, math.inf
    if not w > 0:
        return -math.inf, math.inf
    return c - w / 2.0, c + w / 2.0


_NO_BLOCKS = np.zeros((2, 0, 0, 0), np.float32)


def mip_projection(vol: Volume, yaw_deg: float = 0.0, pitch_deg: float = 0.0, size: int = 256,
                   *, window: Any = None, mode: str = "mip", fixed_scale: bool = True,
                   invert: bool = False) -> np.ndarray:
    """3D projection (MIP/MinIP/average) rotated about the volume centre, uint8.

    yaw 0 / pitch 0 looks along +y (the volume's rows: anterior->posterior for an axial
    LPS series), head up, x to the right: equal to ``data.max(axis=1)`` shown like a coronal
    plane. ``yaw`` turns about the slice normal, ``pitch`` tilts about the screen's
    horizontal. ``size`` is the longest output side. fixed_scale keeps the same mm per pixel
    for every angle (the bounding box diagonal fits), so a rotating preview does not zoom.
    Rays sample every min(spacing) mm, trilinear, physically correct aspect.
    """
    yaw, pitch = _angle(yaw_deg, "yaw"), _angle(pitch_deg, "pitch")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= MAX_OUTPUT_SIDE:
        raise BadRenderParameter(f"size must be an integer 1..{MAX_OUTPUT_SIDE}, got {size!r}")
    m = str(mode).strip().lower()
    if m not in SLAB_MODES:
        raise BadRenderParameter(f"mode {mode!r} is unknown; use mip, minip or avg")
    win = parse_window(window) or vol.default_window
    nz, ny, nx = vol.data.shape
    dz, dy, dx = vol.spacing
    up = 1.0 if vol.head_up else -1.0
    # base frame in volume (x, y, z): screen right u, screen down v, ray d
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
        # small preview: sample a max/min/mean-pooled half-resolution copy (built once);
        # its voxel 0 is centred half a full-resolution voxel in
        C = C - 0.5 * np.array([dx, dy, dz])
        vol = vol.pooled(m)
        nz, ny, nx = vol.data.shape
        dz, dy, dx = vol.spacing
    nu = max(1, int(round(ext_u / s)))
    nv = max(1, int(round(ext_v / s)))
    step = min(dx, dy, dz)
    nsteps = max(1, int(round(ext_d / step)))
    start = C - (nu - 1) / 2 * s * u - (nv - 1) / 2 * s * v - (nsteps - 1) / 2 * step * d
    scale = np.array([1 / dz, 1 / dy, 1 / dx])
    to_idx = lambda p: np.array([p[2], p[1], p[0]]) * scale  # noqa: E731
    out = np.empty((nv, nu), np.float32)
    lo_sat, hi_sat = _saturation(win)
    if m == "avg" or nv * nu < MIP_BLOCKS_MIN_PIXELS:
        blocks, shift = _NO_BLOCKS, 3
    else:
        from .vr import BLOCK_SHIFT, block_minmax
        blocks, shift = block_minmax(vol), BLOCK_SHIFT
    args = (vol.data, blocks, shift, to_idx(start), to_idx(u * s), to_idx(v * s),
            to_idx(d * step), nsteps, _MODE_CODE[m], float(vol.min_value), lo_sat, hi_sat)
    _in_bands(mip_kernel, args, nv, nu * nsteps, out)
    return render_region(out, (0.0, 0.0, float(nu), float(nv)), nu, nv, window=win,
                         invert=invert)


def warm_up_mpr() -> None:
    """Load the render kernels' variants MPR planes use (a strided or reversed int16 plane,
    float32 slabs and oblique planes), so the first planes of a server do not pay for them
    (about 0.15 s each)."""
    vol = volume_from_array(np.zeros((8, 16, 16), np.int16), (2.0, 1.0, 1.0))
    for plane in ("axial", "coronal", "sagittal"):
        mpr_plane(vol, plane, viewport=(32, 32), window=(40, 400))
        mpr_plane(vol, plane, viewport=(32, 32), window=(40, 400), slab_mm=4, slab_mode="avg")
    vol.sagittal_data
    mpr_plane(vol, "sagittal", viewport=(32, 32), window=(40, 400))
    mpr_plane(vol, "oblique", yaw=10, viewport=(32, 32), window=(40, 400))
    for dtype in (np.int16, np.float32):        # coarse volumes' in-plane averaging
        _pool_inplane(np.zeros((2, 4, 4), dtype), dtype is np.int16, np.empty((2, 2, 2), dtype))


__all__ = (
    "Volume",
    "PlaneGeometry",
    "build_volume",
    "coarse_volume",
    "coarse_subset",
    "volume_from_array",
    "mpr_plane",
    "mpr_image",
    "plane_geometry",
    "mip_projection",
    "PLANES",
)
