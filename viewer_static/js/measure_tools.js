// Measurement tools of the desktop workspace (issue 18): the value under the pointer (CT值 in
// HU), length, ellipse and rectangle ROIs with statistics of the raw values, angle, Cobb
// angle, arrow and text notes. One MeasureStore for the page (every pane that shows the same
// image draws its measurements), saved through /api/measurements when the server has it and
// kept in memory when it has not (404). A MeasureLayer per StackViewport does the drawing and
// the pointer work; viewport.js only hands it the events (measureTools hooks).
import { request } from './api.js';
import { el } from './ui.js';
import { imageToScreen, screenToImage } from './viewport_math.js';
import {
  TOOL_POINTS, DRAG_TOOLS, computeValues, formatValues, valueAt, displayRescale, pt, box,
} from './measure.js';

const SVGNS = 'http://www.w3.org/2000/svg';
const enc = encodeURIComponent;

/** Toolbar tool → measurement kind ('measure' is the length tool). */
export const TOOL_KIND = {
  measure: 'length', ellipse: 'ellipse', rect: 'rect', angle: 'angle', cobb: 'cobb', arrow: 'arrow', text: 'text',
};

export const valuesUrl = (s, se, i, n) => `/api/render/studies/${enc(s)}/series/${enc(se)}/instances/${enc(i)}/frames/${n}/values`;

// ------------------------------------------------------------------ raw values of frames
/** Stored values of recently used frames (one request per frame, then local look-ups). */
export class ValueCache {
  constructor(max = 24, fetchFn = null) {
    this.max = max;
    this.map = new Map();
    this.fetchFn = fetchFn || ((u, o) => fetch(u, o));
  }

  static key(img) {
    return `${img.series_uid}|${img.sop_uid}|${img.frame}`;
  }

  /** The frame's values now: an object, null (none: colour, refused) or undefined (not loaded). */
  peek(img) {
    const e = this.map.get(ValueCache.key(img));
    return e ? e.data : undefined;
  }

  get(img) {
    const k = ValueCache.key(img);
    let e = this.map.get(k);
    if (e) {
      this.map.delete(k);
      this.map.set(k, e);
      return e.promise;
    }
    e = { data: undefined };
    e.promise = this.load(img).then((d) => { e.data = d; return d; }, () => {
      this.map.delete(k); // a network failure: asked again next time
      return null;
    });
    this.map.set(k, e);
    while (this.map.size > this.max) this.map.delete(this.map.keys().next().value);
    return e.promise;
  }

  async load(img) {
    const r = await this.fetchFn(valuesUrl(img.study_uid, img.series_uid, img.sop_uid, img.frame), {
      credentials: 'same-origin', headers: { Accept: 'application/octet-stream' },
    });
    if (!r.ok) {
      if (r.status === 429 || r.status >= 500) throw new Error(`HTTP ${r.status}`);
      return null; // colour image, too large, no access: no values for this frame
    }
    const buf = await r.arrayBuffer();
    const h = (k) => r.headers.get(k);
    const values = h('X-Value-Type') === 'float32' ? new Float32Array(buf) : new Int16Array(buf);
    const modality = h('X-Modality') || '';
    const slope = Number(h('X-Rescale-Slope'));
    const intercept = Number(h('X-Rescale-Intercept'));
    const rs = displayRescale(modality, Number.isFinite(slope) && slope ? slope : 1, Number.isFinite(intercept) ? intercept : 0);
    return { values, cols: Number(h('X-Columns')), rows: Number(h('X-Rows')), modality, ...rs };
  }
}

// ------------------------------------------------------------------ the page's measurements
const FIELDS = ['study_uid', 'series_uid', 'sop_uid', 'frame', 'kind', 'points', 'text', 'values'];

