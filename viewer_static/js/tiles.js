// Big pictures (pathology slides, images larger than 2048 px) from the server's tile pyramid
// (server/handlers/render.py TileHandler, render/tiles.py): the tiles of the level that
// matches the zoom, only those in view, a coarser level shown while the finer tiles load, an
// LRU of decoded tiles, requests for tiles that left the view cancelled.
// The pure part (which tiles at which level cover the view) is tested with node --test; the
// TileLayer draws on a canvas inside the viewport's stage, so the stage's rotation and flips
// apply to it as to the <img>. Nothing here touches the DOM at import time.
import { visibleRegion, placement, unrotatedSize } from './viewport_math.js';
import { cssFilter, windowParam } from './presets.js';

export const TILE_SIZE = 512;
/** Images larger than this (either side, source pixels) are shown from tiles. */
export const TILE_THRESHOLD = 2048;
/** Modalities always shown from tiles (slide microscopy). */
export const TILED_MODALITIES = ['SM'];

/** Whether an image (geometry {cols, rows}) of `modality` is shown from tiles. Pure. */
export function wantsTiles(geom, modality) {
  if (!geom || !(geom.cols > 0) || !(geom.rows > 0)) return false;
  if (TILED_MODALITIES.includes(String(modality || '').toUpperCase())) return true;
  return Math.max(geom.cols, geom.rows) > TILE_THRESHOLD;
}

/** The server's pyramid (render/tiles.py pyramid_info): level 0 full size, each level half
 *  the one before (rounded up), down to the first level that fits in one tile. Pure. */
export function pyramid(cols, rows, tileSize = TILE_SIZE) {
  const levels = [];
  for (let lv = 0; ; lv++) {
    const f = 2 ** lv;
    const width = Math.ceil(cols / f);
    const height = Math.ceil(rows / f);
    levels.push({ level: lv, width, height, tiles_x: Math.ceil(width / tileSize), tiles_y: Math.ceil(height / tileSize) });
    if ((width <= tileSize && height <= tileSize) || lv > 30) break;
  }
  return { width: cols, height: rows, tile_size: tileSize, levels };
}

/**
 * The level to draw at `scale` CSS px per source pixel on a screen of `dpr`: the coarsest
 * level that still has at least one of its pixels per device pixel (never blurred by
 * upscaling, except at level 0). Pure.
 */
export function levelFor(pyr, scale, dpr = 1) {
  const devicePerSource = scale * dpr;
  if (!(devicePerSource > 0)) return pyr.levels.length - 1;
  const lv = Math.floor(Math.log2(1 / devicePerSource) + 1e-9);
  return Math.max(0, Math.min(pyr.levels.length - 1, lv));
}

/** Source-pixel rectangle {sx, sy, sw, sh} of tile (tx, ty) of `level` (edge tiles are
 *  smaller), as the server renders it. Pure. */
export function tileRect(pyr, level, tx, ty) {
  const ts = pyr.tile_size;
  const lv = pyr.levels[level];
  const f = 2 ** level;
  const ox = tx * ts;
  const oy = ty * ts;
  const ow = Math.min(ts, lv.width - ox);
  const oh = Math.min(ts, lv.height - oy);
  const sx = ox * f;
  const sy = oy * f;
  return { sx, sy, sw: Math.min(ow * f, pyr.width - sx), sh: Math.min(oh * f, pyr.height - sy) };
}

/**
 * The tiles of `level` that intersect `region` (source pixels {sx, sy, sw, sh}; may reach past
 * the image): [{level, tx, ty}], nearest the region's centre first. [] when the region
 * misses the image. Pure.
 */
export function tilesCovering(pyr, level, region) {
  const lv = pyr.levels[level];
  if (!lv) return [];
  const span = pyr.tile_size * 2 ** level;
  const x0 = Math.max(0, region.sx);
  const y0 = Math.max(0, region.sy);
  const x1 = Math.min(pyr.width, region.sx + region.sw);
  const y1 = Math.min(pyr.height, region.sy + region.sh);
  if (!(x1 > x0 && y1 > y0)) return [];
  const tx0 = Math.floor(x0 / span);
  const ty0 = Math.floor(y0 / span);
  const tx1 = Math.min(lv.tiles_x - 1, Math.ceil(x1 / span) - 1);
  const ty1 = Math.min(lv.tiles_y - 1, Math.ceil(y1 / span) - 1);
  const cx = region.sx + region.sw / 2;
  const cy = region.sy + region.sh / 2;
  const out = [];
  for (let ty = ty0; ty <= ty1; ty++) {
    for (let tx = tx0; tx <= tx1; tx++) {
      const d = Math.hypot((tx + 0.5) * span - cx, (ty + 0.5) * span - cy);
      out.push({ level, tx, ty, d });
    }
  }
  out.sort((a, b) => a.d - b.d || a.ty - b.ty || a.tx - b.tx);
  return out.map(({ level: l, tx, ty }) => ({ level: l, tx, ty }));
}

