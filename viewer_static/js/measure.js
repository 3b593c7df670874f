// Measurements, pixel-spacing aware. Pure: lengths, angles, Cobb angles, ellipse and
// rectangle areas and the statistics of the raw values inside them, labels.
// Image coordinates: x = column, y = row, continuous; pixel (i, j) covers [i, i+1) × [j, j+1).

/** Length in mm between two source-pixel points; spacing = [row, col] mm or null. */
export function lengthMm(p, q, spacing) {
  if (!spacing) return null;
  const dx = (q.x - p.x) * spacing[1];
  const dy = (q.y - p.y) * spacing[0];
  return Math.hypot(dx, dy);
}

export function lengthPx(p, q) {
  return Math.hypot(q.x - p.x, q.y - p.y);
}

/** Label: "12.3 mm", or "45 px" when the image has no pixel spacing. */
export function formatLength(p, q, spacing) {
  const mm = lengthMm(p, q, spacing);
  if (mm === null) return `${Math.round(lengthPx(p, q))} px`;
  return `${mm.toFixed(1)} mm`;
}

/** Points given as [x, y] or {x, y} → {x, y}. */
export function pt(p) {
  return Array.isArray(p) ? { x: p[0], y: p[1] } : p;
}

/** A vector between image points in physical units (mm; pixels without spacing). */
function vec(p, q, spacing) {
  const sx = spacing ? spacing[1] : 1;
  const sy = spacing ? spacing[0] : 1;
  return { x: (q.x - p.x) * sx, y: (q.y - p.y) * sy };
}

/** Angle at vertex b between rays b→a and b→c, degrees in [0, 180]; null when degenerate. */
export function angleDeg(a, b, c, spacing = null) {
  const u = vec(b, a, spacing);
  const v = vec(b, c, spacing);
  const nu = Math.hypot(u.x, u.y);
  const nv = Math.hypot(v.x, v.y);
  if (!nu || !nv) return null;
  const cos = Math.max(-1, Math.min(1, (u.x * v.x + u.y * v.y) / (nu * nv)));
  return (Math.acos(cos) * 180) / Math.PI;
}

/** Cobb angle: the angle between line p1p2 and line p3p4, degrees in [0, 90]. */
export function cobbDeg(p1, p2, p3, p4, spacing = null) {
  const u = vec(p1, p2, spacing);
  const v = vec(p3, p4, spacing);
  const nu = Math.hypot(u.x, u.y);
  const nv = Math.hypot(v.x, v.y);
  if (!nu || !nv) return null;
  const cos = Math.abs(u.x * v.x + u.y * v.y) / (nu * nv);
  return (Math.acos(Math.min(1, cos)) * 180) / Math.PI;
}

/** The axis-aligned box spanned by two corner points. */
export function box(a, b) {
  return { x0: Math.min(a.x, b.x), y0: Math.min(a.y, b.y), x1: Math.max(a.x, b.x), y1: Math.max(a.y, b.y) };
}

/** Area of the ellipse inscribed in the box a–b, or of the rectangle a–b: mm² with spacing,
 *  else px² (mm: false). */
export function shapeArea(kind, a, b, spacing) {
  const r = box(a, b);
  const w = (r.x1 - r.x0) * (spacing ? spacing[1] : 1);
  const h = (r.y1 - r.y0) * (spacing ? spacing[0] : 1);
  const area = kind === 'ellipse' ? (Math.PI * w * h) / 4 : w * h;
  return { area, mm: !!spacing };
}

/** Whether a point lies inside the shape (ellipse inscribed in the box, or the box). */
export function inside(kind, r, x, y) {
  if (kind === 'rect') return x >= r.x0 && x <= r.x1 && y >= r.y0 && y <= r.y1;
  const rx = (r.x1 - r.x0) / 2;
  const ry = (r.y1 - r.y0) / 2;
  if (rx <= 0 || ry <= 0) return false;
  const dx = (x - (r.x0 + rx)) / rx;
  const dy = (y - (r.y0 + ry)) / ry;
  return dx * dx + dy * dy <= 1;
}

/** Mean, SD (population), min, max and count of the values whose pixel centres lie inside
 *  the shape; values: a typed array of rows×cols stored values, rescaled by
 *  v*slope+intercept. null when no pixel centre is inside. */
