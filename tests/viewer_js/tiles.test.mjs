import test from 'node:test';
import assert from 'node:assert/strict';
import * as tl from '../../viewer_static/js/tiles.js';
import * as vm from '../../viewer_static/js/viewport_math.js';

// pyramids as render/tiles.py pyramid_info gives them (values printed by the server's code)
test('pyramid matches the server: 4096×3072 in 512 tiles, 1000×777 in 256 tiles', () => {
  const p = tl.pyramid(4096, 3072, 512);
  assert.deepEqual(p.levels.map((l) => [l.width, l.height, l.tiles_x, l.tiles_y]),
    [[4096, 3072, 8, 6], [2048, 1536, 4, 3], [1024, 768, 2, 2], [512, 384, 1, 1]]);
  const q = tl.pyramid(1000, 777, 256);
  assert.deepEqual(q.levels.map((l) => [l.width, l.height, l.tiles_x, l.tiles_y]),
    [[1000, 777, 4, 4], [500, 389, 2, 2], [250, 195, 1, 1]]);
});

test('which images are tiled: pathology always, others above 2048 px', () => {
  assert.equal(tl.wantsTiles({ cols: 1024, rows: 768 }, 'SM'), true);
  assert.equal(tl.wantsTiles({ cols: 1024, rows: 768 }, 'sm'), true);
  assert.equal(tl.wantsTiles({ cols: 2048, rows: 2048 }, 'CR'), false);
  assert.equal(tl.wantsTiles({ cols: 2049, rows: 1500 }, 'CR'), true);
  assert.equal(tl.wantsTiles({ cols: 512, rows: 3000 }, 'DX'), true);
  assert.equal(tl.wantsTiles({ cols: 512, rows: 512 }, 'CT'), false);
  assert.equal(tl.wantsTiles(null, 'SM'), false);
});

test('level: the coarsest with at least one pixel per device pixel', () => {
  const p = tl.pyramid(4096, 3072, 512);
  assert.equal(tl.levelFor(p, 1, 1), 0);          // 1:1
  assert.equal(tl.levelFor(p, 4, 2), 0);          // magnified: full resolution
  assert.equal(tl.levelFor(p, 0.5, 1), 1);        // exactly half
  assert.equal(tl.levelFor(p, 0.26, 1), 1);       // fit on a 1065 px pane: 2048 px level
  assert.equal(tl.levelFor(p, 0.26, 2), 0);       // the same on a 2x screen
  assert.equal(tl.levelFor(p, 0.2, 1), 2);
  assert.equal(tl.levelFor(p, 0.01, 1), 3);       // never past the coarsest
  assert.equal(tl.levelFor(p, 0, 1), 3);
});

test('tile rectangles in source pixels, edge tiles smaller (as the server cuts them)', () => {
  const q = tl.pyramid(1000, 777, 256);
  assert.deepEqual(tl.tileRect(q, 0, 0, 0), { sx: 0, sy: 0, sw: 256, sh: 256 });
  assert.deepEqual(tl.tileRect(q, 0, 3, 3), { sx: 768, sy: 768, sw: 232, sh: 9 });
  assert.deepEqual(tl.tileRect(q, 1, 1, 1), { sx: 512, sy: 512, sw: 488, sh: 265 });
  assert.deepEqual(tl.tileRect(q, 2, 0, 0), { sx: 0, sy: 0, sw: 1000, sh: 777 });
  // the tiles of each level cover the image exactly once
  for (let lv = 0; lv < q.levels.length; lv++) {
    let area = 0;
    const L = q.levels[lv];
    for (let ty = 0; ty < L.tiles_y; ty++) for (let tx = 0; tx < L.tiles_x; tx++) {
      const r = tl.tileRect(q, lv, tx, ty);
      area += r.sw * r.sh;
    }
    assert.equal(area, 1000 * 777, `level ${lv}`);
  }
});

test('only the tiles intersecting the view, nearest the centre first', () => {
  const p = tl.pyramid(4096, 3072, 512);
  // a view of source x 1000..1500, y 600..900 at level 0: tiles x 1..2, y 1
  const t = tl.tilesCovering(p, 0, { sx: 1000, sy: 600, sw: 500, sh: 300 });
  assert.deepEqual(t.map((x) => [x.tx, x.ty]).sort(), [[1, 1], [2, 1]]);
  // touching an edge exactly is not intersecting
  assert.deepEqual(tl.tilesCovering(p, 0, { sx: 512, sy: 512, sw: 512, sh: 512 }).map((x) => [x.tx, x.ty]), [[1, 1]]);
  // a view past the image's edge is clipped to it
  const edge = tl.tilesCovering(p, 0, { sx: 3900, sy: -400, sw: 900, sh: 700 });
  assert.deepEqual(edge.map((x) => [x.tx, x.ty]), [[7, 0]]);
  // outside the image: nothing
  assert.deepEqual(tl.tilesCovering(p, 0, { sx: 5000, sy: 0, sw: 100, sh: 100 }), []);
  // centre first: a 3×3 block around tile (4, 3)
  const c = tl.tilesCovering(p, 0, { sx: 4.5 * 512 - 700, sy: 3.5 * 512 - 700, sw: 1400, sh: 1400 });
  assert.equal(c.length, 9);
  assert.deepEqual([c[0].tx, c[0].ty], [4, 3]);
  // the whole image at the coarsest level is one tile
  assert.deepEqual(tl.tilesCovering(p, 3, { sx: -10, sy: -10, sw: 5000, sh: 4000 }).map((x) => [x.level, x.tx, x.ty]), [[3, 0, 0]]);
});