/** Every measurement of the page, saved through the API when it answers. */
export class MeasureStore {
  constructor(opts = {}) {
    this.items = [];
    this.remote = null; // null: not known yet, true: the API answers, false: no API (404)
    this.selected = null;
    this.seq = 0;
    this.listeners = [];
    this.onError = opts.onError || (() => {});
    this.req = opts.request || request;
  }

  subscribe(fn) {
    this.listeners.push(fn);
  }

  emit() {
    for (const fn of this.listeners) fn();
  }

  forImage(sop, frame) {
    return this.items.filter((m) => m.sop_uid === sop && m.frame === frame);
  }

  select(m) {
    this.selected = m;
    this.emit();
  }

  /** The saved measurements of an exam (nothing when the server has no measurement API). */
  async load(studyUid) {
    if (this.remote === false) return;
    try {
      const out = await this.req('GET', `/api/measurements?study_uid=${enc(studyUid)}`);
      this.remote = true;
      for (const m of (out && out.measurements) || []) {
        if (this.items.some((x) => x.id === m.id)) continue;
        this.items.push({ ...m, text: m.text || '', values: m.values || {}, cid: ++this.seq });
      }
      this.emit();
    } catch (e) {
      if (e.status === 404 || e.status === 405) this.remote = false;
    }
  }

  add(m) {
    m.cid = ++this.seq;
    this.items.push(m);
    this.selected = m;
    this.emit();
    this.persist(m, 'POST');
    return m;
  }

  update(m) {
    this.emit();
    this.persist(m, 'PUT');
  }

  remove(m) {
    this.items = this.items.filter((x) => x !== m);
    if (this.selected === m) this.selected = null;
    this.emit();
    if (m.id !== undefined && m.id !== null && this.remote !== false) {
      this.req('DELETE', `/api/measurements/${enc(m.id)}`).catch((e) => this.failed(e));
    }
  }

  body(m) {
    const out = {};
    for (const k of FIELDS) out[k] = m[k];
    return out;
  }

  failed(e) {
    if (e && e.status === 404) return; // gone already, or no such route
    this.onError(e);
  }

  async persist(m, method) {
    if (this.remote === false) return;
    if (method === 'PUT' && (m.id === undefined || m.id === null)) {
      m.dirty = true; // changed before its first save answered: saved after it
      return;
    }
    try {
      if (method === 'PUT') {
        await this.req('PUT', `/api/measurements/${enc(m.id)}`, this.body(m));
        return;
      }
      const out = await this.req('POST', '/api/measurements', this.body(m));
      this.remote = true;
      if (out && out.measurement && out.measurement.id !== undefined) m.id = out.measurement.id;
      if (!this.items.includes(m)) {
        if (m.id !== undefined) this.req('DELETE', `/api/measurements/${enc(m.id)}`).catch(() => {});
        return;
      }
      if (m.dirty) {
        m.dirty = false;
        this.persist(m, 'PUT');
      }
      this.emit();
    } catch (e) {
      if (e.status === 404 && method === 'POST') this.remote = false; // no measurement API: in memory
      else this.failed(e);
    }
  }

  /** Export the exam's measurements as a DICOM SR on the server. */
  exportSr(studyUid) {
    return this.req('POST', `/api/measurements/sr?study_uid=${enc(studyUid)}`, {});
  }
}

// ------------------------------------------------------------------ drawing and pointer work
function svgEl(tag, attrs, cls) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (cls) e.setAttribute('class', cls);
  return e;
}

const round2 = (v) => Math.round(v * 100) / 100;

function fmtValue(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) >= 100 ? 1 : 2);
}

/** A pane's measurement layer: draws the store's measurements of the shown image, makes new
 *  ones with the current tool, reads the value under the pointer. */
