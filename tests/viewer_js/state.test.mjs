import test from 'node:test';
import assert from 'node:assert/strict';
import { prefetchOrder, byDistance, staleKeys, progress, retryDelay, LinkEstimate, fullQualityFor } from '../../viewer_static/js/prefetch.js';
import { cssFilter, dragWindow, presetWindow, windowMap, presetsFor } from '../../viewer_static/js/presets.js';
import { sliceNormal, syncIndex, nearestIndex, alignOffset, parallel } from '../../viewer_static/js/sync.js';
import { translate, pickLang } from '../../viewer_static/js/i18n.js';
import zh from '../../viewer_static/js/i18n/zh-CN.js';
import en from '../../viewer_static/js/i18n/en.js';
import { lengthMm, formatLength } from '../../viewer_static/js/measure.js';
import { buildStack } from '../../viewer_static/js/series.js';
import { crossLine, patientToPixel, pixelToPatient } from '../../viewer_static/js/crossref.js';

test('prefetch: current full first, near previews, near full, then the rest by distance', () => {
  const t = prefetchOrder(10, 5, { fullRadius: 1, nearRadius: 2 });
  assert.deepEqual(t[0], { index: 5, kind: 'full' });
  assert.deepEqual(t.slice(1, 5).map((x) => x.index), [6, 4, 7, 3]);
  assert.ok(t.slice(1, 5).every((x) => x.kind === 'preview'));
  assert.deepEqual(t.slice(5, 7), [{ index: 6, kind: 'full' }, { index: 4, kind: 'full' }]);
  const previews = t.filter((x) => x.kind === 'preview').map((x) => x.index);
  assert.equal(new Set(previews).size, 9);
  assert.deepEqual(byDistance(5, 0, -1), [0, 1, 2, 3, 4]);
  assert.deepEqual(byDistance(5, 2, -1), [2, 1, 3, 0, 4]);
  assert.deepEqual(staleKeys(['a', 'b', 'c'], ['c', 'd']), ['a', 'b']);
  assert.equal(progress(4, (i) => i < 2), 0.5);
  assert.equal(retryDelay(1), 1000);
  assert.equal(retryDelay(10), 15000);
});

test('window: presets, drag, and the CSS approximation is the exact linear map', () => {
  assert.deepEqual(presetWindow('lung'), { c: -600, w: 1500 });
  assert.deepEqual(presetWindow('default', { c: 40, w: 400 }), { c: 40, w: 400 });
  assert.equal(presetsFor('CT').length, 6);
  assert.equal(presetsFor('US').length, 1);
  const w = dragWindow({ c: 40, w: 400 }, 30, 0);
  assert.ok(w.w > 400 && w.c === 40);
  assert.ok(dragWindow({ c: 40, w: 400 }, 0, 30).c > 40);
  assert.equal(cssFilter({ c: 40, w: 400 }, { c: 40, w: 400 }), 'none');
  assert.equal(cssFilter(null, null, false, true), 'invert(1)');
  // contrast(k) brightness(b) reproduces slope/offset of windowMap
  const from = { c: 40, w: 400 }; const to = { c: 60, w: 200 };
  const f = cssFilter(from, to);
  const k = Number(/contrast\(([-\d.]+)\)/.exec(f)[1]); const b = Number(/brightness\(([-\d.]+)\)/.exec(f)[1]);
  const { slope, offset } = windowMap(from, to);
  for (const v of [0.3, 0.5, 0.7]) assert.ok(Math.abs(b * (k * v + (1 - k) / 2) - (slope * v + offset)) < 1e-3);
  // a pixel value of HU 60 shows at mid grey with window 60/200
  const v = (60 - (from.c - from.w / 2)) / from.w;
  assert.ok(Math.abs(slope * v + offset - 0.5) < 1e-9);
});

test('sync by patient position, not index, with offsets', () => {
  const n = sliceNormal([1, 0, 0, 0, 1, 0]);
  assert.deepEqual(n, [0, 0, 1]);
  const a = [-10, -5, 0, 5, 10].map((z) => [0, 0, z]);
  const b = [-8.4, -5.9, -3.4, -0.9, 1.6, 4.1, 6.6].map((z) => [3, 2, z]);
  assert.equal(syncIndex(a[3], n, 0, b, 0), 5); // z=5 → 4.1
  assert.equal(syncIndex(a[0], n, 0, b, 0), 0);
  assert.equal(syncIndex(a[3], n, 0, b, -3), 4); // offset shifts the target to 2 → 1.6
  assert.equal(alignOffset(a[2], n, 0, b[4]), 1.6);
  assert.equal(nearestIndex([null, null], 0), -1);
  assert.ok(parallel([0, 0, 1], [0, 0, -1]));
});

