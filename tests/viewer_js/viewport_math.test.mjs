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