export class MeasureLayer {
  constructor(vp, opts) {
    this.vp = vp;
    this.store = opts.store;
    this.values = opts.values;
    this.t = opts.t || ((k) => k);
    this.prompt = opts.prompt || ((msg, v) => window.prompt(msg, v));
    this.pending = null;
    this.hoverPt = null;
    this.readout = el('div', 'ov ov-value');
    vp.root.append(this.readout);
    vp.root.addEventListener('pointerleave', () => this.hover(null));
    vp.root.addEventListener('pointerenter', () => { const img = this.image(); if (img) this.frameValues(img); });
  }

  handles(tool) {
    return Object.prototype.hasOwnProperty.call(TOOL_KIND, tool);
  }

  /** The image on screen: its UIDs, 1-based frame and pixel spacing. */
  image() {
    const vp = this.vp;
    if (!vp.stack || !vp.n) return null;
    const it = vp.item();
    return {
      study_uid: vp.study.study_uid, series_uid: vp.series.series_uid, sop_uid: it.sop, frame: it.frame,
      spacing: it.instance.pixel_spacing || null,
    };
  }

  toImage(p) {
    const { W, H } = this.vp.size();
    return screenToImage(p.x, p.y, this.vp.view, this.vp.geom, W, H);
  }

  toScreen(q) {
    const { W, H } = this.vp.size();
    return imageToScreen(q.x, q.y, this.vp.view, this.vp.geom, W, H);
  }

  frameValues(img) {
    if (this.vp.color) return Promise.resolve(null);
    return this.values.get(img);
  }

  peekValues(img) {
    return this.vp.color ? null : this.values.peek(img);
  }

  // ---- pointer
  down(p) {
    const kind = TOOL_KIND[this.vp.mode];
    const img = this.image();
    if (!kind || !img) return;
    const key = ValueCache.key(img);
    const q = this.toImage(p);
    if (!this.pending || this.pending.kind !== kind || this.pending.key !== key || DRAG_TOOLS.includes(kind)) {
      this.pending = { kind, key, points: [] };
    }
    this.pending.points.push(q);
    this.pending.moving = q;
    this.pending.downAt = p;
    if (kind === 'ellipse' || kind === 'rect') this.frameValues(img);
    this.render();
  }

  move(p) {
    if (!this.pending) return;
    this.pending.moving = this.toImage(p);
    this.render();
  }

  up(p) {
    const pd = this.pending;
    if (!pd || !pd.downAt) return;
    const q = this.toImage(p);
    const moved = Math.hypot(p.x - pd.downAt.x, p.y - pd.downAt.y) > 4;
    pd.downAt = null;
    if (pd.kind === 'text') {
      this.pending = null;
      this.render();
      const text = (this.prompt(this.t('meas.prompt'), '') || '').trim();
      if (text) this.finish('text', [pd.points[0]], text);
      return;
    }
    if (DRAG_TOOLS.includes(pd.kind)) {
      this.pending = null;
      if (moved) this.finish(pd.kind, [pd.points[0], q]);
      this.render();
      return;
    }
    if (moved) pd.points.push(q); // a drag gives a line at once: Cobb's line, the angle's first ray
    if (pd.points.length >= TOOL_POINTS[pd.kind]) {
      this.pending = null;
      this.finish(pd.kind, pd.points.slice(0, TOOL_POINTS[pd.kind]));
    }
    this.render();
  }

  cancel() {
    if (!this.pending) return false;
    this.pending = null;
    this.render();
    return true;
  }

  /** Pointer over the pane without a button (p null: it left): the value under it. */
  hover(p) {
    this.hoverPt = p;
    if (this.pending && p && !this.pending.downAt) {
      this.pending.moving = this.toImage(p);
      this.render();
    }
    this.updateReadout();
  }

