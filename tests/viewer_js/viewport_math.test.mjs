import test from 'node:test';
import assert from 'node:assert/strict';
import * as vm from '../../viewer_static/js/viewport_math.js';

const img = { cols: 512, rows: 512, aspect: 1 };

test('fit shows the whole image at device pixels', () => {
  const v = vm.initialView(img);
  const req = vm.renderRequest(v, img, 360, 400, 2);
  assert.deepEqual([req.sx, req.sy, req.sw, req.sh, req.vw, req.vh, req.whole], [0, 0, 512, 512, 720, 720, true]);
  assert.equal(vm.viewportParam(req), '720,720');
});

test('zoom keeps the point under the finger and asks for the visible region only', () => {
  const v = vm.zoomAt(vm.initialView(img), 2, 90, 100, img, 360, 400);
  const p0 = vm.screenToImage(90, 100, vm.initialView(img), img, 360, 400);
  const p1 = vm.screenToImage(90, 100, v, img, 360, 400);
  assert.ok(Math.abs(p0.x - p1.x) < 1e-9 && Math.abs(p0.y - p1.y) < 1e-9);
  const req = vm.renderRequest(v, img, 360, 400, 2);
  assert.ok(req.sw <= 257 && req.sh <= 286 && !req.whole);
  assert.match(vm.viewportParam(req), /^\d+,\d+,\d+,\d+,\d+,\d+$/);
});

test('pan moves the image with the finger, also when rotated', () => {
  const v = vm.initialView(img);
  const moved = vm.panBy(v, 36, 0, img, 360, 360);
  assert.ok(moved.cx < v.cx);
  const rot = vm.rotateView(v, 90);
  const a = vm.imageToScreen(100, 200, rot, img, 360, 360);
  const p = vm.screenToImage(a.x, a.y, rot, img, 360, 360);
  assert.ok(Math.abs(p.x - 100) < 1e-9 && Math.abs(p.y - 200) < 1e-9);
  const r2 = vm.panBy(rot, 0, 50, img, 360, 360);
  const b = vm.imageToScreen(100, 200, r2, img, 360, 360);
  assert.ok(Math.abs(b.y - a.y - 50) < 1e-9 && Math.abs(b.x - a.x) < 1e-9);
});

test('placement of a region image follows the view; aspect ratio honoured', () => {
  const tall = { cols: 100, rows: 100, aspect: 2 };
  const v = vm.initialView(tall);
  const p = vm.placement({ sx: 0, sy: 0, sw: 100, sh: 100 }, v, tall, 400, 400);
  assert.equal(p.height / p.width, 2);
  assert.equal(p.height, 400);
});

test('nothing visible gives no request; zoom is clamped', () => {
  const v = { ...vm.initialView(img), cx: 5000 };
  assert.equal(vm.renderRequest(v, img, 100, 100, 1), null);
  assert.equal(vm.clampZoom(1000), vm.MAX_ZOOM);
});

// ---------------------------------------------------------------- orientation letters
const AXIAL = [1, 0, 0, 0, 1, 0];
const SAGITTAL = [0, 1, 0, 0, 0, -1];
const CORONAL = [1, 0, 0, 0, 0, -1];
const edges = (m) => [m.left, m.right, m.top, m.bottom];

test('axial: R left, L right, A top, P bottom', () => {
  assert.deepEqual(edges(vm.orientationMarkers(AXIAL, vm.initialView(img))), ['R', 'L', 'A', 'P']);
});

test('sagittal: A left, P right, H top, F bottom', () => {
  assert.deepEqual(edges(vm.orientationMarkers(SAGITTAL, {})), ['A', 'P', 'H', 'F']);
});

test('coronal: R left, L right, H top, F bottom', () => {
  assert.deepEqual(edges(vm.orientationMarkers(CORONAL, {})), ['R', 'L', 'H', 'F']);
});