export function regionStats(kind, a, b, values, cols, rows, slope = 1, intercept = 0) {
  const r = box(a, b);
  const i0 = Math.max(0, Math.floor(r.x0 - 0.5));
  const i1 = Math.min(cols - 1, Math.ceil(r.x1 - 0.5));
  const j0 = Math.max(0, Math.floor(r.y0 - 0.5));
  const j1 = Math.min(rows - 1, Math.ceil(r.y1 - 0.5));
  let n = 0;
  let sum = 0;
  let sum2 = 0;
  let min = Infinity;
  let max = -Infinity;
  for (let j = j0; j <= j1; j++) {
    for (let i = i0; i <= i1; i++) {
      if (!inside(kind, r, i + 0.5, j + 0.5)) continue;
      const v = values[j * cols + i] * slope + intercept;
      n += 1;
      sum += v;
      sum2 += v * v;
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  if (!n) return null;
  const mean = sum / n;
  const sd = Math.sqrt(Math.max(0, sum2 / n - mean * mean));
  return { n, mean, sd, min, max };
}

/** The value of the pixel under image point (x, y), rescaled; null outside the image. */
export function valueAt(values, cols, rows, x, y, slope = 1, intercept = 0) {
  const i = Math.floor(x);
  const j = Math.floor(y);
  if (i < 0 || j < 0 || i >= cols || j >= rows) return null;
  return values[j * cols + i] * slope + intercept;
}

/** The rescale the viewer shows: CT values in HU (slope, intercept), other modalities their
 *  stored values. */
export function displayRescale(modality, slope, intercept) {
  const ct = String(modality || '').toUpperCase() === 'CT';
  return ct ? { slope, intercept, unit: 'HU' } : { slope: 1, intercept: 0, unit: '' };
}

/** Whether a tool is drawn by dragging (two points) or by clicks (n points). */
export const TOOL_POINTS = { length: 2, ellipse: 2, rect: 2, arrow: 2, angle: 3, cobb: 4, text: 1 };
export const DRAG_TOOLS = ['length', 'ellipse', 'rect', 'arrow'];

const round = (v, k) => (v === null || v === undefined ? v : Number(v.toFixed(k)));

/** The values of a measurement: px: {values, cols, rows, slope, intercept, unit} (raw
 *  values of its frame, optional); spacing [row, col] mm or null. */
export function computeValues(kind, points, spacing, px = null) {
  const p = points.map(pt);
  const out = { unit: '' };
  if (kind === 'length') {
    const mm = lengthMm(p[0], p[1], spacing);
    if (mm !== null) out.length_mm = round(mm, 2);
    else out.length_px = round(lengthPx(p[0], p[1]), 1);
  } else if (kind === 'ellipse' || kind === 'rect') {
    const a = shapeArea(kind, p[0], p[1], spacing);
    if (a.mm) out.area_mm2 = round(a.area, 2);
    else out.area_px = round(a.area, 1);
    if (px && px.values) {
      const s = regionStats(kind, p[0], p[1], px.values, px.cols, px.rows, px.slope, px.intercept);
      if (s) Object.assign(out, { mean: round(s.mean, 2), sd: round(s.sd, 2), min: round(s.min, 2), max: round(s.max, 2), n: s.n });
      out.unit = px.unit || '';
    }
  } else if (kind === 'angle' && p.length >= 3) {
    out.angle_deg = round(angleDeg(p[0], p[1], p[2], spacing), 2);
  } else if (kind === 'cobb' && p.length >= 4) {
    out.angle_deg = round(cobbDeg(p[0], p[1], p[2], p[3], spacing), 2);
  }
  return out;
}

/** One-line label of a measurement's values (units in the text: mm, mm², °, HU). */
export function formatValues(kind, v, text = '') {
  const u = v.unit ? ` ${v.unit}` : '';
  if (kind === 'length') return v.length_mm !== undefined ? `${v.length_mm.toFixed(1)} mm` : `${Math.round(v.length_px || 0)} px`;
  if (kind === 'angle' || kind === 'cobb') return v.angle_deg === null || v.angle_deg === undefined ? '' : `${v.angle_deg.toFixed(1)}°`;
  if (kind === 'ellipse' || kind === 'rect') {
    const area = v.area_mm2 !== undefined ? `${v.area_mm2.toFixed(1)} mm²` : `${Math.round(v.area_px || 0)} px²`;
    if (v.mean === undefined) return area;
    const f = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(1));
    return `${area} · ${f(v.mean)}±${f(v.sd)}${u} · [${f(v.min)}, ${f(v.max)}]`;
  }
  if (kind === 'text' || kind === 'arrow') return text || '';
  return '';
}
