// A stack viewport (DOM): shows one series frame by frame from server-rendered JPEGs,
// handles touch, mouse and wheel, prefetches in the background, approximates window and
// zoom changes instantly on the client and swaps in the exact render when the user pauses.
import { urls, getImage, api } from './api.js';
import { FrameLoader } from './loader.js';
import { prefetchOrder, progress, LinkEstimate, fullQualityFor } from './prefetch.js';
import { buildStack, imageGeometry, isColor } from './series.js';
import { cssFilter, dragWindow, presetWindow, windowParam, sameWindow } from './presets.js';
import {
  initialView, renderRequest, viewportParam, requestKey, placement, visibleRegion, zoomAt, panBy,
  rotateView, screenToImage, imageToScreen, unrotatedSize, dot, orientationMarkers, pixelsPerMm, scaleBar,
} from './viewport_math.js';
import { el } from './ui.js';
import { TileLayer, wantsTiles } from './tiles.js';

const SETTLE_MS = 140;
// Measurement labels (desktop only): loaded when the first measurement needs one, so the
// phone's film view does not wait for this module before its first image.
let measureLib = null;
let measureLoading = null;
function loadMeasure() {
  if (!measureLoading) measureLoading = import('./measure.js').then((m) => { measureLib = m; });
  return measureLoading;
}
const SVGNS = 'http://www.w3.org/2000/svg';

/** Modalities whose images are pictures (photographs, slides), counted 图 n/m, not 层. */
export const PICTURE_MODALITIES = ['ES', 'SM', 'XC', 'OP', 'GM'];

/** How the images of a series are counted: 'picture' (endoscopy, pathology, photos and
 *  ultrasound stills), 'frame' (one multi-frame instance: cine) or 'slice'. Pure. */
export function countKind(series, studyModality) {
  const insts = (series && series.instances) || [];
  const m = String((series && series.modality) || studyModality || '').toUpperCase();
  if (PICTURE_MODALITIES.includes(m)) return 'picture';
  const multiframe = insts.length === 1 && (insts[0].frames || 1) > 1;
  if (m === 'US' && insts.length && !multiframe && insts.every((i) => (i.frames || 1) <= 1)) return 'picture';
  return multiframe ? 'frame' : 'slice';
}

export class StackViewport {
  constructor(root, opts = {}) {
    this.root = root;
    this.t = opts.t || ((k) => k);
    this.onUserChange = opts.onUserChange || (() => {});
    this.onForbidden = opts.onForbidden || (() => {});
    this.onFirstImage = opts.onFirstImage || (() => {});
    this.onChange = opts.onChange || (() => {});
    this.dpr = opts.dpr || window.devicePixelRatio || 1;
    this.mode = opts.mode || 'scroll';
    this.desktop = !!opts.desktop;
    this.fullQuality = opts.fullQuality || 88;
    this.previewQuality = opts.previewQuality || 55;
    this.slowQuality = opts.slowQuality || 75;
    this.stack = null;
    this.index = 0;
    this.view = null;
    this.win = null; // null: the file's own window
    this.fileWin = null;
    this.invert = false;
    this.offset = 0;
    this.measures = new Map();
    this.measureTools = null; // desktop workspace: a MeasureLayer (measure_tools.js) takes the measurement tools
    this.settled = true;
    this.direction = 1;
    this.shown = null;
    this.firstShown = false;
    this.cineTimer = null;
    this.userFps = null; // cine speed chosen by the user (kept across series); null: the file's
    this.buildDom();
    const conn = typeof navigator !== 'undefined' ? navigator.connection : null;
    this.link = opts.link || new LinkEstimate(conn ? conn.downlink : null);
    this.loader = new FrameLoader({
      fetchBlob: (url, signal, task) => this.fetchFrame(url, signal, task),
      toUrl: (b) => URL.createObjectURL(b),
      revoke: (u) => URL.revokeObjectURL(u),
      concurrency: opts.concurrency || 4,
      onLoad: (task) => this.onLoaded(task),
      onError: (task, err) => this.onFailed(task, err),
    });
    this.bindEvents();
    this.resizeObserver = new ResizeObserver(() => this.requestRender(true));
    this.resizeObserver.observe(root);
  }

