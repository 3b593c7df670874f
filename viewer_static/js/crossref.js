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
