// MPR (axial / coronal / sagittal with cross-reference lines) and the 3D MIP view, on the
// server's endpoints. DOM.
import { urls, api, getImage, getJSON } from './api.js';
import { crossLine, pixelToPatient, patientToPixel, stepAlong, obliqueAngles, pointerAngle, wrapDeg } from './crossref.js';
import { windowParam, presetWindow, dragWindow, cssFilter, sameWindow } from './presets.js';
import { el } from './ui.js';

const SVGNS = 'http://www.w3.org/2000/svg';
export const PLANES = ['axial', 'coronal', 'sagittal'];
const LINE_CLASS = { axial: 'xline-c', coronal: 'xline-a', sagittal: 'xline-b' };
/** Rotation handles: where on a crosshair line (fraction of the pane's half size from the
 *  centre) and how near (CSS px) a press must be to grab one. */
const HANDLE_AT = 0.75;
const HANDLE_GRAB = 12;
/** Slab projections of the MPR route (render/volume.py SLAB_MODES). */
export const SLAB_MODES = ['mip', 'minip', 'avg'];

/** Latest-only image loader for one pane: a new request cancels the one before. */
class LatestImage {
  constructor(img) {
    this.img = img;
    this.ctrl = null;
    this.url = null;
  }

  async load(url) {
    if (this.ctrl) this.ctrl.abort();
    const ctrl = new AbortController();
    this.ctrl = ctrl;
    const blob = await getImage(url, ctrl.signal);
    if (this.ctrl !== ctrl) return false;
    const u = URL.createObjectURL(blob);
    const old = this.url;
    this.url = u;
    this.img.src = u;
    try { await this.img.decode(); } catch (e) { /* shown anyway */ }
    if (old) URL.revokeObjectURL(old);
    return true;
  }
}

export class MprSet {
  /** panes: {axial: element, coronal: element, sagittal: element}; tool: the workspace's
   *  left-button tool ('window': left drag windows; the right button always does). */
  constructor(panes, study, series, { t, window: win, point, dpr, onChange, tool, slab, slabMode, row, examLabel, onUser } = {}) {
    this.study = study;
    this.row = row || 0;
    this.examLabel = examLabel || '';
    // the user moved the crosshair ('point'), windowed ('window') or turned the crosshair
    // ('angle'): the workspace repeats it in the other exam's MPR
    this.onUser = onUser || (() => {});
    this.angle = 0; // crosshair rotation in the axial plane (degrees): oblique coronal/sagittal
    this.headUp = false;
    this.series = series;
    this.t = t;
    this.win = win;
    this.dpr = dpr || window.devicePixelRatio || 1;
    this.slab = slab || 0;
    this.slabMode = SLAB_MODES.includes(slabMode) ? slabMode : 'mip';
    this.tool = tool || 'scroll';
    this.point = point || null;
    this.onChange = onChange || (() => {});
    this.geo = {};
    this.panes = {};
    for (const plane of PLANES) {
      const root = panes[plane];
      root.classList.add('pane');
      root.dataset.plane = plane;
      root.dataset.row = String(this.row);
      const img = el('img');
      img.alt = '';
      const svg = document.createElementNS(SVGNS, 'svg');
      const label = el('div', 'pane-label', t(`mpr.${plane}`));
      root.append(img, svg, label);
      if (this.examLabel) root.append(el('div', 'mpr-exam', this.examLabel));
      this.panes[plane] = { root, img, svg, label, loader: new LatestImage(img), seq: 0, shownWin: null };
      if (plane === 'axial') {
        const reset = el('button', 'btn mpr-reset hidden', t('mpr.angle.reset'));
        reset.type = 'button';
        reset.dataset.i18n = 'mpr.angle.reset';
        reset.title = t('tip.mpr.rotate');
        reset.addEventListener('pointerdown', (e) => e.stopPropagation());
        reset.addEventListener('click', (e) => { e.stopPropagation(); this.setAngle(0, true); });
        root.append(reset);
        this.panes[plane].reset = reset;
      }
      this.bind(plane);
    }
  }