test('i18n lookup, fallback, parameters, default language', () => {
  assert.equal(translate(zh, 'preset.lung'), '肺窗');
  assert.equal(translate(en, 'ov.slice', { n: 3, total: 9 }), 'Im 3/9');
  assert.equal(translate({}, 'preset.bone', null, zh), '骨窗');
  assert.equal(translate(zh, 'no.such.key'), 'no.such.key');
  assert.equal(pickLang(null), 'zh-CN');
  assert.equal(pickLang('en'), 'en');
  assert.deepEqual(Object.keys(zh).sort(), Object.keys(en).sort());
});

test('length in mm uses row and column spacing', () => {
  assert.equal(lengthMm({ x: 0, y: 0 }, { x: 10, y: 0 }, [0.5, 0.7]), 7);
  assert.equal(lengthMm({ x: 0, y: 0 }, { x: 0, y: 10 }, [0.5, 0.7]), 5);
  assert.equal(formatLength({ x: 0, y: 0 }, { x: 3, y: 4 }, null), '5 px');
  assert.equal(formatLength({ x: 0, y: 0 }, { x: 3, y: 4 }, [1, 1]), '5.0 mm');
});

test('a stack sorts by position head first; multi-frame gives one item per frame', () => {
  const inst = (n, z) => ({ sop_uid: `s${n}`, instance_number: n, frames: 1, image_position: [0, 0, z], image_orientation: [1, 0, 0, 0, 1, 0] });
  const st = buildStack({ instances: [inst(1, -10), inst(2, 0), inst(3, -5)] });
  assert.deepEqual(st.items.map((i) => i.sop), ['s2', 's3', 's1']);
  const mf = buildStack({ instances: [{ sop_uid: 'x', instance_number: 1, frames: 3 }] });
  assert.equal(mf.items.length, 3);
  assert.ok(mf.multiframe);
  assert.deepEqual(mf.items.map((i) => i.frame), [1, 2, 3]);
});

test('cross-reference lines from plane geometry', () => {
  const axial = { top_left: [0, 0, 0], row_vector: [1, 0, 0], column_vector: [0, 1, 0], normal: [0, 0, 1], output_pixel_spacing: [1, 1], output_size: [100, 100] };
  const p = [30, 40, 0];
  assert.deepEqual(patientToPixel(axial, p), { u: 30, v: 40 });
  assert.deepEqual(pixelToPatient(axial, 30, 40), [30, 40, 0]);
  const coronalLine = crossLine(axial, [0, 1, 0], p); // horizontal line at v = 40
  assert.ok(Math.abs(coronalLine.y1 - 40) < 1e-9 && Math.abs(coronalLine.y2 - 40) < 1e-9);
  const sagLine = crossLine(axial, [1, 0, 0], p); // vertical at u = 30
  assert.ok(Math.abs(sagLine.x1 - 30) < 1e-9 && Math.abs(sagLine.x2 - 30) < 1e-9);
  assert.equal(crossLine(axial, [0, 0, 1], p), null);
});

test('link estimate: browser hint first, then measured full frames; quality follows', () => {
  assert.equal(new LinkEstimate().mbps(), null);
  assert.equal(fullQualityFor(new LinkEstimate()), 88, 'unknown link: full quality');
  const hinted = new LinkEstimate(1.5);
  assert.ok(hinted.slow());
  assert.equal(fullQualityFor(hinted), 75);
  hinted.note(56000, 110); // 56 KB in 110 ms: about 4 Mbit/s measured wins over the hint
  assert.ok(!hinted.slow());
  assert.equal(fullQualityFor(hinted), 88);
  const measured = new LinkEstimate(null);
  measured.note(2000, 1000); // too small to say anything
  assert.equal(measured.mbps(), null);
  measured.note(56000, 450); // 1.6 Mbit/s link with 150 ms round trip
  assert.ok(measured.slow());
  assert.ok(Math.abs(measured.mbps() - 0.996) < 0.01);
});
