// Pure viewport geometry: which source region of the image is visible, where an image of a
// region sits on screen, and how zoom / pan / rotation change the view. No DOM here.
//
// A view is {zoom, cx, cy, rot, flipH, flipV}: zoom relative to "fit", (cx, cy) the image
// point (source pixels) at the centre of the viewport, rot in degrees (0/90/180/270).
// `img` is {cols, rows, aspect} where aspect = row spacing / column spacing (physical height
// of one pixel relative to its width). W, H: viewport size in CSS pixels.

export const MIN_ZOOM = 0.25;
export const MAX_ZOOM = 32;

export function initialView(img) {
  return { zoom: 1, cx: img.cols / 2, cy: img.rows / 2, rot: 0, flipH: false, flipV: false };
}

/** The viewport in the image's own orientation (width and height swap at 90/270). */
export function unrotatedSize(W, H, rot) {
  return rot % 180 === 0 ? { w: W, h: H } : { w: H, h: W };
}

/** CSS pixels per source column at zoom 1 (the whole image fits). */
export function fitScale(img, W, H, rot = 0) {
  const u = unrotatedSize(W, H, rot);
  const a = img.aspect || 1;
  return Math.min(u.w / img.cols, u.h / (img.rows * a));
}

/** The visible source region (may extend past the image) and the current scale. */
export function visibleRegion(view, img, W, H) {
  const u = unrotatedSize(W, H, view.rot);
  const scale = fitScale(img, W, H, view.rot) * view.zoom;
  const a = img.aspect || 1;
  const sw = u.w / scale;
  const sh = u.h / (scale * a);
  return { sx: view.cx - sw / 2, sy: view.cy - sh / 2, sw, sh, scale, uw: u.w, uh: u.h };
}

/**
 * What to ask the server for: the visible region clipped to the image, at device-pixel size.
 * Returns null when no part of the image is visible.
 */
export function renderRequest(view, img, W, H, dpr = 1, maxSide = 2048) {
  const r = visibleRegion(view, img, W, H);
  const a = img.aspect || 1;
  const x0 = Math.max(0, Math.floor(r.sx));
  const y0 = Math.max(0, Math.floor(r.sy));
  const x1 = Math.min(img.cols, Math.ceil(r.sx + r.sw));
  const y1 = Math.min(img.rows, Math.ceil(r.sy + r.sh));
  if (x1 <= x0 || y1 <= y0) return null;
  const sw = x1 - x0;
  const sh = y1 - y0;
  let vw = sw * r.scale * dpr;
  let vh = sh * a * r.scale * dpr;
  const k = Math.min(1, maxSide / Math.max(vw, vh));
  vw = Math.max(1, Math.round(vw * k));
  vh = Math.max(1, Math.round(vh * k));
  const whole = x0 === 0 && y0 === 0 && sw === img.cols && sh === img.rows;
  return { sx: x0, sy: y0, sw, sh, vw, vh, whole };
}

/** The DICOMweb viewport parameter for a request. */
export function viewportParam(req) {
  if (req.whole) return `${req.vw},${req.vh}`;
  return `${req.vw},${req.vh},${req.sx},${req.sy},${req.sw},${req.sh}`;
}

/**
 * Where an image of source region `reg` ({sx,sy,sw,sh}) sits inside the unrotated stage
 * (CSS px, origin top-left of the stage), for the current view.
 */
export function placement(reg, view, img, W, H) {
  const r = visibleRegion(view, img, W, H);
  const a = img.aspect || 1;
  return {
    left: (reg.sx - r.sx) * r.scale,
    top: (reg.sy - r.sy) * r.scale * a,
    width: reg.sw * r.scale,
    height: reg.sh * r.scale * a,
  };
}

function rotateVec(x, y, deg) {
  const t = (deg * Math.PI) / 180;
  const c = Math.round(Math.cos(t));
  const s = Math.round(Math.sin(t));
  return { x: c * x - s * y, y: s * x + c * y };
}

/** Screen delta (CSS px) → stage delta (undo rotation then flip). */
export function screenToStageDelta(dx, dy, view) {
  const v = rotateVec(dx, dy, -view.rot);
  return { x: view.flipH ? -v.x : v.x, y: view.flipV ? -v.y : v.y };
}

/** Stage delta → screen delta (flip then rotate), the CSS transform's order. */
export function stageToScreenDelta(x, y, view) {
  return rotateVec(view.flipH ? -x : x, view.flipV ? -y : y, view.rot);
}

/** A point on screen (CSS px from the viewport's top-left) → source pixel coordinates. */
export function screenToImage(px, py, view, img, W, H) {
  const r = visibleRegion(view, img, W, H);
  const a = img.aspect || 1;
  const d = screenToStageDelta(px - W / 2, py - H / 2, view);
  return { x: view.cx + d.x / r.scale, y: view.cy + d.y / (r.scale * a) };
}

/** Source pixel coordinates → screen point (CSS px). */
export function imageToScreen(x, y, view, img, W, H) {
  const r = visibleRegion(view, img, W, H);
  const a = img.aspect || 1;
  const d = stageToScreenDelta((x - view.cx) * r.scale, (y - view.cy) * r.scale * a, view);
  return { x: W / 2 + d.x, y: H / 2 + d.y };
}

export function clampZoom(z) {
  return Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, z));
}

/** Zoom by `factor` keeping the image point under screen point (px, py) where it is. */
export function zoomAt(view, factor, px, py, img, W, H) {
  const p = screenToImage(px, py, view, img, W, H);
  const zoom = clampZoom(view.zoom * factor);
  const next = { ...view, zoom };
  const q = screenToImage(px, py, next, img, W, H);
  next.cx = view.cx + (p.x - q.x);
  next.cy = view.cy + (p.y - q.y);
  return next;
}