  async start() {
    const full = api.getVolume(this.study.study_uid, this.series.series_uid);
    this.preview().catch(() => {}); // meanwhile; not waited for
    const vol = await full;
    this.volume = vol;
    this.fileWin = vol.default_window ? { c: vol.default_window[0], w: vol.default_window[1] } : null;
    if (!this.win) this.win = this.fileWin;
    // head up: the volume's slices run towards the feet from the top (render/volume.py head_up)
    const ortho = await api.mprGeometry(this.study.study_uid, this.series.series_uid, 'coronal', {});
    this.headUp = ortho.column_vector[0] * vol.normal[0] + ortho.column_vector[1] * vol.normal[1] + ortho.column_vector[2] * vol.normal[2] < 0;
    if (!this.point) {
      const [nz, ny, nx] = vol.shape;
      const [dz, dy, dx] = vol.spacing;
      this.point = [0, 1, 2].map((k) => vol.origin[k] + vol.row_dir[k] * dx * nx / 2 + vol.col_dir[k] * dy * ny / 2 + vol.normal[k] * dz * nz / 2);
    }
    await this.update();
  }

  /** The route's plane of a pane: its own, or 'oblique' (with yaw / pitch) while the
   *  crosshair is turned. */
  routePlane(plane) {
    const a = this.angle ? obliqueAngles(plane, this.angle, this.headUp) : null;
    return a ? { name: 'oblique', yaw: a.yaw.toFixed(2), pitch: a.pitch.toFixed(2) } : { name: plane };
  }

  /** Progressive start (issue 18): while the server builds the full volume, the three
   *  planes from its quick coarse volume (X-Quality: coarse), replaced by the full ones. */
  async preview() {
    const s = this.study.study_uid;
    const se = this.series.series_uid;
    const vol = await getJSON(`${urls.volume(s, se)}?coarse=1`);
    if (vol.quality !== 'coarse' || this.volume) return;
    const [nz, ny, nx] = vol.shape;
    const [dz, dy, dx] = vol.spacing;
    const point = [0, 1, 2].map((k) => vol.origin[k] + vol.row_dir[k] * dx * nx / 2 + vol.col_dir[k] * dy * ny / 2 + vol.normal[k] * dz * nz / 2);
    const win = this.win || (vol.default_window ? { c: vol.default_window[0], w: vol.default_window[1] } : null);
    for (const plane of PLANES) {
      const pane = this.panes[plane];
      const p = { ...this.params(pane, point), window: win ? windowParam(win) : '', coarse: 1 };
      pane.loader.load(urls.mpr(s, se, plane, p)).then((shown) => {
        if (!shown || this.geo[plane]) return;
        const { naturalWidth: ow, naturalHeight: oh } = pane.img; // placed as drawLines will
        const W = pane.root.clientWidth;
        const H = pane.root.clientHeight;
        const f = Math.min(W / ow, H / oh);
        Object.assign(pane.img.style, { left: `${(W - ow * f) / 2}px`, top: `${(H - oh * f) / 2}px`, width: `${ow * f}px`, height: `${oh * f}px` });
        pane.root.dataset.quality = 'coarse';
      }).catch(() => {});
    }
  }

  params(pane, point = this.point) {
    const W = pane.root.clientWidth || 100;
    const H = pane.root.clientHeight || 100;
    const rp = this.routePlane(pane.root.dataset.plane);
    return {
      ...(rp.name === 'oblique' ? { yaw: rp.yaw, pitch: rp.pitch } : {}),
      position: point.map((v) => v.toFixed(2)).join(','),
      viewport: `${Math.round(W * this.dpr)},${Math.round(H * this.dpr)}`,
      window: this.win ? windowParam(this.win) : '',
      slab: this.slab || '',
      mode: this.slab ? this.slabMode : '',
      quality: 85,
    };
  }

  /** Panes whose render is on its way ('loading') or shown ('done'): data-state, for tests. */
  markLoading(planes) {
    for (const plane of planes) {
      const pane = this.panes[plane];
      pane.seq++; // a render still on its way is no longer the latest
      pane.root.dataset.state = 'loading';
    }
  }

  async update(only) {
    const s = this.study.study_uid;
    const se = this.series.series_uid;
    const planes = only || PLANES;
    for (const plane of planes) this.panes[plane].root.dataset.state = 'loading';
    const jobs = PLANES.map(async (plane) => {
      const pane = this.panes[plane];
      const p = this.params(pane);
      const { slab, mode, quality, window: w, ...gp } = p;
      const route = this.routePlane(plane).name;
      const geo = api.mprGeometry(s, se, route, gp);
      if (planes.includes(plane)) {
        const seq = ++pane.seq;
        const win = this.win ? { ...this.win } : null;
        pane.root.dataset.slab = this.slab ? `${this.slabMode}:${this.slab}` : '';
        pane.root.dataset.yaw = p.yaw || '';
        pane.root.dataset.pitch = p.pitch || '';
        const shown = await pane.loader.load(urls.mpr(s, se, route, p)).catch(() => false);
        if (shown) { pane.shownWin = win; pane.root.dataset.quality = 'full'; }
        if (seq === pane.seq) pane.root.dataset.state = 'done';
        this.filter(plane);
      }
      // a point outside this volume (the other exam's, through the offset): the plane's
      // last geometry stays, the pane says so
      try {
        this.geo[plane] = await geo;
        pane.root.dataset.out = '';
      } catch (e) {
        pane.root.dataset.out = '1';
      }
    });
    await Promise.all(jobs);
    this.drawLines();
    this.onChange(this);
  }