  buildDom() {
    const r = this.root;
    r.classList.add('vp');
    r.tabIndex = 0;
    this.stage = el('div', 'vp-stage');
    this.img = el('img', 'vp-img');
    this.img.alt = '';
    this.img.draggable = false;
    this.stage.append(this.img);
    this.svg = document.createElementNS(SVGNS, 'svg');
    this.svg.classList.add('vp-measure');
    // reference (localizer) lines of the other panes' images (desktop workspace)
    this.refSvg = document.createElementNS(SVGNS, 'svg');
    this.refSvg.classList.add('vp-ref');
    this.refLines = [];
    this.ov = {
      tl: el('div', 'ov ov-tl'), tr: el('div', 'ov ov-tr'), bl: el('div', 'ov ov-bl'), br: el('div', 'ov ov-br'),
    };
    this.msg = el('div', 'vp-msg hidden');
    this.msgText = el('div', 'vp-msg-text');
    this.retryBtn = el('button', 'vp-retry', this.t('state.retry'));
    this.retryBtn.type = 'button';
    this.msg.append(this.msgText, this.retryBtn);
    this.bar = el('div', 'vp-progress');
    this.barFill = el('div', 'vp-progress-fill');
    this.bar.append(this.barFill);
    r.append(this.stage, this.refSvg, this.svg, this.ov.tl, this.ov.tr, this.ov.bl, this.ov.br, this.msg, this.bar);
    if (this.desktop) {
      // orientation letters at the edges and a scale bar (desktop workspace only)
      this.dirs = {};
      for (const k of ['top', 'bottom', 'left', 'right']) {
        this.dirs[k] = el('div', `ov ov-dir ov-dir-${k}`);
        r.append(this.dirs[k]);
      }
      this.scaleEl = el('div', 'ov-scale hidden');
      this.scaleBarEl = el('div', 'ov-scale-bar');
      this.scaleLabelEl = el('div', 'ov-scale-label');
      this.scaleEl.append(this.scaleBarEl, this.scaleLabelEl);
      r.append(this.scaleEl);
    }
    this.retryBtn.addEventListener('click', (e) => {
      e.stopPropagation();
      this.msg.classList.add('hidden');
      for (const t of this.currentTasks()) this.loader.retry(t.key);
    });
  }

  /** Show a series of a study. */
  async load(study, series, opts = {}) {
    this.stop();
    this.loader.clear();
    this.study = study;
    this.series = series;
    this.stack = buildStack(series);
    this.countKind = countKind(series, study.modality);
    this.measures = new Map();
    const items = this.stack.items;
    // opts.start 'first' (the workspace's default) or 'middle' (the film view's)
    const first = this.stack.multiframe || opts.start === 'first';
    this.index = Math.max(0, Math.min(items.length - 1, opts.index ?? (first ? 0 : Math.floor((items.length - 1) / 2))));
    const inst = items[this.index]?.instance || series.instances[0];
    this.geom = imageGeometry(inst);
    this.color = isColor(inst);
    this.tiles?.destroy(); // big pictures (pathology, > 2048 px): drawn from the tile pyramid
    this.tiles = wantsTiles(this.geom, series.modality || study.modality) ? new TileLayer({
      stage: this.stage, root: this.root, onChange: () => this.requestRender(false),
      fetchTile: (url, signal, priority) => getImage(url, signal, priority) }) : null;
    this.view = initialView(this.geom);
    this.win = null;
    this.fileWin = null;
    this.invert = false;
    this.shown = null;
    this.firstShown = false;
    this.fps = null;
    this.img.removeAttribute('src');
    this.root.dataset.series = series.series_uid;
    this.positions = items.map((it) => it.position);
    this.schedule(); // the first request leaves now, not at the next animation frame
    this.requestRender(false);
    // The study JSON carries each series' display defaults (file window, frame rate,
    // colour), read from the header on the server: no extra request before the first image.
    if (series.display) {
      this.applyInfo(series.display);
      return;
    }
    const inst0 = series.instances[0];
    try {
      const info = await api.info(study.study_uid, series.series_uid, inst0.sop_uid);
      if (this.series !== series) return;
      this.applyInfo(info);
    } catch (e) {
      if (e.status === 403) this.onForbidden(e);
    }
  }