/**
 * What to load for a view: the level for the zoom and its tiles in view, and the coarsest
 * level's tiles in view (the picture while the finer tiles load). Pure.
 */
export function tilePlan(pyr, region, scale, dpr = 1) {
  const level = levelFor(pyr, scale, dpr);
  const top = pyr.levels.length - 1;
  return {
    level,
    tiles: tilesCovering(pyr, level, region),
    base: level === top ? [] : tilesCovering(pyr, top, region),
  };
}

/** Path of a tile below the frame's URL (…/frames/{n}): tiles/{level}/{tx}/{ty}?…. Pure. */
export function tilePath(t, { tileSize = TILE_SIZE, win = null, invert = false, quality = 85 } = {}) {
  const q = [`tile_size=${tileSize}`];
  if (win) q.push(`window=${encodeURIComponent(windowParam(win))}`);
  if (quality) q.push(`quality=${quality}`);
  if (invert) q.push('invert=true');
  return `tiles/${t.level}/${t.tx}/${t.ty}?${q.join('&')}`;
}

/** Least-recently-used map of decoded tiles: at most `max` entries; `dispose(value)` runs for
 *  every entry that goes (ImageBitmap.close()). */
export class TileCache {
  constructor(max = 64, dispose = () => {}) {
    this.max = max;
    this.dispose = dispose;
    this.map = new Map();
  }

  get size() {
    return this.map.size;
  }

  has(key) {
    return this.map.has(key);
  }

  /** The value, now the most recently used (undefined when absent). */
  get(key) {
    const v = this.map.get(key);
    if (v === undefined) return undefined;
    this.map.delete(key);
    this.map.set(key, v);
    return v;
  }

  set(key, value) {
    const old = this.map.get(key);
    if (old !== undefined && old !== value) this.dispose(old);
    this.map.delete(key);
    this.map.set(key, value);
    this.trim();
  }

  trim() {
    while (this.map.size > this.max) {
      const [k, v] = this.map.entries().next().value;
      this.map.delete(k);
      this.dispose(v);
    }
  }

  clear() {
    for (const v of this.map.values()) this.dispose(v);
    this.map.clear();
  }
}

/** A blob → something drawImage() takes (an ImageBitmap; an <img> where that is missing). */
export function decodeTile(blob) {
  if (typeof createImageBitmap === 'function') return createImageBitmap(blob);
  const url = URL.createObjectURL(blob);
  const img = new Image();
  img.src = url;
  const done = () => { URL.revokeObjectURL(url); return img; };
  return img.decode().then(done, (e) => { done(); throw e; });
}

/**
 * The tiles of one viewport: a canvas in the stage (under the stage's rotation and flips),
 * its own requests (at most `concurrency` at a time, the ones that left the view cancelled),
 * an LRU of decoded tiles. fetchTile(url, signal, priority) → Promise<blob>; onChange() when
 * a tile arrived (the viewport draws again).
 */
export class TileLayer {
  constructor({ stage, root, fetchTile, onChange, concurrency = 6, maxTiles = 48, tileSize = TILE_SIZE, decode = decodeTile }) {
    this.root = root;
    this.fetchTile = fetchTile;
    this.onChange = onChange || (() => {});
    this.concurrency = concurrency;
    this.maxTiles = maxTiles;
    this.tileSize = tileSize;
    this.decode = decode;
    this.cache = new TileCache(maxTiles, (e) => { if (e.image && e.image.close) e.image.close(); });
    this.inflight = new Map(); // key → {controller, task}
    this.failed = new Map(); // key → {count, until}
    this.wanted = [];
    this.wantSig = '';
    this.reqWin = null;
    this.pyr = null;
    this.canvas = document.createElement('canvas');
    this.canvas.className = 'vp-tiles';
    Object.assign(this.canvas.style, { position: 'absolute', left: '0', top: '0', pointerEvents: 'none' });
    stage.append(this.canvas);
    this.ctx = this.canvas.getContext('2d');
  }

  /** Key of a tile of a frame with a window (colour images: no window). */
  key(src, t, win, invert) {
    return `${src}|${t.level}|${t.tx}|${t.ty}|${win ? windowParam(win) : 'd'}|${invert ? 1 : 0}`;
  }