  /** The instant approximation of the current window on an image rendered with another. */
  filter(plane) {
    const pane = this.panes[plane];
    const from = pane.shownWin;
    pane.img.style.filter = from && this.win && !sameWindow(from, this.win) ? cssFilter(from, this.win) : 'none';
    pane.root.dataset.window = this.win ? windowParam(this.win) : '';
  }

  /** A new window on every plane: shown at once (CSS), rendered exactly now (immediate: a
   *  preset) or after the drag pauses. */
  setWindow(win, immediate = false, user = false) {
    this.win = win ? { c: win.c, w: win.w } : null;
    if (user) this.onUser('window', this);
    for (const plane of PLANES) this.filter(plane);
    if (immediate) {
      clearTimeout(this.timer);
      this.timer = null;
      this.pending = null;
      return this.update();
    }
    this.schedule(PLANES);
    return null;
  }

  /** A window preset ('default': the volume's own window). */
  applyPreset(id) {
    return this.setWindow(id === 'default' ? this.fileWin : presetWindow(id, this.fileWin), true);
  }

  layout(plane) {
    const pane = this.panes[plane];
    const g = this.geo[plane];
    const W = pane.root.clientWidth;
    const H = pane.root.clientHeight;
    const [ow, oh] = g.output_size;
    const s = Math.min(W / ow, H / oh);
    return { s, left: (W - ow * s) / 2, top: (H - oh * s) / 2, ow, oh };
  }

  /** 'MIP 10mm', 'MinIP 5mm', '平均 20mm' (none without a slab). */
  slabLabel() {
    return this.slab ? `${this.t(`mpr.mode.${this.slabMode}`)} ${this.slab}mm` : '';
  }

  drawLines() {
    for (const plane of PLANES) {
      const g = this.geo[plane];
      const pane = this.panes[plane];
      if (!g) continue;
      const L = this.layout(plane);
      const st = pane.img.style;
      st.left = `${L.left}px`; st.top = `${L.top}px`; st.width = `${L.ow * L.s}px`; st.height = `${L.oh * L.s}px`;
      while (pane.svg.firstChild) pane.svg.firstChild.remove();
      for (const other of PLANES) {
        if (other === plane || !this.geo[other]) continue;
        const ln = crossLine(g, this.geo[other].normal, this.point);
        if (!ln) continue;
        const line = document.createElementNS(SVGNS, 'line');
        line.setAttribute('x1', L.left + ln.x1 * L.s); line.setAttribute('y1', L.top + ln.y1 * L.s);
        line.setAttribute('x2', L.left + ln.x2 * L.s); line.setAttribute('y2', L.top + ln.y2 * L.s);
        line.setAttribute('class', LINE_CLASS[other]);
        line.dataset.other = other;
        pane.svg.append(line);
        if (plane === 'axial') for (const h of this.handles(ln, L)) pane.svg.append(this.handleDot(h, other));
      }
      pane.root.dataset.index = g.index === null || g.index === undefined ? '' : String(g.index);
      pane.root.dataset.angle = this.angle.toFixed(1);
      pane.label.textContent = this.paneLabel(plane, g);
    }
    if (this.panes.axial.reset) this.panes.axial.reset.classList.toggle('hidden', !this.angle);
  }

  paneLabel(plane, g) {
    const slab = this.slabLabel();
    const oblique = this.angle && plane !== 'axial';
    const where = oblique ? `${this.t('mpr.oblique')} ${this.angle.toFixed(1)}°` : `${g.index + 1}/${this.countOf(plane)}`;
    const turned = this.angle && plane === 'axial' ? `  ∠${this.angle.toFixed(1)}°` : '';
    return `${this.t(`mpr.${plane}`)}  ${where}${turned}${slab ? `  ${slab}` : ''}`;
  }