  /** A new measurement: values from its points (ROI statistics from the frame's raw values). */
  finish(kind, points, text = '') {
    const img = this.image();
    if (!img) return null;
    const m = {
      study_uid: img.study_uid, series_uid: img.series_uid, sop_uid: img.sop_uid, frame: img.frame, kind,
      points: points.map((q) => [round2(q.x), round2(q.y)]), text, values: {},
    };
    const roi = kind === 'ellipse' || kind === 'rect';
    const px = roi ? this.peekValues(img) : null;
    m.values = computeValues(kind, m.points, img.spacing, px || null);
    this.store.add(m);
    if (roi && px === undefined) {
      this.frameValues(img).then((d) => {
        if (!d || !this.store.items.includes(m)) return;
        m.values = computeValues(kind, m.points, img.spacing, d);
        this.store.update(m);
      });
    }
    return m;
  }

  /** Delete the measurements of the image on screen. */
  clearImage() {
    const img = this.image();
    if (!img) return;
    for (const m of this.store.forImage(img.sop_uid, img.frame)) this.store.remove(m);
  }

  // ---- value under the pointer
  updateReadout() {
    const vp = this.vp;
    const p = this.hoverPt;
    const img = p ? this.image() : null;
    const clear = () => { this.readout.textContent = ''; vp.root.dataset.pixel = ''; };
    if (!img || vp.color) return clear();
    const q = this.toImage(p);
    const i = Math.floor(q.x);
    const j = Math.floor(q.y);
    if (i < 0 || j < 0 || i >= vp.geom.cols || j >= vp.geom.rows) return clear();
    const pos = this.t('meas.pos', { x: i, y: j });
    const px = this.peekValues(img);
    if (px === undefined) {
      this.readout.textContent = pos;
      vp.root.dataset.pixel = '';
      // fetched once the pointer (or the scrolled stack) rests a moment: no download per frame
      // while the wheel runs through a series under the pointer
      const key = ValueCache.key(img);
      if (this.fetchTimer && this.fetchKey === key) return undefined;
      clearTimeout(this.fetchTimer);
      this.fetchKey = key;
      this.fetchTimer = setTimeout(() => {
        this.fetchTimer = null;
        const now = this.hoverPt ? this.image() : null;
        if (!now || ValueCache.key(now) !== ValueCache.key(img)) return;
        this.frameValues(img).then(() => { if (this.hoverPt) this.updateReadout(); });
      }, 80);
      return undefined;
    }
    const v = px ? valueAt(px.values, px.cols, px.rows, q.x, q.y, px.slope, px.intercept) : null;
    if (v === null) {
      this.readout.textContent = pos;
      vp.root.dataset.pixel = `${i},${j},`;
      return undefined;
    }
    const label = px.unit === 'HU' ? this.t('meas.ct', { v: Math.round(v) }) : this.t('meas.value', { v: fmtValue(v) });
    this.readout.textContent = `${label}  ${pos}`;
    vp.root.dataset.pixel = `${i},${j},${v}`;
    return undefined;
  }

  // ---- drawing
  render() {
    const vp = this.vp;
    const svg = vp.svg;
    while (svg.firstChild) svg.firstChild.remove();
    const img = this.image();
    if (!img) return;
    const list = this.store.forImage(img.sop_uid, img.frame);
    for (const m of list) this.draw(m, m === this.store.selected);
    const pd = this.pending;
    if (pd && pd.key === ValueCache.key(img)) {
      const n = TOOL_POINTS[pd.kind];
      let pts;
      if (DRAG_TOOLS.includes(pd.kind)) pts = [pd.points[0], pd.moving || pd.points[0]];
      else if (pd.kind === 'text') pts = [pd.points[0]];
      else pts = pd.moving && pd.points.length < n ? [...pd.points, pd.moving] : [...pd.points];
      const roi = pd.kind === 'ellipse' || pd.kind === 'rect';
      const values = computeValues(pd.kind, pts, img.spacing, roi ? this.peekValues(img) || null : null);
      this.draw({ kind: pd.kind, points: pts, text: '', values }, false, true);
    }
    vp.root.dataset.measures = String(list.length);
    if (this.hoverPt) this.updateReadout();
  }