  applyInfo(info) {
    this.color = info.is_color;
    if (info.window && !info.is_color) this.fileWin = { c: info.window[0], w: info.window[1] };
    this.fps = info.fps;
    this.requestRender(false);
    this.onChange('info');
  }

  get n() {
    return this.stack ? this.stack.items.length : 0;
  }

  item(i = this.index) {
    return this.stack.items[i];
  }

  size() {
    return { W: this.root.clientWidth || 1, H: this.root.clientHeight || 1 };
  }

  currentWindow() {
    return this.win || this.fileWin;
  }

  winKey() {
    return this.win ? windowParam(this.win) : 'd';
  }

  /** Fetch one frame; a full frame that had the link to itself measures the link. */
  fetchFrame(url, signal, task) {
    const t0 = performance.now();
    return getImage(url, signal, this.renderPriority(task)).then((blob) => {
      if (task && task.exclusive) this.link.note(blob.size, performance.now() - t0);
      return blob;
    });
  }

  /** The server's render queue for a task: 0 the frame on screen (a session's first frame
   *  too), 1 a full frame near it, 2 previews and the rest of the prefetch. */
  renderPriority(task) {
    if (!task) return 1;
    if (task.index === this.index) return 0;
    return task.kind === 'full' ? 1 : 2;
  }

  /** JPEG quality of full frames: the view's own, lighter on a slow link. */
  quality() {
    return fullQualityFor(this.link, this.fullQuality, Math.min(this.fullQuality, this.slowQuality));
  }

  /** Full-quality task for frame i at the current view. */
  fullTask(i) {
    if (this.tiles) return null; // tiles instead of server-rendered regions
    const { W, H } = this.size();
    const req = renderRequest(this.view, this.geom, W, H, this.dpr);
    if (!req) return null;
    const it = this.item(i);
    const q = this.quality();
    const key = `f|${i}|${requestKey(req)}|${this.winKey()}|${this.invert ? 1 : 0}`;
    const url = urls.rendered(this.study.study_uid, this.series.series_uid, it.sop, it.frame, {
      viewport: viewportParam(req), window: this.win ? windowParam(this.win) : '',
      quality: q, invert: this.invert ? 'true' : '',
    });
    return { key, url, index: i, kind: 'full', region: req, win: this.win, invert: this.invert };
  }

  previewSide() {
    const { W, H } = this.size();
    return Math.max(64, Math.min(256, Math.round(Math.max(W, H) * this.dpr * 0.4)));
  }

  previewTask(i) {
    const it = this.item(i);
    const s = this.previewSide();
    const key = `p|${i}|${s}|${this.winKey()}|${this.invert ? 1 : 0}`;
    const url = urls.rendered(this.study.study_uid, this.series.series_uid, it.sop, it.frame, {
      viewport: `${s},${s}`, window: this.win ? windowParam(this.win) : '',
      quality: this.previewQuality, invert: this.invert ? 'true' : '',
    });
    const region = { sx: 0, sy: 0, sw: this.geom.cols, sh: this.geom.rows };
    return { key, url, index: i, kind: 'preview', region, win: this.win, invert: this.invert };
  }

  currentTasks() {
    return [this.fullTask(this.index), this.previewTask(this.index)].filter(Boolean);
  }

  /** The wish list for the loader, nearest first. */
  schedule() {
    if (!this.stack || !this.n || this.forbidden) return;
    const order = prefetchOrder(this.n, this.index, {
      direction: this.direction, fullRadius: this.cineTimer ? 0 : 2, nearRadius: 4,
    });
    const tasks = [];
    for (const o of order) {
      const t = o.kind === 'full' ? (this.settled ? this.fullTask(o.index) : null) : this.previewTask(o.index);
      if (t) tasks.push(t);
    }
    // the frame on screen gets the link to itself until it has arrived (not during cine: there
    // the previews of the frames ahead matter more than one sharp frame shown for 100 ms)
    if (!this.cineTimer && tasks[0] && tasks[0].kind === 'full' && tasks[0].index === this.index) tasks[0].exclusive = true;
    this.loader.want(tasks);
  }