  /**
   * Draw the view s = {view, geom, W, H, dpr, base (the frame's URL up to /frames/{n}), win,
   * fileWin, invert, color, settled}; load what it needs. Returns {level, need, have,
   * complete, drawn}.
   */
  draw(s) {
    if (!this.pyr || this.pyr.width !== s.geom.cols || this.pyr.height !== s.geom.rows) {
      this.pyr = pyramid(s.geom.cols, s.geom.rows, this.tileSize);
    }
    // the window the tiles are asked with: the user's, once the drag has paused
    if (s.settled || this.reqBase !== s.base) { this.reqWin = s.color ? null : s.win; this.reqInvert = s.invert; }
    this.reqBase = s.base;
    const r = visibleRegion(s.view, s.geom, s.W, s.H);
    const plan = tilePlan(this.pyr, r, r.scale, s.dpr);
    this.cache.max = Math.max(this.maxTiles, 2 * (plan.tiles.length + plan.base.length));
    const u = unrotatedSize(s.W, s.H, s.view.rot);
    const cw = Math.max(1, Math.round(u.w * s.dpr));
    const ch = Math.max(1, Math.round(u.h * s.dpr));
    const c = this.canvas;
    if (c.width !== cw || c.height !== ch) { c.width = cw; c.height = ch; }
    c.style.width = `${u.w}px`;
    c.style.height = `${u.h}px`;
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    const exactOf = (t) => this.key(s.base, t, this.reqWin, this.reqInvert);
    const have = plan.tiles.filter((t) => this.cache.has(exactOf(t))).length;
    const complete = plan.tiles.length > 0 && have === plan.tiles.length;
    let drawn = 0;
    // coarse to fine: the coarser levels fill in where the finer tiles are still loading
    const top = this.pyr.levels.length - 1;
    // magnified (more than one screen pixel per tile pixel): the level's tiles are put side by
    // side first and enlarged as one picture, so the smoothing runs across tile edges (no seams)
    const magnified = r.scale * s.dpr * 2 ** plan.level > 1.05;
    for (let lv = complete ? plan.level : top; lv >= plan.level; lv--) {
      const list = lv === plan.level ? plan.tiles : tilesCovering(this.pyr, lv, r);
      if (lv === plan.level && magnified) drawn += this.drawJoined(s, lv, list);
      else for (const t of list) drawn += this.drawTile(s, t) ? 1 : 0;
    }
    ctx.filter = 'none';
    this.want(s, [...plan.base, ...plan.tiles]);
    const out = { level: plan.level, need: plan.tiles.length, have, complete, drawn };
    if (this.root) {
      this.root.dataset.tileLevel = String(plan.level);
      this.root.dataset.tiles = `${have}/${plan.tiles.length}`;
    }
    return out;
  }

  /** The tile with the current window, else one with another window (approximated by a
   *  filter, as the <img> is while a window drag has not settled). */
  entry(s, t) {
    return this.cache.get(this.key(s.base, t, this.reqWin, this.reqInvert)) || this.anyOf(s.base, t);
  }

  filterOf(s, e) {
    return s.color ? (e.invert !== s.invert ? 'invert(1)' : 'none')
      : cssFilter(e.win || s.fileWin, s.win || s.fileWin, e.invert, s.invert);
  }

  /** Draw `image` (or its part sw×sh) over source rectangle `rect`; false when off screen. */
  put(s, image, rect, sw, sh) {
    const p = placement(rect, s.view, s.geom, s.W, s.H);
    const d = s.dpr;
    const x0 = Math.round(p.left * d);
    const y0 = Math.round(p.top * d);
    const x1 = Math.round((p.left + p.width) * d);
    const y1 = Math.round((p.top + p.height) * d);
    if (x1 <= 0 || y1 <= 0 || x0 >= this.canvas.width || y0 >= this.canvas.height) return false;
    this.ctx.drawImage(image, 0, 0, sw, sh, x0, y0, x1 - x0, y1 - y0);
    return true;
  }

  /** One tile at its place. */
  drawTile(s, t) {
    const e = this.entry(s, t);
    if (!e) return false;
    this.ctx.filter = this.filterOf(s, e);
    return this.put(s, e.image, tileRect(this.pyr, t.level, t.tx, t.ty), e.image.width, e.image.height);
  }