test('plan for a viewport: fit uses a coarse level, zoom in a fine one with few tiles', () => {
  const img = { cols: 4096, rows: 3072, aspect: 1 };
  const p = tl.pyramid(4096, 3072, 512);
  const W = 1065; const H = 800;
  const fit = vm.initialView(img);
  const r0 = vm.visibleRegion(fit, img, W, H);
  const plan0 = tl.tilePlan(p, r0, r0.scale, 1);
  assert.equal(plan0.level, 1);
  assert.equal(plan0.tiles.length, 12);             // the whole 2048×1536 level
  assert.deepEqual(plan0.base.map((t) => [t.level, t.tx, t.ty]), [[3, 0, 0]]);
  const zoomed = { ...fit, zoom: 16, cx: 2100, cy: 1500 };
  const r1 = vm.visibleRegion(zoomed, img, W, H);
  const plan1 = tl.tilePlan(p, r1, r1.scale, 1);
  assert.equal(plan1.level, 0);
  // the view is 256×192 source px around (2100, 1500): tiles x 3..4, y 2..3 at most
  for (const t of plan1.tiles) {
    const rect = tl.tileRect(p, 0, t.tx, t.ty);
    assert.ok(rect.sx < r1.sx + r1.sw && rect.sx + rect.sw > r1.sx && rect.sy < r1.sy + r1.sh && rect.sy + rect.sh > r1.sy);
  }
  assert.ok(plan1.tiles.length >= 1 && plan1.tiles.length <= 4, plan1.tiles.length);
  assert.deepEqual([plan1.tiles[0].tx, plan1.tiles[0].ty], [4, 2]);
  // zooming out again: a coarser level
  const mid = { ...zoomed, zoom: 1.5 };
  const r2 = vm.visibleRegion(mid, img, W, H);
  assert.ok(tl.tilePlan(p, r2, r2.scale, 1).level > plan1.level);
});

test('tile paths carry tile size, window and invert', () => {
  assert.equal(tl.tilePath({ level: 2, tx: 3, ty: 1 }, { tileSize: 512 }), 'tiles/2/3/1?tile_size=512&quality=85');
  assert.equal(tl.tilePath({ level: 0, tx: 0, ty: 0 }, { tileSize: 256, win: { c: -600, w: 1500 }, invert: true, quality: 80 }),
    'tiles/0/0/0?tile_size=256&window=-600%2C1500&quality=80&invert=true');
});

test('LRU of tiles: the least recently used goes, and is disposed', () => {
  const gone = [];
  const c = new tl.TileCache(3, (v) => gone.push(v));
  c.set('a', 1); c.set('b', 2); c.set('c', 3);
  assert.equal(c.get('a'), 1);   // a is now the most recent
  c.set('d', 4);                 // b goes
  assert.deepEqual(gone, [2]);
  assert.equal(c.has('b'), false);
  assert.equal(c.size, 3);
  c.max = 2;
  c.set('e', 5);                 // c then a go (oldest first)
  assert.deepEqual(gone, [2, 3, 1]);
  assert.deepEqual([...c.map.keys()], ['d', 'e']);
  c.set('d', 6);                 // replaced: the old value disposed
  assert.deepEqual(gone, [2, 3, 1, 4]);
  c.clear();
  assert.equal(c.size, 0);
  assert.deepEqual(gone.slice(4).sort(), [5, 6]);
});

// ---------------------------------------------------------------- the layer, on a stub canvas
function stubDom() {
  const calls = [];
  const ctx = new Proxy({ calls }, {
    get(target, k) {
      if (k in target) return target[k];
      if (k === 'drawImage') return (...a) => calls.push(a);
      return () => {};
    },
    set(target, k, v) { target[k] = v; return true; },
  });
  const canvas = () => ({ width: 0, height: 0, style: {}, getContext: () => ctx, remove() {} });
  globalThis.document = { createElement: canvas };
  return { calls, stage: { append() {} }, root: { dataset: {} } };
}