  /** Best image available for the current frame. */
  best() {
    const i = this.index;
    const full = this.fullTask(i);
    if (full && this.loader.has(full.key)) return this.loader.done.get(full.key);
    const candidates = [];
    for (const d of this.loader.done.values()) if (d.task.index === i) candidates.push(d);
    if (!candidates.length) return null;
    const score = (d) => (d.task.kind === 'full' ? 4 : 0) + (sameWindow(d.task.win, this.win) ? 2 : 0)
      + (d.task.invert === this.invert ? 1 : 0) + d.used / 1e9;
    candidates.sort((a, b) => score(b) - score(a));
    return candidates[0];
  }

  onLoaded(task) {
    if (task.index === this.index) this.requestRender(false);
    else this.updateProgress();
  }

  onFailed(task, err) {
    if (err && err.status === 403) {
      this.forbidden = true;
      this.onForbidden(err);
      return;
    }
    if (task.index === this.index) this.requestRender(false);
    this.updateProgress();
  }

  requestRender(reschedule) {
    if (reschedule) this.needSchedule = true;
    if (this.raf) return;
    this.raf = requestAnimationFrame(() => {
      this.raf = null;
      if (this.needSchedule) {
        this.needSchedule = false;
        this.schedule();
      }
      this.render();
    });
  }

  /** Apply the current state to the DOM at once (also used in the same frame as input). */
  render() {
    if (!this.stack || !this.n) return;
    const { W, H } = this.size();
    const u = unrotatedSize(W, H, this.view.rot);
    const st = this.stage.style;
    st.width = `${u.w}px`;
    st.height = `${u.h}px`;
    st.transform = `translate(-50%, -50%) rotate(${this.view.rot}deg) scale(${this.view.flipH ? -1 : 1}, ${this.view.flipV ? -1 : 1})`;
    const b = this.best();
    if (b) {
      if (this.shownUrl !== b.url) this.swap(b.url);
      this.shown = b.task;
    }
    if (this.shown) {
      const p = placement(this.shown.region, this.view, this.geom, W, H);
      const s = this.img.style;
      s.left = `${p.left}px`;
      s.top = `${p.top}px`;
      s.width = `${p.width}px`;
      s.height = `${p.height}px`;
      const from = this.shown.win || this.fileWin;
      s.filter = this.color ? (this.shown.invert !== this.invert ? 'invert(1)' : 'none')
        : cssFilter(from, this.currentWindow(), this.shown.invert, this.invert);
    }
    const tiled = this.tiles && this.tiles.draw({ view: this.view, geom: this.geom, W, H, dpr: this.dpr,
      base: urls.rendered(this.study.study_uid, this.series.series_uid, this.item().sop, this.item().frame).replace(/\/rendered$/, ''),
      win: this.win, fileWin: this.fileWin, invert: this.invert, color: this.color, settled: this.settled });
    const exact = tiled ? tiled.complete : b && b.task.kind === 'full' && b.task.key === this.fullTask(this.index)?.key;
    this.root.dataset.index = String(this.index);
    this.root.dataset.loaded = exact ? 'exact' : b ? b.task.kind : 'none';
    this.root.dataset.zoom = this.view.zoom.toFixed(3);
    this.root.dataset.center = `${this.view.cx.toFixed(1)},${this.view.cy.toFixed(1)}`;
    const w = this.currentWindow();
    this.root.dataset.window = w ? `${w.c},${w.w}` : '';
    const pos = this.position();
    this.root.dataset.position = pos ? dot(pos, this.stack.normal || [0, 0, 1]).toFixed(2) : '';
    if (b && !this.firstShown) {
      this.firstShown = true;
      this.onFirstImage(b.task);
    }
    this.renderMessage(b || (tiled && tiled.drawn ? tiled : null));
    this.renderOverlay();
    this.renderRefLines();
    this.renderMeasures();
    this.updateProgress();
  }

  /** Reference lines [{x1, y1, x2, y2 (source pixels), cls, key}] drawn over the image. */
  setRefLines(lines) {
    this.refLines = lines || [];
    if (this.stack && this.view) this.renderRefLines();
  }