/** Move the image with the finger: a screen drag of (dx, dy) CSS px. */
export function panBy(view, dx, dy, img, W, H) {
  const r = visibleRegion(view, img, W, H);
  const a = img.aspect || 1;
  const d = screenToStageDelta(dx, dy, view);
  return { ...view, cx: view.cx - d.x / r.scale, cy: view.cy - d.y / (r.scale * a) };
}

export function rotateView(view, deg = 90) {
  return { ...view, rot: (((view.rot + deg) % 360) + 360) % 360 };
}

/** The view with the same zoom and relative position, for another image (linked pan/zoom). */
export function transferView(view, fromImg, toImg) {
  return {
    ...view,
    cx: (view.cx / fromImg.cols) * toImg.cols,
    cy: (view.cy / fromImg.rows) * toImg.rows,
  };
}

/** A stable key of what a render shows (used for cache keys). */
export function requestKey(req) {
  return `${req.vw}x${req.vh}@${req.sx},${req.sy},${req.sw},${req.sh}`;
}

// Vectors of patient space (the film view needs them without the linking code of sync.js).
export function cross(a, b) {
  return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
}

export function dot(a, b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

export function normalize(v) {
  const n = Math.hypot(v[0], v[1], v[2]) || 1;
  return [v[0] / n, v[1] / n, v[2] / n];
}

/** Slice normal from Image Orientation Patient (row cosines, column cosines). */
export function sliceNormal(orientation) {
  if (!orientation || orientation.length !== 6) return null;
  return normalize(cross(orientation.slice(0, 3), orientation.slice(3, 6)));
}

// ---------------------------------------------------------------- display annotations
// Patient space is DICOM's LPS: +x towards the patient's left, +y posterior, +z head.
const AXIS_LETTERS = [['R', 'L'], ['A', 'P'], ['F', 'H']];

/**
 * Letters of a direction in patient space (R/L, A/P, F/H), strongest component first; an
 * oblique direction gets one letter per axis whose share is above `threshold` (e.g. 'LP').
 * '' for a missing or zero vector.
 */
export function directionLetters(v, threshold = 0.25) {
  if (!v || v.length !== 3 || !v.every(Number.isFinite)) return '';
  const n = Math.hypot(v[0], v[1], v[2]);
  if (!(n > 0)) return '';
  return [0, 1, 2]
    .map((k) => ({ k, a: Math.abs(v[k]) / n }))
    .filter((p) => p.a > threshold)
    .sort((p, q) => q.a - p.a)
    .map((p) => AXIS_LETTERS[p.k][v[p.k] > 0 ? 1 : 0])
    .join('');
}

/**
 * Orientation letters at the four edges of a viewport showing an image with Image
 * Orientation (Patient) `orientation` (row cosines then column cosines) under `view`'s
 * rotation and flips: {top, bottom, left, right}, or null without a valid orientation.
 */
export function orientationMarkers(orientation, view = {}) {
  if (!orientation || orientation.length !== 6 || !orientation.every(Number.isFinite)) return null;
  const row = orientation.slice(0, 3);
  const col = orientation.slice(3, 6);
  if (!(Math.hypot(...row) > 0) || !(Math.hypot(...col) > 0)) return null;
  const r = normalize(row);
  const c = normalize(col);
  const v = { rot: view.rot || 0, flipH: !!view.flipH, flipV: !!view.flipV };
  // a screen direction → the image direction under it → patient space
  const toPatient = (sx, sy) => {
    const d = screenToStageDelta(sx, sy, v);
    return [0, 1, 2].map((k) => d.x * r[k] + d.y * c[k]);
  };
  const right = toPatient(1, 0);
  const down = toPatient(0, 1);
  const neg = (a) => a.map((x) => -x);
  return {
    top: directionLetters(neg(down)), bottom: directionLetters(down),
    left: directionLetters(neg(right)), right: directionLetters(right),
  };
}

/** Screen CSS pixels per millimetre for an image with `pixelSpacing` [row, column] (mm). */
export function pixelsPerMm(view, img, W, H, pixelSpacing) {
  const col = pixelSpacing && Number(pixelSpacing[1]);
  if (!(col > 0)) return null;
  return visibleRegion(view, img, W, H).scale / col;
}

/** Round lengths a scale bar may show (mm): 1-2-5 steps from 10 µm to 50 cm. */
export const SCALE_STEPS_MM = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500];

/** '5 cm', '2 mm', '100 µm'. */
export function scaleLabel(mm) {
  if (mm >= 10) return `${Number((mm / 10).toFixed(3))} cm`;
  if (mm >= 1) return `${Number(mm.toFixed(3))} mm`;
  return `${Math.round(mm * 1000)} µm`;
}

/**
 * The longest round length whose bar fits in `maxPx` CSS pixels (and is at least `minPx`
 * long): {mm, px, label}, or null (no spacing, or nothing fits).
 */
export function scaleBar(pxPerMm, maxPx, minPx = 12) {
  if (!(pxPerMm > 0) || !(maxPx > 0)) return null;
  let mm = null;
  for (const s of SCALE_STEPS_MM) if (s * pxPerMm <= maxPx) mm = s;
  if (mm === null || mm * pxPerMm < minPx) return null;
  return { mm, px: mm * pxPerMm, label: scaleLabel(mm) };
}

/** Position (mm) of each position vector along `normal`; null where a position is missing. */
