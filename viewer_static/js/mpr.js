// MPR (axial / coronal / sagittal with cross-reference lines) and the 3D MIP view, on the
// server's endpoints. DOM.
import { urls, api, getImage } from './api.js';
import { crossLine, pixelToPatient, stepAlong } from './crossref.js';
import { windowParam } from './presets.js';
import { el } from './ui.js';

const SVGNS = 'http://www.w3.org/2000/svg';
export const PLANES = ['axial', 'coronal', 'sagittal'];
const LINE_CLASS = { axial: 'xline-c', coronal: 'xline-a', sagittal: 'xline-b' };

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
  /** panes: {axial: element, coronal: element, sagittal: element} */
  constructor(panes, study, series, { t, window: win, point, dpr, onChange } = {}) {
    this.study = study;
    this.series = series;
    this.t = t;
    this.win = win;
    this.dpr = dpr || window.devicePixelRatio || 1;
    this.slab = 0;
    this.point = point || null;
    this.onChange = onChange || (() => {});
    this.geo = {};
    this.panes = {};
    for (const plane of PLANES) {
      const root = panes[plane];
      root.classList.add('pane');
      root.dataset.plane = plane;
      const img = el('img');
      img.alt = '';
      const svg = document.createElementNS(SVGNS, 'svg');
      const label = el('div', 'pane-label', t(`mpr.${plane}`));
      root.append(img, svg, label);
      this.panes[plane] = { root, img, svg, label, loader: new LatestImage(img) };
      this.bind(plane);
    }
  }

  async start() {
    const vol = await api.getVolume(this.study.study_uid, this.series.series_uid);
    this.volume = vol;
    if (!this.win && vol.default_window) this.win = { c: vol.default_window[0], w: vol.default_window[1] };
    if (!this.point) {
      const [nz, ny, nx] = vol.shape;
      const [dz, dy, dx] = vol.spacing;
      this.point = [0, 1, 2].map((k) => vol.origin[k] + vol.row_dir[k] * dx * nx / 2 + vol.col_dir[k] * dy * ny / 2 + vol.normal[k] * dz * nz / 2);
    }
    await this.update();
  }

  params(pane) {
    const W = pane.root.clientWidth || 100;
    const H = pane.root.clientHeight || 100;
    return {
      position: this.point.map((v) => v.toFixed(2)).join(','),
      viewport: `${Math.round(W * this.dpr)},${Math.round(H * this.dpr)}`,
      window: this.win ? windowParam(this.win) : '',
      slab: this.slab || '',
      mode: this.slab ? 'mip' : '',
      quality: 85,
    };
  }

  async update(only) {
    const s = this.study.study_uid;
    const se = this.series.series_uid;
    const jobs = PLANES.map(async (plane) => {
      const pane = this.panes[plane];
      const p = this.params(pane);
      const { slab, mode, quality, window: w, ...gp } = p;
      const geo = api.mprGeometry(s, se, plane, gp);
      if (!only || only.includes(plane)) await pane.loader.load(urls.mpr(s, se, plane, p)).catch(() => {});
      this.geo[plane] = await geo;
    });
    await Promise.all(jobs);
    this.drawLines();
    this.onChange(this);
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
      }
      pane.root.dataset.index = String(g.index);
      pane.label.textContent = `${this.t(`mpr.${plane}`)}  ${g.index + 1}/${this.countOf(plane)}${this.slab ? `  MIP ${this.slab}mm` : ''}`;
    }
  }

  countOf(plane) {
    const [nz, ny, nx] = this.volume.shape;
    return plane === 'axial' ? nz : plane === 'coronal' ? ny : nx;
  }

  bind(plane) {
    const pane = this.panes[plane];
    const r = pane.root;
    let down = false;
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
    };
    r.addEventListener('pointerdown', (e) => { down = true; r.setPointerCapture?.(e.pointerId); pick(e); });
    r.addEventListener('pointermove', (e) => { if (down) pick(e); });
    r.addEventListener('pointerup', () => { down = false; });
    r.addEventListener('wheel', (e) => {
      e.preventDefault();
      const g = this.geo[plane];
      if (!g) return;
      const step = Math.max(...(g.pixel_spacing || [1])) * Math.sign(e.deltaY);
      this.point = stepAlong(this.point, g.normal, -step);
      this.schedule([plane]);
    }, { passive: false });
  }

  schedule(planes) {
    this.pending = new Set([...(this.pending || []), ...planes]);
    if (this.timer) return;
    this.timer = setTimeout(async () => {
      this.timer = null;
      const only = [...this.pending];
      this.pending = null;
      await this.update(only);
    }, 60);
  }

  setSlab(mm) {
    this.slab = mm;
    this.update();
  }
}

/** A 3D MIP that rotates with a drag: small previews while dragging, full size after. */
export class MipView {
  constructor(root, study, series, { t, window: win, dpr, onUserChange } = {}) {
    this.root = root;
    this.study = study;
    this.series = series;
    this.win = win;
    this.dpr = dpr || window.devicePixelRatio || 1;
    this.yaw = 30;
    this.pitch = 10;
    this.onUserChange = onUserChange || (() => {});
    root.classList.add('pane', 'mip');
    this.img = el('img');
    this.img.alt = '';
    this.label = el('div', 'pane-label', t('mip.title'));
    root.append(this.img, this.label);
    this.loader = new LatestImage(this.img);
    this.busy = false;
    let last = null;
    root.addEventListener('pointerdown', (e) => { last = { x: e.clientX, y: e.clientY }; root.setPointerCapture?.(e.pointerId); });
    root.addEventListener('pointermove', (e) => {
      if (!last) return;
      this.rotate((e.clientX - last.x) * 0.6, (e.clientY - last.y) * 0.6, true);
      last = { x: e.clientX, y: e.clientY };
    });
    const up = () => { last = null; };
    root.addEventListener('pointerup', up);
    root.addEventListener('pointercancel', up);
    new ResizeObserver(() => this.refresh(false)).observe(root);
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

  size(preview) {
    const W = this.root.clientWidth || 256;
    const H = this.root.clientHeight || 256;
    const full = Math.min(1024, Math.round(Math.min(W, H) * this.dpr));
    return preview ? Math.min(256, full) : Math.max(16, full);
  }

  url(preview) {
    return urls.mip(this.study.study_uid, this.series.series_uid, {
      yaw: this.yaw.toFixed(1), pitch: this.pitch.toFixed(1), size: this.size(preview),
      window: this.win ? windowParam(this.win) : '', quality: preview ? 60 : 85,
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
      await this.loader.load(this.url(preview));
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