  renderRefLines() {
    const svg = this.refSvg;
    while (svg.firstChild) svg.firstChild.remove();
    const { W, H } = this.size();
    for (const ln of this.refLines) {
      const a = imageToScreen(ln.x1, ln.y1, this.view, this.geom, W, H);
      const b = imageToScreen(ln.x2, ln.y2, this.view, this.geom, W, H);
      const line = document.createElementNS(SVGNS, 'line');
      line.setAttribute('x1', a.x.toFixed(2)); line.setAttribute('y1', a.y.toFixed(2));
      line.setAttribute('x2', b.x.toFixed(2)); line.setAttribute('y2', b.y.toFixed(2));
      line.setAttribute('class', `ref-line ${ln.cls || ''}`.trim());
      if (ln.key !== undefined) line.dataset.from = String(ln.key);
      svg.append(line);
    }
    this.root.dataset.refLines = String(this.refLines.length);
  }

  swap(url) {
    this.shownUrl = url;
    const next = new Image();
    next.className = 'vp-img';
    next.alt = '';
    next.draggable = false;
    next.src = url;
    const apply = () => {
      if (this.shownUrl !== url) return;
      for (const k of ['left', 'top', 'width', 'height', 'filter']) next.style[k] = this.img.style[k];
      this.img.replaceWith(next);
      this.img = next;
      this.render();
    };
    if (!this.img.getAttribute('src')) {
      this.img.src = url;
      return;
    }
    next.decode().then(apply, apply);
  }

  renderMessage(b) {
    const fails = this.currentTasks().map((t) => this.loader.failure(t.key)).filter(Boolean);
    const offline = this.loader.networkFailures > 0;
    if (!b && fails.length) {
      this.msg.classList.remove('hidden');
      this.msgText.textContent = offline ? this.t('state.offline') : this.t('state.failed');
      this.retryBtn.classList.remove('hidden');
    } else if (!b) {
      this.msg.classList.remove('hidden');
      this.msgText.textContent = this.t('state.loading');
      this.retryBtn.classList.add('hidden');
    } else if (offline) {
      this.msg.classList.remove('hidden');
      this.msgText.textContent = this.t('state.offline');
      this.retryBtn.classList.add('hidden');
    } else {
      this.msg.classList.add('hidden');
    }
    this.root.dataset.failed = !b && fails.length ? '1' : '';
  }

  renderOverlay() {
    const t = this.t;
    const p = this.study.patient || {};
    const it = this.item();
    this.ov.tl.textContent = [
      `${p.name || ''} ${p.patient_id || ''}`.trim(),
      `${this.study.exam_date || ''} ${this.study.modality || ''}`.trim(),
      `${t('ov.series', { n: this.series.series_number ?? '' })} ${this.series.description || ''}`.trim(),
    ].join('\n');
    const total = this.n;
    const key = { picture: 'ov.picture', frame: 'ov.frame' }[this.countKind] || (this.stack.multiframe ? 'ov.frame' : 'ov.slice');
    const lines = [t(key, { n: this.index + 1, total })];
    const pos = this.position();
    if (pos && this.stack.normal) lines.push(t('ov.pos', { mm: dot(pos, this.stack.normal).toFixed(1) }));
    if (this.offset) lines.push(t('ov.offset', { mm: this.offset.toFixed(1) }));
    this.ov.tr.textContent = lines.join('\n');
    const w = this.currentWindow();
    this.ov.bl.textContent = !this.color && w ? t('ov.wl', { w: Math.round(w.w), c: Math.round(w.c) }) : '';
    this.ov.br.textContent = t('ov.zoom', { z: Math.round(this.view.zoom * 100) });
    if (this.desktop) this.renderAnnotations(it);
  }

  /** Orientation letters of the shown image under the current rotation and flips, and the
   *  scale bar at the current zoom (hidden without pixel spacing). */
  renderAnnotations(it) {
    const inst = it && it.instance;
    const m = orientationMarkers(inst && inst.image_orientation, this.view);
    for (const k of ['top', 'bottom', 'left', 'right']) this.dirs[k].textContent = m ? m[k] : '';
    this.root.dataset.orientation = m ? `${m.left},${m.right},${m.top},${m.bottom}` : '';
    const { W, H } = this.size();
    const ppm = pixelsPerMm(this.view, this.geom, W, H, inst && inst.pixel_spacing);
    const bar = ppm ? scaleBar(ppm, Math.min(W * 0.3, 220)) : null;
    this.scaleEl.classList.toggle('hidden', !bar);
    if (bar) {
      this.scaleBarEl.style.width = `${bar.px.toFixed(1)}px`;
      this.scaleLabelEl.textContent = bar.label;
    }
    this.root.dataset.scale = bar ? `${bar.mm}` : '';
  }

