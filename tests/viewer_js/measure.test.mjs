import test from 'node:test';
import assert from 'node:assert/strict';
import * as M from '../../viewer_static/js/measure.js';
import { MeasureStore, ValueCache } from '../../viewer_static/js/measure_tools.js';

const near = (a, b, tol, msg) => assert.ok(Math.abs(a - b) <= tol, `${msg || ''} ${a} vs ${b} (±${tol})`);

/** cols×rows stored values, f(i, j) per pixel (column i, row j). */
function grid(cols, rows, f) {
  const v = new Int16Array(cols * rows);
  for (let j = 0; j < rows; j++) for (let i = 0; i < cols; i++) v[j * cols + i] = f(i, j);
  return v;
}

test('rectangle statistics of a gradient: mean, SD, min, max in closed form', () => {
  const cols = 64;
  const rows = 48;
  const v = grid(cols, rows, (i, j) => i + 2 * j);
  // the box (10,5)-(20,15) holds the pixels i = 10..19, j = 5..14 (their centres inside)
  const s = M.regionStats('rect', { x: 20, y: 15 }, { x: 10, y: 5 }, v, cols, rows);
  assert.equal(s.n, 100);
  near(s.mean, 14.5 + 2 * 9.5, 1e-9, 'mean');
  assert.equal(s.min, 10 + 2 * 5);
  assert.equal(s.max, 19 + 2 * 14);
  // i and j independent, each uniform over ten values: var = 8.25 + 4 * 8.25
  near(s.sd, Math.sqrt(8.25 * 5), 1e-9, 'sd');
  // rescale applies to every statistic (HU = stored * 2 - 1000)
  const h = M.regionStats('rect', { x: 10, y: 5 }, { x: 20, y: 15 }, v, cols, rows, 2, -1000);
  near(h.mean, (14.5 + 19) * 2 - 1000, 1e-9);
  near(h.sd, 2 * Math.sqrt(8.25 * 5), 1e-9);
  assert.equal(h.min, 20 * 2 - 1000);
  // nothing inside: null; a box across the edge is clipped to the image
  assert.equal(M.regionStats('rect', { x: 3.6, y: 3.6 }, { x: 3.9, y: 3.9 }, v, cols, rows), null);
  assert.equal(M.regionStats('rect', { x: -5, y: -5 }, { x: 2, y: 1 }, v, cols, rows).n, 2);
});

test('ellipse on a disc of known value: mean, SD 0, pixel count ≈ area (±2%)', () => {
  const cols = 120;
  const rows = 100;
  const cx = 60;
  const cy = 50;
  const R = 30; // disc of 40 HU (stored 1064), -1000 HU around it
  const v = grid(cols, rows, (i, j) => ((i + 0.5 - cx) ** 2 + (j + 0.5 - cy) ** 2 <= (R + 2) ** 2 ? 1064 : 24));
  const a = { x: cx - R, y: cy - R };
  const b = { x: cx + R, y: cy + R };
  const s = M.regionStats('ellipse', a, b, v, cols, rows, 1, -1024);
  assert.equal(s.mean, 40);
  assert.equal(s.sd, 0);
  assert.equal(s.min, 40);
  assert.equal(s.max, 40);
  const spacing = [0.5, 0.5];
  const area = M.shapeArea('ellipse', a, b, spacing);
  near(area.area, Math.PI * 15 * 15, 1e-9, 'analytic area in mm²');
  assert.ok(area.mm);
  near(s.n * 0.25, area.area, area.area * 0.02, 'pixels inside × pixel area');
  // an ellipse larger than the disc: the mean falls, min reaches the background
  const big = M.regionStats('ellipse', { x: cx - 40, y: cy - 40 }, { x: cx + 40, y: cy + 40 }, v, cols, rows, 1, -1024);
  assert.ok(big.mean < 0 && big.min === -1000 && big.max === 40);
});

test('areas follow anisotropic pixel spacing; px² without spacing', () => {
  const r = M.shapeArea('rect', { x: 0, y: 0 }, { x: 10, y: 20 }, [0.5, 0.8]);
  near(r.area, 10 * 0.8 * 20 * 0.5, 1e-9);
  const e = M.shapeArea('ellipse', { x: 0, y: 0 }, { x: 10, y: 20 }, null);
  assert.equal(e.mm, false);
  near(e.area, Math.PI * 5 * 10, 1e-9);
});