test('oblique axial (30° about the feet-head axis) gets two letters, strongest first', () => {
  const c = Math.cos(Math.PI / 6);
  const s = Math.sin(Math.PI / 6);
  const m = vm.orientationMarkers([c, s, 0, -s, c, 0], {});
  assert.deepEqual(edges(m), ['RA', 'LP', 'AL', 'PR']);
  // a small tilt (10°) stays a single letter per edge
  const t = (10 * Math.PI) / 180;
  const m2 = vm.orientationMarkers([Math.cos(t), Math.sin(t), 0, -Math.sin(t), Math.cos(t), 0], {});
  assert.deepEqual(edges(m2), ['R', 'L', 'A', 'P']);
  // double oblique: all three axes
  assert.equal(vm.directionLetters([0.6, -0.5, 0.62]), 'HLA');
});

test('flips swap the letters of their axis only', () => {
  const v = vm.initialView(img);
  assert.deepEqual(edges(vm.orientationMarkers(AXIAL, { ...v, flipH: true })), ['L', 'R', 'A', 'P']);
  assert.deepEqual(edges(vm.orientationMarkers(AXIAL, { ...v, flipV: true })), ['R', 'L', 'P', 'A']);
  assert.deepEqual(edges(vm.orientationMarkers(SAGITTAL, { ...v, flipH: true, flipV: true })), ['P', 'A', 'F', 'H']);
});

test('rotation turns the letters with the image (clockwise, as the CSS transform)', () => {
  const v = vm.initialView(img);
  const r90 = vm.rotateView(v, 90);
  // the patient's left (image right) now points down, anterior (image top) to the right
  assert.deepEqual(edges(vm.orientationMarkers(AXIAL, r90)), ['P', 'A', 'R', 'L']);
  assert.deepEqual(edges(vm.orientationMarkers(AXIAL, vm.rotateView(r90, 90))), ['L', 'R', 'P', 'A']);
  assert.deepEqual(edges(vm.orientationMarkers(AXIAL, vm.rotateView(v, 270))), ['A', 'P', 'L', 'R']);
  // rotate then flip horizontally: the screen's left/right swap
  assert.deepEqual(edges(vm.orientationMarkers(AXIAL, { ...r90, flipH: true })), ['P', 'A', 'L', 'R']);
  // the letters agree with where imageToScreen puts the image's right edge
  const p = vm.imageToScreen(512, 256, r90, img, 400, 400);
  assert.ok(p.y > 390 && Math.abs(p.x - 200) < 1e-6); // image right (patient L) at the bottom
});

test('no or degenerate orientation: no letters', () => {
  assert.equal(vm.orientationMarkers(null, {}), null);
  assert.equal(vm.orientationMarkers([1, 0, 0], {}), null);
  assert.equal(vm.orientationMarkers([0, 0, 0, 0, 1, 0], {}), null);
  assert.equal(vm.directionLetters([0, 0, 0]), '');
});

// ---------------------------------------------------------------- scale bar
test('scale bar: the longest round length that fits', () => {
  assert.deepEqual(vm.scaleBar(1.2, 110), { mm: 50, px: 60, label: '5 cm' });
  const b = vm.scaleBar(3, 100);
  assert.equal(b.mm, 20);
  assert.equal(b.label, '2 cm');
  assert.equal(vm.scaleBar(10, 120).label, '1 cm');
  assert.equal(vm.scaleBar(30, 100).label, '2 mm');
  assert.equal(vm.scaleBar(2000, 250).label, '100 µm'); // pathology at 0.5 µm per pixel
  assert.equal(vm.scaleBar(null, 100), null);
  assert.equal(vm.scaleBar(0, 100), null);
});

test('pixels per mm follow the zoom and the column spacing', () => {
  const v = vm.initialView(img);
  const p1 = vm.pixelsPerMm(v, img, 512, 512, [0.5, 0.5]);
  assert.ok(Math.abs(p1 - 2) < 1e-9);
  const p2 = vm.pixelsPerMm({ ...v, zoom: 2 }, img, 512, 512, [0.5, 0.5]);
  assert.ok(Math.abs(p2 - 4) < 1e-9);
  assert.equal(vm.pixelsPerMm(v, img, 512, 512, null), null);
  assert.equal(vm.pixelsPerMm(v, img, 512, 512, [0, 0]), null);
});
