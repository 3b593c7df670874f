import test from 'node:test';
import assert from 'node:assert/strict';
import {
  imagePlane, planePixel, planePoint, referenceLine, offsetVector, shiftPoint, wrapDeg, obliqueAngles, pointerAngle,
} from '../../viewer_static/js/crossref.js';

const near = (a, b, tol = 1e-6) => assert.ok(Math.abs(a - b) <= tol, `${a} != ${b} (±${tol})`);

// an axial slice 100×80 at z = 10 (0.5 mm pixels, top-left pixel centre at (-20, -30, 10))
const axial = imagePlane({ image_position: [-20, -30, 10], image_orientation: [1, 0, 0, 0, 1, 0], pixel_spacing: [0.5, 0.5], rows: 80, columns: 100 });
// a coronal image at y = -5: columns along x (1 mm), rows down towards the feet (2 mm), 60×40
const coronal = imagePlane({ image_position: [-30, -5, 40], image_orientation: [1, 0, 0, 0, 0, -1], pixel_spacing: [2, 1], rows: 40, columns: 60 });

test('crossref: pixel ↔ patient with the pixel centre at i + 0.5', () => {
  const p = planePixel(axial, [-20, -30, 10]);
  near(p.x, 0.5); near(p.y, 0.5);
  const q = planePoint(axial, 10.5, 20.5);
  assert.deepEqual(q.map((v) => +v.toFixed(6)), [-15, -20, 10]);
  const r = planePixel(axial, q);
  near(r.x, 10.5); near(r.y, 20.5);
});

test('crossref: coronal on axial is a horizontal line at y = -5 mm, clipped to both images', () => {
  const ln = referenceLine(axial, coronal);
  // row of y = -5: (-5 - -30) / 0.5 + 0.5 = 50.5
  near(ln.y1, 50.5); near(ln.y2, 50.5);
  // the coronal image covers x in [-30.5, 29.5] (its pixel edges); the axial x in [-20.25, 29.75]:
  // the line runs over the overlap [-20.25, 29.5] → axial columns 0 … 99.5
  const xs = [ln.x1, ln.x2].sort((a, b) => a - b);
  near(xs[0], 0); near(xs[1], 99.5);
});

test('crossref: axial on coronal is a horizontal line at z = 10 mm', () => {
  const ln = referenceLine(coronal, axial);
  // coronal rows run from z = 40 down by 2 mm: row of z = 10 → (40 - 10) / 2 + 0.5 = 15.5
  near(ln.y1, 15.5); near(ln.y2, 15.5);
  const xs = [ln.x1, ln.x2].sort((a, b) => a - b);
  // the axial covers x in [-20.25, 29.75], the coronal [-30.5, 29.5] → columns 10.25 … 60
  near(xs[0], 10.25); near(xs[1], 60);
});

test('crossref: parallel planes and planes that do not meet draw no line', () => {
  const other = imagePlane({ image_position: [-20, -30, 30], image_orientation: [1, 0, 0, 0, 1, 0], pixel_spacing: [0.5, 0.5], rows: 80, columns: 100 });
  assert.equal(referenceLine(axial, other), null);
  // a coronal outside the axial image (y = 200)
  const far = imagePlane({ image_position: [-30, 200, 40], image_orientation: [1, 0, 0, 0, 0, -1], pixel_spacing: [2, 1], rows: 40, columns: 60 });
  assert.equal(referenceLine(axial, far), null);
  // an axial below the coronal image's extent (z = -100) cuts no coronal pixel
  const low = imagePlane({ image_position: [-20, -30, -100], image_orientation: [1, 0, 0, 0, 1, 0], pixel_spacing: [0.5, 0.5], rows: 80, columns: 100 });
  assert.equal(referenceLine(coronal, low), null);
  assert.equal(imagePlane({ image_position: null, image_orientation: [1, 0, 0, 0, 1, 0] }), null);
});

test('crossref: an oblique (30° about z) plane on the axial', () => {
  const c = Math.cos(Math.PI / 6), s = Math.sin(Math.PI / 6);
  const obl = imagePlane({ image_position: [-100 * c, -100 * s, 50], image_orientation: [c, s, 0, 0, 0, -1], pixel_spacing: [1, 1], rows: 100, columns: 200 });
  const ln = referenceLine(axial, obl);
  const slope = (ln.y2 - ln.y1) / (ln.x2 - ln.x1);
  near(Math.atan(slope) * 180 / Math.PI, 30, 1e-6);
  // the line goes through the origin (0, 0, 10): axial pixel (40.5, 60.5)
  near((40.5 - ln.x1) * slope + ln.y1, 60.5, 1e-6);
});

test('crossref: offsets move a point between frames of reference', () => {
  assert.deepEqual(offsetVector(12, [0, 0, 1]), [0, 0, 12]);
  assert.deepEqual(offsetVector(0, [0, 0, 1]), [0, 0, 0]);
  // follower = leader − leader offset + follower offset (sync.js syncIndex)
  assert.deepEqual(shiftPoint([1, 2, 3], [0, 0, 0], [0, 0, 12]), [1, 2, 15]);
  assert.deepEqual(shiftPoint([1, 2, 15], [0, 0, 12], [0, 0, 0]), [1, 2, 3]);
  // a shifted plane: the coronal's line moves with the offset
  const moved = imagePlane({ image_position: [-30, -5, 40], image_orientation: [1, 0, 0, 0, 0, -1], pixel_spacing: [2, 1], rows: 40, columns: 60 }, [0, 10, 0]);
  near(referenceLine(axial, moved).y1, 70.5);
});

test('crossref: oblique angles of the rotated crosshair', () => {
  assert.equal(wrapDeg(190), -170);
  assert.equal(wrapDeg(-180), 180);
  assert.equal(wrapDeg(30), 30);
  assert.deepEqual(obliqueAngles('coronal', 30, false), { yaw: 30, pitch: 90 });
  assert.deepEqual(obliqueAngles('sagittal', 30, false), { yaw: 120, pitch: 90 });
  assert.deepEqual(obliqueAngles('sagittal', 100, true), { yaw: -170, pitch: -90 });
  assert.equal(obliqueAngles('axial', 30, false), null);
  near(pointerAngle(0, 0, 1, 1), 45);
  near(pointerAngle(10, 10, 10, 0), -90);
});