test('angle at the vertex, with and without pixel spacing', () => {
  near(M.angleDeg({ x: 10, y: 0 }, { x: 0, y: 0 }, { x: 10, y: 10 }), 45, 1e-9);
  near(M.angleDeg({ x: 10, y: 0 }, { x: 0, y: 0 }, { x: -10, y: 0 }), 180, 1e-9);
  near(M.angleDeg({ x: 5, y: 5 }, { x: 0, y: 0 }, { x: 0, y: 9 }), 45, 1e-9);
  // rows twice as far apart as columns: (10, 10) px is (10, 20) mm → atan(2)
  near(M.angleDeg({ x: 10, y: 0 }, { x: 0, y: 0 }, { x: 10, y: 10 }, [2, 1]), (Math.atan(2) * 180) / Math.PI, 1e-9);
  const deg = 37.5;
  const c = { x: 100 + 50 * Math.cos((deg * Math.PI) / 180), y: 100 - 50 * Math.sin((deg * Math.PI) / 180) };
  near(M.angleDeg({ x: 160, y: 100 }, { x: 100, y: 100 }, c), deg, 0.5);
  assert.equal(M.angleDeg({ x: 1, y: 1 }, { x: 1, y: 1 }, { x: 2, y: 2 }), null);
});

test('Cobb angle: between two lines, 0..90°, direction of drawing does not matter', () => {
  const t30 = Math.tan(Math.PI / 6);
  near(M.cobbDeg({ x: 0, y: 0 }, { x: 10, y: 0 }, { x: 0, y: 50 }, { x: 10, y: 50 + 10 * t30 }), 30, 1e-9);
  near(M.cobbDeg({ x: 10, y: 0 }, { x: 0, y: 0 }, { x: 0, y: 50 }, { x: 10, y: 50 + 10 * t30 }), 30, 1e-9);
  near(M.cobbDeg({ x: 0, y: 0 }, { x: 10, y: 0 }, { x: 5, y: 5 }, { x: 5, y: 25 }), 90, 1e-9);
  // lines 100° apart: the Cobb angle is 80°
  const a = (100 * Math.PI) / 180;
  near(M.cobbDeg({ x: 0, y: 0 }, { x: 10, y: 0 }, { x: 0, y: 0 }, { x: 10 * Math.cos(a), y: 10 * Math.sin(a) }), 80, 1e-9);
  // scoliosis-like: end plates tilted +12° and -15° → 27°
  const l1 = (12 * Math.PI) / 180;
  const l2 = (-15 * Math.PI) / 180;
  near(M.cobbDeg({ x: 0, y: 0 }, { x: 40 * Math.cos(l1), y: 40 * Math.sin(l1) },
    { x: 5, y: 200 }, { x: 5 + 40 * Math.cos(l2), y: 200 + 40 * Math.sin(l2) }), 27, 0.5);
});

test('value under a point, rescale by modality, computed values and labels', () => {
  const v = grid(4, 3, (i, j) => 10 * j + i);
  assert.equal(M.valueAt(v, 4, 3, 2.9, 1.2), 12);
  assert.equal(M.valueAt(v, 4, 3, 2.9, 1.2, 2, -5), 19);
  assert.equal(M.valueAt(v, 4, 3, 4.0, 1), null);
  assert.equal(M.valueAt(v, 4, 3, -0.1, 1), null);
  assert.deepEqual(M.displayRescale('CT', 1, -1024), { slope: 1, intercept: -1024, unit: 'HU' });
  assert.deepEqual(M.displayRescale('MR', 2, 5), { slope: 1, intercept: 0, unit: '' });
  const len = M.computeValues('length', [[0, 0], [30, 40]], [0.5, 0.5]);
  assert.equal(len.length_mm, 25);
  assert.equal(M.formatValues('length', len), '25.0 mm');
  assert.equal(M.computeValues('length', [[0, 0], [30, 40]], null).length_px, 50);
  const px = { values: grid(10, 10, () => 1060), cols: 10, rows: 10, slope: 1, intercept: -1024, unit: 'HU' };
  const roi = M.computeValues('rect', [[2, 2], [6, 7]], [1, 1], px);
  assert.equal(roi.area_mm2, 20);
  assert.equal(roi.mean, 36);
  assert.equal(roi.unit, 'HU');
  assert.equal(M.formatValues('rect', roi), '20.0 mm² · 36.0±0.0 HU · [36.0, 36.0]');
  const ang = M.computeValues('angle', [[10, 0], [0, 0], [0, 10]], [1, 1]);
  assert.equal(ang.angle_deg, 90);
  assert.equal(M.formatValues('angle', ang), '90.0°');
  assert.equal(M.formatValues('text', {}, 'note'), 'note');
});