  /** The loaded tiles of `list` (one level) joined at 1:1 on a scratch canvas, then drawn as
   *  one picture. Returns how many tiles it drew. */
  drawJoined(s, level, list) {
    const have = list.map((t) => [t, this.entry(s, t)]).filter(([, e]) => e);
    if (!have.length) return 0;
    const ts = this.pyr.tile_size;
    const lv = this.pyr.levels[level];
    const tx0 = Math.min(...have.map(([t]) => t.tx));
    const ty0 = Math.min(...have.map(([t]) => t.ty));
    const w = Math.min(lv.width, (Math.max(...have.map(([t]) => t.tx)) + 1) * ts) - tx0 * ts;
    const h = Math.min(lv.height, (Math.max(...have.map(([t]) => t.ty)) + 1) * ts) - ty0 * ts;
    if (!this.scratch) this.scratch = document.createElement('canvas');
    const sc = this.scratch;
    if (sc.width < w || sc.height < h) { sc.width = Math.max(sc.width, w); sc.height = Math.max(sc.height, h); }
    const o = sc.getContext('2d');
    o.filter = 'none';
    o.clearRect(0, 0, w, h);
    for (const [t, e] of have) {
      o.filter = this.filterOf(s, e);
      o.drawImage(e.image, (t.tx - tx0) * ts, (t.ty - ty0) * ts);
    }
    const f = 2 ** level;
    const sx = tx0 * ts * f;
    const sy = ty0 * ts * f;
    const rect = { sx, sy, sw: Math.min(w * f, this.pyr.width - sx), sh: Math.min(h * f, this.pyr.height - sy) };
    this.ctx.filter = 'none';
    return this.put(s, sc, rect, w, h) ? have.length : 0;
  }

  anyOf(base, t) {
    const k = this.byPos && this.byPos.get(`${base}|${t.level}|${t.tx}|${t.ty}`);
    return k ? this.cache.get(k) : undefined;
  }

  /** Ask for the tiles in view (coarsest first, then nearest the centre); cancel the rest. */
  want(s, tiles) {
    const tasks = tiles.map((t, i) => {
      const key = this.key(s.base, t, this.reqWin, this.reqInvert);
      const url = `${s.base}/${tilePath(t, { tileSize: this.tileSize, win: this.reqWin, invert: this.reqInvert })}`;
      return { key, url, tile: t, win: this.reqWin, invert: !!this.reqInvert, base: s.base, priority: i < 4 ? 0 : 1 };
    });
    const sig = tasks.map((x) => x.key).join(';');
    if (sig === this.wantSig) return;
    this.wantSig = sig;
    this.wanted = tasks;
    const keys = new Set(tasks.map((x) => x.key));
    for (const [key, f] of this.inflight) {
      if (keys.has(key)) continue;
      f.controller.abort(); // left the view (or another level, window, frame)
      this.inflight.delete(key);
    }
    this.pump();
  }

  pump() {
    const now = Date.now();
    let retryAt = Infinity;
    for (const task of this.wanted) {
      if (this.inflight.size >= this.concurrency) break;
      if (this.cache.has(task.key) || this.inflight.has(task.key)) continue;
      const f = this.failed.get(task.key);
      if (f && f.until > now) { retryAt = Math.min(retryAt, f.until); continue; }
      this.start(task);
    }
    if (retryAt < Infinity && !this.retryTimer) {
      this.retryTimer = setTimeout(() => { this.retryTimer = null; this.pump(); }, retryAt - now + 10);
    }
  }

  start(task) {
    const controller = new AbortController();
    this.inflight.set(task.key, { controller, task });
    const mine = () => this.inflight.get(task.key)?.controller === controller;
    Promise.resolve(this.fetchTile(task.url, controller.signal, task.priority))
      .then((blob) => (mine() ? this.decode(blob) : null))
      .then((image) => {
        if (!image) return;
        if (!mine()) { if (image.close) image.close(); return; }
        this.inflight.delete(task.key);
        this.failed.delete(task.key);
        this.cache.set(task.key, { image, win: task.win, invert: task.invert });
        if (!this.byPos) this.byPos = new Map();
        const t = task.tile;
        this.byPos.set(`${task.base}|${t.level}|${t.tx}|${t.ty}`, task.key);
        this.onChange(task);
        this.pump();
      }, (err) => {
        if (!mine()) return;
        this.inflight.delete(task.key);
        if (err && err.name === 'AbortError') return;
        const prev = this.failed.get(task.key);
        const count = (prev ? prev.count : 0) + 1;
        const permanent = err && typeof err.status === 'number' && err.status >= 400 && err.status < 500 && err.status !== 429;
        this.failed.set(task.key, { count, until: permanent ? Infinity : Date.now() + Math.min(30000, 500 * 2 ** count) });
        this.pump();
      });
  }

  destroy() {
    for (const f of this.inflight.values()) f.controller.abort();
    this.inflight.clear();
    clearTimeout(this.retryTimer);
    this.cache.clear();
    this.canvas.remove();
  }
}