  /** Rotation handles on a crosshair line of the axial pane (CSS px of the pane): both
   *  sides of the centre, HANDLE_AT of the pane's half size away. */
  handles(ln, L) {
    const c = this.screenPoint('axial', L);
    const dx = ln.x2 - ln.x1;
    const dy = ln.y2 - ln.y1;
    const n = Math.hypot(dx, dy) || 1;
    const r = HANDLE_AT * Math.min(L.ow, L.oh) * L.s / 2;
    return [1, -1].map((k) => ({ x: c.x + (k * r * dx) / n, y: c.y + (k * r * dy) / n }));
  }

  handleDot(h, other) {
    const dot = document.createElementNS(SVGNS, 'circle');
    dot.setAttribute('cx', h.x.toFixed(2)); dot.setAttribute('cy', h.y.toFixed(2)); dot.setAttribute('r', '5');
    dot.setAttribute('class', `xhandle ${LINE_CLASS[other]}`);
    dot.dataset.other = other;
    return dot;
  }

  /** The crosshair centre in a pane (CSS px from the pane's top-left). */
  screenPoint(plane, L = this.layout(plane)) {
    const px = patientToPixel(this.geo[plane], this.point);
    return { x: L.left + px.u * L.s, y: L.top + px.v * L.s };
  }

  /** The crosshair's turn (degrees, 0: orthogonal planes): the coronal and sagittal panes
   *  show oblique planes through the point. */
  setAngle(deg, user = false) {
    const a = Math.abs(wrapDeg(deg)) < 0.05 ? 0 : Math.round(wrapDeg(deg) * 10) / 10;
    if (a === this.angle) return;
    this.angle = a;
    if (!this.volume) return; // started later: the first renders use the angle
    this.drawLines();
    this.schedule(['coronal', 'sagittal']);
    if (user) this.onUser('angle', this);
  }

  rotateTo(drag, e) {
    const b = this.panes.axial.root.getBoundingClientRect();
    const a = pointerAngle(drag.cx, drag.cy, e.clientX - b.left, e.clientY - b.top);
    this.setAngle(drag.angle0 + a - drag.a0, true);
  }

  /** A press on a rotation handle (or with Shift) in the axial pane: a rotation drag. */
  rotateStart(plane, e) {
    if (plane !== 'axial' || !this.geo.axial || !this.geo.coronal) return null;
    const b = this.panes.axial.root.getBoundingClientRect();
    const x = e.clientX - b.left;
    const y = e.clientY - b.top;
    const near = [...this.panes.axial.svg.querySelectorAll('.xhandle')]
      .some((h) => Math.hypot(Number(h.getAttribute('cx')) - x, Number(h.getAttribute('cy')) - y) <= HANDLE_GRAB);
    if (!near && !e.shiftKey) return null;
    const c = this.screenPoint('axial');
    return { rotate: true, cx: c.x, cy: c.y, a0: pointerAngle(c.x, c.y, x, y), angle0: this.angle };
  }

  countOf(plane) {
    const [nz, ny, nx] = this.volume.shape;
    return plane === 'axial' ? nz : plane === 'coronal' ? ny : nx;
  }

  /** A new crosshair point (from the other exam's MPR): every plane follows. */
  setPoint(p) {
    this.point = p.slice();
    if (!this.volume) return;
    this.drawLines();
    this.schedule(PLANES);
  }

  bind(plane) {
    const pane = this.panes[plane];
    const r = pane.root;
    let drag = null;
    const pick = (e) => {
      const g = this.geo[plane];
      if (!g) return;
      const b = r.getBoundingClientRect();
      const L = this.layout(plane);
      const u = (e.clientX - b.left - L.left) / L.s;
      const v = (e.clientY - b.top - L.top) / L.s;
      this.point = pixelToPatient(g, u, v);
      this.drawLines();
      this.schedule(PLANES.filter((p) => p !== plane));
      this.onUser('point', this);
    };
    r.addEventListener('contextmenu', (e) => e.preventDefault());
    r.addEventListener('pointerdown', (e) => {
      r.setPointerCapture?.(e.pointerId);
      // right button, or the window tool: drag the window (right widens, down raises the centre)
      const windowing = e.button === 2 || (this.tool === 'window' && e.button === 0);
      const rot = !windowing && e.button === 0 ? this.rotateStart(plane, e) : null;
      drag = rot || (windowing ? { x: e.clientX, y: e.clientY, start: this.win || this.fileWin || { c: 40, w: 400 } } : { pick: true });
      if (drag.pick) pick(e);
      e.preventDefault();
    });
    r.addEventListener('pointermove', (e) => {
      if (!drag) return;
      if (drag.pick) pick(e);
      else if (drag.rotate) this.rotateTo(drag, e);
      else this.setWindow(dragWindow(drag.start, e.clientX - drag.x, e.clientY - drag.y), false, true);
    });
    const up = () => { drag = null; };
    r.addEventListener('pointerup', up);
    r.addEventListener('pointercancel', up);
    r.addEventListener('wheel', (e) => {
      e.preventDefault();
      const g = this.geo[plane];
      if (!g) return;
      const step = Math.max(...(g.pixel_spacing || [1])) * Math.sign(e.deltaY);
      this.point = stepAlong(this.point, g.normal, -step);
      this.schedule([plane]);
      this.onUser('point', this);
    }, { passive: false });
  }