  label(g, x, y, text, cls = 'm-text') {
    if (!text) return;
    const node = svgEl('text', { x, y }, cls);
    const lines = text.split(' · ');
    if (lines.length === 1) node.textContent = text;
    else {
      lines.forEach((line, k) => {
        const span = svgEl('tspan', { x, dy: k ? '1.2em' : '0' });
        span.textContent = line;
        node.append(span);
      });
    }
    g.append(node);
  }

  line(g, a, b, cls = 'm-line') {
    g.append(svgEl('line', { x1: a.x, y1: a.y, x2: b.x, y2: b.y }, cls));
  }

  draw(m, selected, preview = false) {
    const g = svgEl('g', {}, `m-item mk-${m.kind}${selected ? ' m-sel' : ''}${preview ? ' m-preview' : ''}`);
    if (m.cid) g.dataset.cid = String(m.cid);
    g.dataset.kind = m.kind;
    const P = m.points.map((q) => this.toScreen(pt(q)));
    const text = formatValues(m.kind, m.values || {}, m.text);
    if (m.kind === 'length' && P.length >= 2) {
      this.line(g, P[0], P[1]);
      this.label(g, P[1].x + 6, P[1].y - 6, text);
    } else if ((m.kind === 'ellipse' || m.kind === 'rect') && P.length >= 2) {
      const r = box(P[0], P[1]);
      if (m.kind === 'ellipse') {
        g.append(svgEl('ellipse', { cx: (r.x0 + r.x1) / 2, cy: (r.y0 + r.y1) / 2, rx: (r.x1 - r.x0) / 2, ry: (r.y1 - r.y0) / 2 }, 'm-line m-shape'));
      } else {
        g.append(svgEl('rect', { x: r.x0, y: r.y0, width: r.x1 - r.x0, height: r.y1 - r.y0 }, 'm-line m-shape'));
      }
      this.label(g, r.x0, r.y1 + 16, text);
    } else if (m.kind === 'angle') {
      if (P.length >= 2) this.line(g, P[0], P[1]);
      if (P.length >= 3) this.line(g, P[1], P[2]);
      if (P.length >= 3) this.label(g, P[1].x + 8, P[1].y - 8, text);
    } else if (m.kind === 'cobb') {
      if (P.length >= 2) this.line(g, P[0], P[1]);
      if (P.length >= 4) this.line(g, P[2], P[3]);
      else if (P.length === 3) g.append(svgEl('circle', { cx: P[2].x, cy: P[2].y, r: 3 }, 'm-dot'));
      if (P.length >= 4) this.label(g, (P[2].x + P[3].x) / 2 + 8, (P[2].y + P[3].y) / 2 + 16, text);
    } else if (m.kind === 'arrow' && P.length >= 2) {
      this.arrow(g, P[1], P[0]);
      if (m.text) this.label(g, P[1].x + 6, P[1].y + 14, m.text, 'm-text m-note');
    } else if (m.kind === 'text' && P.length >= 1) {
      g.append(svgEl('circle', { cx: P[0].x, cy: P[0].y, r: 2.5 }, 'm-dot'));
      this.label(g, P[0].x + 6, P[0].y + 5, m.text, 'm-text m-note');
    }
    if (P.length === 1 && m.kind !== 'text') g.append(svgEl('circle', { cx: P[0].x, cy: P[0].y, r: 3 }, 'm-dot'));
    this.vp.svg.append(g);
  }

  /** A line from tail to head with an arrowhead at the head (the finding). */
  arrow(g, tail, head) {
    this.line(g, tail, head);
    const ang = Math.atan2(head.y - tail.y, head.x - tail.x);
    const s = 12;
    const pts = [-0.45, 0.45].map((d) => `${head.x - s * Math.cos(ang + d)},${head.y - s * Math.sin(ang + d)}`);
    g.append(svgEl('polygon', { points: `${head.x},${head.y} ${pts[0]} ${pts[1]}` }, 'm-head'));
  }
}