  updateProgress() {
    if (!this.stack) return;
    const f = progress(this.n, (i) => this.hasAny(i));
    this.barFill.style.width = `${(f * 100).toFixed(1)}%`;
    this.bar.classList.toggle('done', f >= 1);
    this.root.dataset.progress = f.toFixed(3);
  }

  hasAny(i) {
    if (!this._indexSet || this._indexSetSize !== this.loader.done.size) {
      this._indexSet = new Set([...this.loader.done.values()].map((d) => d.task.index));
      this._indexSetSize = this.loader.done.size;
    }
    return this._indexSet.has(i);
  }

  position(i = this.index) {
    return this.positions ? this.positions[i] : null;
  }

  // ---------------------------------------------------------------- state changes
  setIndex(i, user = false) {
    if (!this.stack) return;
    const j = Math.max(0, Math.min(this.n - 1, i));
    if (j === this.index) return;
    this.direction = j > this.index ? 1 : -1;
    this.index = j;
    this.requestRender(true);
    this.onChange('index');
    if (user) this.onUserChange('index', this);
  }

  scrollBy(d, user = true) {
    this.setIndex(this.index + d, user);
  }

  /** Interaction that changes the exact render: show the approximation now, re-render later. */
  unsettle() {
    this.settled = false;
    clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => {
      this.settled = true;
      this.requestRender(true);
    }, SETTLE_MS);
  }

  setView(view, user = false) {
    this.view = view;
    this.unsettle();
    this.render();
    if (user) this.onUserChange('view', this);
  }

  setWindow(win, user = false, immediate = false) {
    if (this.color) return;
    this.win = win;
    if (immediate) this.requestRender(true);
    else this.unsettle();
    this.render();
    if (user) this.onUserChange('window', this);
  }

  applyPreset(id) {
    this.setWindow(id === 'default' ? null : presetWindow(id, this.fileWin), true, true);
  }

  toggleInvert() {
    this.invert = !this.invert;
    this.render();
    this.requestRender(true);
    this.onUserChange('window', this);
  }

  rotate() {
    this.setView(rotateView(this.view, 90), true);
  }

  /** Mirror the displayed image left-right (flipH) or top-bottom (flipV) on screen. A flip
   *  after a rotation mirrors the screen's axis, so it maps to the other image axis. */
  flip(horizontal) {
    const screenAxisIsImageX = (this.view.rot % 180 === 0) === horizontal;
    const k = screenAxisIsImageX ? 'flipH' : 'flipV';
    this.setView({ ...this.view, [k]: !this.view[k] }, true);
  }

  fit() {
    const v = initialView(this.geom);
    this.setView({ ...v, rot: this.view.rot, flipH: this.view.flipH, flipV: this.view.flipV }, true);
  }

  reset() {
    this.win = null;
    this.invert = false;
    this.setView(initialView(this.geom), true);
    this.onUserChange('window', this);
  }

  // ---------------------------------------------------------------- cine
  get playing() {
    return !!this.cineTimer;
  }

  /** Frames per second of the cine loop: the user's choice, else the file's, else 10. */
  cineFps() {
    return this.userFps || this.fps || 10;
  }

  play() {
    if (this.cineTimer || this.n < 2) return;
    const fps = this.cineFps();
    this.root.dataset.fps = String(fps);
    this.cineTimer = setInterval(() => this.setIndex((this.index + 1) % this.n, true), 1000 / fps);
    this.onChange('cine');
  }

  /** Set the cine speed (null: the file's own); a running loop continues at the new speed. */
  setFps(fps) {
    this.userFps = fps > 0 ? fps : null;
    if (!this.cineTimer) return;
    clearInterval(this.cineTimer);
    this.cineTimer = null;
    this.play();
  }

  stop() {
    if (!this.cineTimer) return;
    clearInterval(this.cineTimer);
    this.cineTimer = null;
    this.root.dataset.fps = '';
    this.requestRender(true);
    this.onChange('cine');
  }

  // ---------------------------------------------------------------- input
  bindEvents() {
    const r = this.root;
    this.pointers = new Map();
    r.addEventListener('pointerdown', (e) => this.pointerDown(e));
    r.addEventListener('pointermove', (e) => this.pointerMove(e));
    r.addEventListener('pointerup', (e) => this.pointerUp(e));
    r.addEventListener('pointercancel', (e) => this.pointerUp(e));
    r.addEventListener('contextmenu', (e) => e.preventDefault());
    r.addEventListener('wheel', (e) => this.wheel(e), { passive: false });
    r.addEventListener('dblclick', (e) => { e.preventDefault(); this.fit(); });
    window.addEventListener('online', () => this.loader.resume());
  }

  local(e) {
    const b = this.root.getBoundingClientRect();
    return { x: e.clientX - b.left, y: e.clientY - b.top };
  }

  pointerDown(e) {
    if (!this.stack || e.target.closest('button, select, input')) return;
    this.root.setPointerCapture?.(e.pointerId);
    const p = this.local(e);
    this.pointers.set(e.pointerId, { ...p, x0: p.x, y0: p.y, t0: performance.now(), type: e.pointerType, button: e.button });
    if (this.pointers.size === 1) {
      let tool = this.mode;
      if (e.pointerType === 'mouse' && e.button === 2) tool = 'window';
      if (e.pointerType === 'mouse' && e.button === 1) tool = 'pan';
      if (tool === 'window' && this.color) tool = this.desktop ? 'pan' : 'scroll';
      this.drag = { tool, x: p.x, y: p.y, startWin: this.currentWindow() || { c: 128, w: 256 }, acc: 0, view: this.view };
      if (this.measureTools && this.measureTools.handles(tool)) {
        this.drag.tool = 'annotate';
        this.measureTools.down(p, e);
      } else if (tool === 'measure') {
        loadMeasure();
        const ip = screenToImage(p.x, p.y, this.view, this.geom, ...Object.values(this.size()));
        this.drag.measure = { a: ip, b: ip };
      }
      if (this.playing && tool === 'scroll') this.stop();
    } else if (this.pointers.size === 2) {
      this.drag = { tool: 'pinch' };
      this.pinchPrev = this.pinchState();
    }
    e.preventDefault();
  }

  pinchState() {
    const [a, b] = [...this.pointers.values()];
    return { mx: (a.x + b.x) / 2, my: (a.y + b.y) / 2, d: Math.hypot(a.x - b.x, a.y - b.y) || 1 };
  }

  pointerMove(e) {
    const ptr = this.pointers.get(e.pointerId);
    if (!ptr && this.measureTools && !this.pointers.size) this.measureTools.hover(this.local(e));
    if (!ptr || !this.drag) return;
    const p = this.local(e);
    const dx = p.x - ptr.x;
    const dy = p.y - ptr.y;
    ptr.x = p.x;
    ptr.y = p.y;
    const { W, H } = this.size();
    const d = this.drag;
    if (d.tool === 'pinch' && this.pointers.size >= 2) {
      const s = this.pinchState();
      const prev = this.pinchPrev;
      let v = zoomAt(this.view, s.d / prev.d, s.mx, s.my, this.geom, W, H);
      v = panBy(v, s.mx - prev.mx, s.my - prev.my, this.geom, W, H);
      this.pinchPrev = s;
      this.setView(v, true);
    } else if (d.tool === 'scroll') {
      d.acc += dy;
      const step = Math.max(2, Math.min(14, 400 / Math.max(1, this.n)));
      const k = Math.trunc(d.acc / step);
      if (k) {
        d.acc -= k * step;
        this.scrollBy(k);
      }
    } else if (d.tool === 'window') {
      const tot = { x: p.x - ptr.x0, y: p.y - ptr.y0 };
      this.setWindow(dragWindow(d.startWin, tot.x, tot.y), true);
    } else if (d.tool === 'pan') {
      this.setView(panBy(this.view, dx, dy, this.geom, W, H), true);
    } else if (d.tool === 'zoom') {
      this.setView(zoomAt(this.view, Math.exp(-dy / 150), ptr.x0, ptr.y0, this.geom, W, H), true);
    } else if (d.tool === 'annotate') {
      this.measureTools.move(p);
    } else if (d.tool === 'measure') {
      d.measure.b = screenToImage(p.x, p.y, this.view, this.geom, W, H);
      this.renderMeasures(d.measure);
    }
    e.preventDefault();
  }

  pointerUp(e) {
    const ptr = this.pointers.get(e.pointerId);
    if (!ptr) return;
    this.pointers.delete(e.pointerId);
    const d = this.drag;
    if (d && d.tool === 'annotate') this.measureTools.up(this.local(e));
    if (d && d.tool === 'measure' && d.measure) {
      const list = this.measures.get(this.index) || [];
      if (Math.hypot(d.measure.a.x - d.measure.b.x, d.measure.a.y - d.measure.b.y) > 1) list.push(d.measure);
      this.measures.set(this.index, list);
      this.renderMeasures();
      this.onChange('measure');
    }
    // double tap (touch) → fit
    if (ptr.type !== 'mouse' && this.pointers.size === 0 && d && d.tool !== 'pinch') {
      const now = performance.now();
      const moved = Math.hypot(ptr.x - ptr.x0, ptr.y - ptr.y0);
      if (moved < 12 && now - ptr.t0 < 300) {
        if (this.lastTap && now - this.lastTap.t < 350 && Math.hypot(ptr.x - this.lastTap.x, ptr.y - this.lastTap.y) < 40) {
          this.lastTap = null;
          this.fit();
        } else {
          this.lastTap = { t: now, x: ptr.x, y: ptr.y };
        }
      }
    }
    if (this.pointers.size === 1 && d && d.tool === 'pinch') {
      // one finger left after a pinch: keep panning with it, no scroll jump
      const [rest] = [...this.pointers.values()];
      this.drag = { tool: 'none', x: rest.x, y: rest.y };
    } else if (this.pointers.size === 0) {
      this.drag = null;
    }
  }

  wheel(e) {
    if (!this.stack) return;
    e.preventDefault();
    const p = this.local(e);
    const { W, H } = this.size();
    if (e.ctrlKey || e.metaKey) {
      this.setView(zoomAt(this.view, Math.exp(-e.deltaY / 300), p.x, p.y, this.geom, W, H), true);
      return;
    }
    this.wheelAcc = (this.wheelAcc || 0) + e.deltaY;
    const step = e.deltaMode === 1 ? 1 : 50;
    const k = Math.trunc(this.wheelAcc / step);
    if (k) {
      this.wheelAcc -= k * step;
      this.scrollBy(Math.sign(k) * Math.min(Math.abs(k), 5));
    }
  }

  // ---------------------------------------------------------------- measurement overlay
  renderMeasures(active) {
    if (this.measureTools) {
      this.measureTools.render();
      return;
    }
    const svg = this.svg;
    while (svg.firstChild) svg.firstChild.remove();
    const list = [...(this.measures.get(this.index) || [])];
    if (active) list.push(active);
    if (!list.length) return;
    if (!measureLib) {
      loadMeasure().then(() => this.renderMeasures(active));
      return;
    }
    const { formatLength } = measureLib;
    const { W, H } = this.size();
    const spacing = this.item().instance.pixel_spacing;
    for (const m of list) {
      const a = imageToScreen(m.a.x, m.a.y, this.view, this.geom, W, H);
      const b = imageToScreen(m.b.x, m.b.y, this.view, this.geom, W, H);
      const line = document.createElementNS(SVGNS, 'line');
      line.setAttribute('x1', a.x); line.setAttribute('y1', a.y);
      line.setAttribute('x2', b.x); line.setAttribute('y2', b.y);
      line.setAttribute('class', 'm-line');
      const text = document.createElementNS(SVGNS, 'text');
      text.setAttribute('x', b.x + 6); text.setAttribute('y', b.y - 6);
      text.setAttribute('class', 'm-text');
      text.textContent = formatLength(m.a, m.b, spacing);
      svg.append(line, text);
    }
  }

  clearMeasures() {
    if (this.measureTools) {
      this.measureTools.clearImage();
      return;
    }
    this.measures = new Map();
    this.renderMeasures();
  }

  destroy() {
    this.stop();
    this.loader.clear();
    this.tiles?.destroy();
    this.resizeObserver.disconnect();
  }
}

export { visibleRegion };