test('layer: asks only for the tiles in view, cancels those that left it, draws what arrived', async () => {
  const dom = stubDom();
  const asked = [];
  const fetchTile = (url, signal) => new Promise((resolve, reject) => {
    const rec = { url, signal, resolve };
    asked.push(rec);
    signal.addEventListener('abort', () => reject(Object.assign(new Error('aborted'), { name: 'AbortError' })));
  });
  let changes = 0;
  const layer = new tl.TileLayer({ stage: dom.stage, root: dom.root, fetchTile, onChange: () => { changes++; },
    decode: async (b) => ({ width: 512, height: 512, tag: b }) });
  const geom = { cols: 4096, rows: 3072, aspect: 1 };
  const base = '/dicomweb/studies/1/series/2/instances/3/frames/1';
  const state = (view) => ({ view, geom, W: 1065, H: 800, dpr: 1, base, win: null, fileWin: null, invert: false, color: true, settled: true });
  // zoomed in 16× near (2100, 1500): the coarsest tile and the level-0 tiles in view
  const v1 = { ...vm.initialView(geom), zoom: 16, cx: 2100, cy: 1500 };
  const out1 = layer.draw(state(v1));
  assert.equal(out1.level, 0);
  assert.equal(out1.complete, false);
  const urls1 = asked.map((a) => a.url.replace(`${base}/`, ''));
  assert.equal(urls1[0], 'tiles/3/0/0?tile_size=512&quality=85');
  const r1 = vm.visibleRegion(v1, geom, 1065, 800);
  const want1 = tl.tilesCovering(tl.pyramid(4096, 3072), 0, r1).map((t) => `tiles/0/${t.tx}/${t.ty}?tile_size=512&quality=85`);
  assert.deepEqual(urls1.slice(1).sort(), want1.sort());
  assert.equal(dom.root.dataset.tiles, `0/${want1.length}`);
  // the same view again asks nothing more
  layer.draw(state(v1));
  assert.equal(asked.length, urls1.length);
  // two tiles arrive (the coarse one and the first fine one): drawn, the view is redrawn
  asked[0].resolve('coarse');
  asked[1].resolve('fine');
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(changes, 2);
  dom.calls.length = 0;
  const out2 = layer.draw(state(v1));
  assert.equal(out2.have, 1);
  assert.ok(dom.calls.length >= 2, 'the coarse tile under, the fine tiles over it');
  // pan far away (the top-left corner): the fine tiles still loading are cancelled
  const v2 = { ...v1, cx: 200, cy: 150 };
  layer.draw(state(v2));
  const pending = asked.slice(2, urls1.length);
  assert.ok(pending.length >= 1);
  for (const a of pending) assert.equal(a.signal.aborted, true, a.url);
  const urls2 = asked.slice(urls1.length).map((a) => a.url.replace(`${base}/`, ''));
  assert.deepEqual(urls2, ['tiles/0/0/0?tile_size=512&quality=85']);
  // the tiles are kept in an LRU: at most maxTiles (or twice what a view needs)
  assert.ok(layer.cache.size <= layer.cache.max);
  layer.destroy();
  assert.equal(asked.at(-1).signal.aborted, true);
  delete globalThis.document;
});

test('layer: a grey image asks its tiles with the window once the drag has settled', () => {
  const dom = stubDom();
  const asked = [];
  const fetchTile = (url, signal) => new Promise((resolve, reject) => {
    asked.push({ url, signal });
    signal.addEventListener('abort', () => reject(Object.assign(new Error('aborted'), { name: 'AbortError' })));
  });
  const layer = new tl.TileLayer({ stage: dom.stage, root: dom.root, fetchTile, decode: async () => ({ width: 512, height: 512 }) });
  const geom = { cols: 3000, rows: 2500, aspect: 1 };
  const base = '/f';
  const view = vm.initialView(geom);
  const s = { view, geom, W: 600, H: 500, dpr: 1, base, win: null, fileWin: { c: 40, w: 400 }, invert: false, color: false, settled: true };
  layer.draw(s);
  assert.ok(asked.length > 0 && asked.every((a) => !a.url.includes('window=')), asked.map((a) => a.url).join(' '));
  const n0 = asked.length;
  // dragging (not settled): no new requests, the old tiles are shown through a filter
  layer.draw({ ...s, win: { c: 100, w: 800 }, settled: false });
  assert.equal(asked.length, n0);
  // settled: the same tiles with the new window; the old requests are cancelled
  layer.draw({ ...s, win: { c: 100, w: 800 }, settled: true });
  const next = asked.slice(n0);
  assert.equal(next.length, n0);
  assert.ok(next.every((a) => a.url.includes('window=100%2C800')));
  assert.ok(asked.slice(0, n0).every((a) => a.signal.aborted));
  layer.destroy();
  delete globalThis.document;
});