  schedule(planes) {
    this.pending = new Set([...(this.pending || []), ...planes]);
    this.markLoading(planes);
    if (this.timer) return;
    this.timer = setTimeout(async () => {
      this.timer = null;
      const only = [...this.pending];
      this.pending = null;
      await this.update(only);
    }, 60);
  }

  /** Slab thickness (mm, 0: none) and projection (mip / minip / avg). */
  setSlab(mm, mode = this.slabMode) {
    this.slab = mm > 0 ? mm : 0;
    if (SLAB_MODES.includes(mode)) this.slabMode = mode;
    return this.update();
  }
}

/** 3D renderings offered in a 3D pane: MIP, or volume rendering with a preset. */
export const MIP_MODES = ['mip', 'bone', 'cta', 'lung', 'soft'];
/** The presets' own opacity windows (render/vr.py PRESETS): where a right-drag starts. */
export const VR_WINDOWS = { bone: { c: 500, w: 700 }, cta: { c: 350, w: 500 }, lung: { c: -650, w: 700 }, soft: { c: 150, w: 500 } };

/** A 3D MIP or volume rendering that rotates with a drag: small previews (256 px at most)
 * while dragging, the full size on release (or after a pause). A mode/preset selector sits
 * in the pane's corner; a right-drag moves a VR preset's opacity ramp (window).
 * `onUserChange(kind, view)`: 'rotate' while dragging, 'settle' on release, 'mode' on a new
 * rendering; the workspace repeats them in linked 3D panes. */
export class MipView {
  constructor(root, study, series, { t, window: win, dpr, onUserChange, mode } = {}) {
    this.root = root;
    this.study = study;
    this.series = series;
    this.win = win;
    this.dpr = dpr || window.devicePixelRatio || 1;
    this.yaw = 30;
    this.pitch = 10;
    this.mode = MIP_MODES.includes(mode) ? mode : 'mip';
    this.t = t;
    this.onUserChange = onUserChange || (() => {});
    root.classList.add('pane', 'mip');
    this.img = el('img');
    this.img.alt = '';
    this.label = el('div', 'pane-label');
    this.select = this.modeSelect(t);
    root.append(this.img, this.label, this.select);
    this.setLabel();
    this.root.dataset.mode = this.mode;
    this.loader = new LatestImage(this.img);
    this.busy = false;
    this.vrWin = null; // the user's opacity window of a VR preset (null: the preset's own)
    let last = null;
    let moved = false;
    root.addEventListener('contextmenu', (e) => e.preventDefault());
    root.addEventListener('pointerdown', (e) => {
      if (e.target === this.select) return; // the selector keeps its own clicks
      // right button on a VR preset: move the opacity ramp (like windowing a 2D image)
      const win = e.pointerType === 'mouse' && e.button === 2 && this.mode !== 'mip';
      last = { x: e.clientX, y: e.clientY, x0: e.clientX, y0: e.clientY, win, start: win ? (this.vrWin || VR_WINDOWS[this.mode]) : null };
      moved = false;
      root.setPointerCapture?.(e.pointerId);
    });
    root.addEventListener('pointermove', (e) => {
      if (!last) return;
      moved = true;
      if (last.win) {
        this.vrWin = dragWindow(last.start, e.clientX - last.x0, e.clientY - last.y0);
        this.refresh(true);
        return;
      }
      this.rotate((e.clientX - last.x) * 0.6, (e.clientY - last.y) * 0.6, true);
      last.x = e.clientX; last.y = e.clientY;
    });
    const up = () => {
      if (last && moved) { this.settle(); if (!last.win) this.onUserChange('settle', this); }
      last = null;
    };
    root.addEventListener('pointerup', up);
    root.addEventListener('pointercancel', up);
    new ResizeObserver(() => this.refresh(false)).observe(root);
  }

