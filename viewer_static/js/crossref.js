// MPR cross-reference: patient point ↔ pixel of a plane image, and the line where another
// plane cuts this one. Uses the geometry endpoint's fields. Pure.
import { cross, dot } from './sync.js';

function sub(a, b) {
  return [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
}

/** Output-pixel spacing [row, col] of a geometry answer. */
function outSpacing(g) {
  return g.output_pixel_spacing || g.pixel_spacing;
}

/** Patient point (mm) → output image pixel (u right, v down). */
export function patientToPixel(g, p) {
  const d = sub(p, g.top_left);
  const sp = outSpacing(g);
  return { u: dot(d, g.row_vector) / sp[1], v: dot(d, g.column_vector) / sp[0] };
}

/** Output image pixel → patient point on the plane. */
export function pixelToPatient(g, u, v) {
  const sp = outSpacing(g);
  return [0, 1, 2].map((k) => g.top_left[k] + u * sp[1] * g.row_vector[k] + v * sp[0] * g.column_vector[k]);
}

/**
 * The line where plane `other` (through `point`) cuts plane `g`, as two end points in g's
 * output pixels spanning the image; null when the planes are parallel.
 */
export function crossLine(g, otherNormal, point) {
  const dir = cross(g.normal, otherNormal);
  if (Math.hypot(dir[0], dir[1], dir[2]) < 1e-6) return null;
  const sp = outSpacing(g);
  const du = dot(dir, g.row_vector) / sp[1];
  const dv = dot(dir, g.column_vector) / sp[0];
  const c = patientToPixel(g, point);
  const [w, h] = g.output_size;
  const t = (w + h) * 2 / Math.max(1e-9, Math.hypot(du, dv));
  return { x1: c.u - du * t, y1: c.v - dv * t, x2: c.u + du * t, y2: c.v + dv * t };
}

/** Move a point along a plane's normal by `mm`. */
export function stepAlong(point, normal, mm) {
  return [point[0] + normal[0] * mm, point[1] + normal[1] * mm, point[2] + normal[2] * mm];
}

// ------------------------------------------------------------ reference (localizer) lines
/** An image's plane from its header fields: {position (IPP, centre of the first pixel),
 *  orientation (IOP: row then column direction cosines), spacing [row, col] mm, rows, cols}. */
export function imagePlane(inst, shift) {
  if (!inst || !inst.image_position || !inst.image_orientation || inst.image_orientation.length < 6) return null;
  const o = inst.image_orientation;
  const s = shift || [0, 0, 0];
  return {
    position: [0, 1, 2].map((k) => inst.image_position[k] + s[k]),
    row: [o[0], o[1], o[2]], col: [o[3], o[4], o[5]],
    spacing: inst.pixel_spacing || [1, 1], rows: inst.rows, cols: inst.columns,
  };
}

/** Patient point → source pixel coordinates of a plane (the viewport's: pixel i spans
 *  [i, i + 1), its centre at i + 0.5). */
export function planePixel(pl, p) {
  const d = sub(p, pl.position);
  return { x: dot(d, pl.row) / pl.spacing[1] + 0.5, y: dot(d, pl.col) / pl.spacing[0] + 0.5 };
}

/** Source pixel → patient point. */
export function planePoint(pl, x, y) {
  return [0, 1, 2].map((k) => pl.position[k] + (x - 0.5) * pl.spacing[1] * pl.row[k] + (y - 0.5) * pl.spacing[0] * pl.col[k]);
}

function clipRange(t0, t1, a, b, lo, hi) {
  // keep the t where lo <= a + b t <= hi
  if (Math.abs(b) < 1e-12) return a >= lo - 1e-9 && a <= hi + 1e-9 ? [t0, t1] : null;
  let u = (lo - a) / b;
  let v = (hi - a) / b;
  if (u > v) [u, v] = [v, u];
  const r0 = Math.max(t0, u);
  const r1 = Math.min(t1, v);
  return r1 > r0 ? [r0, r1] : null;
}

/**
 * The reference line of image plane `src` on image plane `dst`: where the two planes cut,
 * clipped to both images' extents, as {x1, y1, x2, y2} in dst's source pixels; null when
 * the planes are parallel or do not cut within both images.
 */
export function referenceLine(dst, src, tol = 1e-3) {
  const nd = cross(dst.row, dst.col);
  const ns = cross(src.row, src.col);
  const dir = cross(nd, ns);
  const len = Math.hypot(dir[0], dir[1], dir[2]);
  if (len < tol) return null;
  const u = [dir[0] / len, dir[1] / len, dir[2] / len];
  // a point on both planes: in dst's plane, move from dst's origin along the in-plane
  // direction perpendicular to the line until src's plane equation holds
  const w = cross(nd, u); // in dst's plane, perpendicular to the line
  const denom = dot(w, ns);
  if (Math.abs(denom) < 1e-12) return null;
  const s = dot(sub(src.position, dst.position), ns) / denom;
  const p0 = [0, 1, 2].map((k) => dst.position[k] + w[k] * s);
  // p(t) = p0 + u t; clip t to dst's and src's pixel rectangles
  let r = [-1e9, 1e9];
  for (const [pl, cols, rows] of [[dst, dst.cols, dst.rows], [src, src.cols, src.rows]]) {
    const a = planePixel(pl, p0);
    const bx = dot(u, pl.row) / pl.spacing[1];
    const by = dot(u, pl.col) / pl.spacing[0];
    r = r && clipRange(r[0], r[1], a.x, bx, 0, cols);
    r = r && clipRange(r[0], r[1], a.y, by, 0, rows);
    if (!r) return null;
  }
  const e1 = planePixel(dst, [0, 1, 2].map((k) => p0[k] + u[k] * r[0]));
  const e2 = planePixel(dst, [0, 1, 2].map((k) => p0[k] + u[k] * r[1]));
  return { x1: e1.x, y1: e1.y, x2: e2.x, y2: e2.y };
}

/** A pane's manual offset (mm along `axis`, sync.js) as a vector in patient coordinates. */
export function offsetVector(offset, axis) {
  if (!offset || !axis) return [0, 0, 0];
  return [axis[0] * offset, axis[1] * offset, axis[2] * offset];
}

/** A patient point of one pane/exam in another's coordinates: both offsets are relative to
 *  a common frame (follower position = leader position − leader offset + follower offset). */
export function shiftPoint(p, fromOffset, toOffset) {
  return [0, 1, 2].map((k) => p[k] - fromOffset[k] + toOffset[k]);
}

// ------------------------------------------------------------ oblique MPR (rotated crosshair)
/** Degrees in (−180, 180]. */
export function wrapDeg(a) {
  const r = ((a % 360) + 360) % 360;
  return r > 180 ? r - 360 : r;
}

/**
 * The server's oblique plane (render/volume.py _oblique_frame: the axial plane turned by yaw
 * about the slice normal, then by pitch) for the coronal / sagittal plane of an MPR whose
 * crosshair is turned by `angle` degrees in the axial plane. headUp: the volume's slice index
 * runs towards the head (the orthogonal planes then show the head up, so must these).
 */
export function obliqueAngles(plane, angle, headUp) {
  const pitch = headUp ? -90 : 90;
  if (plane === 'coronal') return { yaw: wrapDeg(angle), pitch };
  if (plane === 'sagittal') return { yaw: wrapDeg(angle + 90), pitch };
  return null;
}

/** Screen angle (degrees, y down) of the pointer around a centre. */
export function pointerAngle(cx, cy, x, y) {
  return (Math.atan2(y - cy, x - cx) * 180) / Math.PI;
}