function fakeApi(routes) {
  const calls = [];
  const req = async (method, url, body) => {
    calls.push([method, url, body]);
    const r = routes(method, url, body);
    if (r && r.error) { const e = new Error(r.error); e.status = r.status; throw e; }
    return r;
  };
  return { calls, req };
}

const M1 = { study_uid: '1.2', series_uid: '1.3', sop_uid: '1.4', frame: 1, kind: 'length', points: [[0, 0], [3, 4]], text: '', values: { length_mm: 5 } };

test('store without a measurement API (404): kept in memory, nothing more is sent', async () => {
  const api = fakeApi(() => ({ error: 'Not Found', status: 404 }));
  const errors = [];
  const st = new MeasureStore({ request: api.req, onError: (e) => errors.push(e) });
  await st.load('1.2');
  assert.equal(st.remote, false);
  const m = st.add({ ...M1 });
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(st.forImage('1.4', 1).length, 1);
  assert.equal(st.forImage('1.4', 2).length, 0);
  st.remove(m);
  assert.equal(st.items.length, 0);
  assert.equal(api.calls.length, 1); // the one GET
  assert.deepEqual(errors, []);
});

test('store with the API: load, POST gives the id, an edit before it is saved after it, DELETE', async () => {
  let next = 7;
  const api = fakeApi((method, url, body) => {
    if (method === 'GET') return { ok: true, measurements: [{ ...M1, id: 3, kind: 'text', text: 'old' }] };
    if (method === 'POST' && url === '/api/measurements') return { ok: true, measurement: { ...body, id: next++ } };
    return { ok: true };
  });
  const st = new MeasureStore({ request: api.req });
  let changes = 0;
  st.subscribe(() => { changes += 1; });
  await st.load('1.2');
  assert.equal(st.remote, true);
  assert.equal(st.items[0].id, 3);
  assert.equal(api.calls[0][1], '/api/measurements?study_uid=1.2');
  const m = st.add({ ...M1, kind: 'text', text: 'a' });
  m.text = 'b';
  st.update(m); // before the POST answered
  await new Promise((r) => setTimeout(r, 0));
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(m.id, 7);
  const post = api.calls.find((c) => c[0] === 'POST');
  assert.deepEqual(Object.keys(post[2]).sort(), ['frame', 'kind', 'points', 'series_uid', 'sop_uid', 'study_uid', 'text', 'values']);
  const put = api.calls.find((c) => c[0] === 'PUT');
  assert.equal(put[1], '/api/measurements/7');
  assert.equal(put[2].text, 'b');
  st.remove(st.items[0]);
  assert.deepEqual(api.calls.at(-1).slice(0, 2), ['DELETE', '/api/measurements/3']);
  assert.ok(changes >= 3);
});

test('value cache: one request per frame, int16 or float32, HU only for CT', async () => {
  let n = 0;
  const fetchFn = async (url) => {
    n += 1;
    const ct = url.includes('/instances/9.9/');
    const body = ct ? new Int16Array([1000, 1060, 0, 24]).buffer : new Float32Array([40000, 7.5, 0, 1]).buffer;
    const headers = new Map(Object.entries({
      'X-Value-Type': ct ? 'int16' : 'float32', 'X-Rows': '2', 'X-Columns': '2',
      'X-Rescale-Slope': '1', 'X-Rescale-Intercept': ct ? '-1024' : '0', 'X-Modality': ct ? 'CT' : 'MR',
    }));
    return { ok: true, status: 200, headers: { get: (k) => headers.get(k) }, arrayBuffer: async () => body };
  };
  const cache = new ValueCache(4, fetchFn);
  const img = { study_uid: '1', series_uid: '2', sop_uid: '9.9', frame: 1 };
  assert.equal(cache.peek(img), undefined);
  const [a, b] = await Promise.all([cache.get(img), cache.get(img)]);
  assert.equal(a, b);
  assert.equal(n, 1);
  assert.equal(M.valueAt(a.values, a.cols, a.rows, 1.5, 0.5, a.slope, a.intercept), 36);
  assert.equal(a.unit, 'HU');
  const mr = await cache.get({ ...img, sop_uid: '8.8' });
  assert.equal(mr.unit, '');
  assert.equal(M.valueAt(mr.values, 2, 2, 1.2, 0.1, mr.slope, mr.intercept), 7.5);
  assert.equal(cache.peek(img), a);
});