  modeSelect(t) {
    const sel = el('select', 'btn mip-mode');
    sel.setAttribute('aria-label', t('mip.mode'));
    sel.dataset.i18nTitle = 'tip.vr';
    sel.title = t('tip.vr');
    for (const m of MIP_MODES) {
      const o = el('option', '', t(`mip.${m}`));
      o.value = m;
      o.dataset.i18n = `mip.${m}`;
      sel.append(o);
    }
    sel.value = this.mode;
    Object.assign(sel.style, { position: 'absolute', right: '6px', top: '4px', zIndex: '2', minHeight: '28px' });
    sel.addEventListener('pointerdown', (e) => e.stopPropagation());
    sel.addEventListener('change', () => this.setMode(sel.value, true));
    return sel;
  }

  setLabel() {
    const key = this.mode === 'mip' ? 'mip.title' : 'vr.title';
    this.label.dataset.i18n = key;
    this.label.textContent = this.t(key);
  }

  /** 'mip' or a volume rendering preset (bone, cta, lung, soft). */
  setMode(mode, user = false) {
    if (!MIP_MODES.includes(mode) || mode === this.mode) return;
    this.mode = mode;
    this.vrWin = null; // each preset starts from its own ramp
    this.select.value = mode;
    this.root.dataset.mode = mode;
    this.setLabel();
    this.show(false);
    if (user) this.onUserChange('mode', this);
  }

  rotate(dyaw, dpitch, user) {
    this.setAngles(this.yaw + dyaw, this.pitch + dpitch, user);
  }

  setAngles(yaw, pitch, user = false) {
    this.yaw = ((yaw + 540) % 360) - 180;
    this.pitch = Math.max(-89, Math.min(89, pitch));
    this.refresh(true);
    if (user) this.onUserChange('rotate', this);
  }

  /** The drag ended: the full size now rather than after the pause. */
  settle() {
    clearTimeout(this.fullTimer);
    this.show(false);
  }

  size(preview) {
    const W = this.root.clientWidth || 256;
    const H = this.root.clientHeight || 256;
    const full = Math.min(1024, Math.round(Math.min(W, H) * this.dpr));
    return preview ? Math.min(256, full) : Math.max(16, full);
  }

  url(preview) {
    const vr = this.mode !== 'mip';
    // volume rendering: the preset's opacity window, or the one right-dragged; MIP: the 2D view's
    const win = vr ? this.vrWin : this.win;
    return urls.mip(this.study.study_uid, this.series.series_uid, {
      yaw: this.yaw.toFixed(1), pitch: this.pitch.toFixed(1), size: this.size(preview),
      window: win ? windowParam(win) : '', quality: preview ? 60 : 85,
      mode: vr ? 'vr' : '', preset: vr ? this.mode : '',
    });
  }

  /** While dragging ask for previews one at a time; after a pause the full size. */
  refresh(preview) {
    clearTimeout(this.fullTimer);
    this.fullTimer = setTimeout(() => this.show(false), 250);
    if (!preview) return;
    if (this.busy) { this.again = true; return; }
    this.show(true);
  }

  async show(preview) {
    if (preview) this.busy = true;
    else this.again = false; // the full render supersedes any preview still wanted
    try {
      const mode = this.mode;
      if (await this.loader.load(this.url(preview)) === false) throw new Error('superseded');
      this.root.dataset.shown = mode;
      this.root.dataset.window = mode !== 'mip' && this.vrWin ? windowParam(this.vrWin) : '';
      this.root.dataset.yaw = this.yaw.toFixed(1);
      this.root.dataset.pitch = this.pitch.toFixed(1);
      this.root.dataset.quality = preview ? 'preview' : 'full';
      this.place();
    } catch (e) { /* the next move asks again */ }
    if (preview) {
      this.busy = false;
      if (this.again) { this.again = false; this.show(true); }
    }
  }

  place() {
    const W = this.root.clientWidth;
    const H = this.root.clientHeight;
    const n = Math.min(W, H);
    const s = this.img.style;
    s.width = `${n}px`; s.height = `${n}px`; s.left = `${(W - n) / 2}px`; s.top = `${(H - n) / 2}px`;
  }

  destroy() {}
}
