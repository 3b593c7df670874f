// Desktop comparison workspace: layouts, any series of any of the patient's exams in any
// viewport, linked scrolling by patient position, linked zoom/pan/window/3D rotation, MPR and
// 3D MIP, measurement, report panel.
import { api, urls } from './api.js';
import { StackViewport } from './viewport.js';
import { MprSet, MipView, PLANES } from './mpr.js';
import { presetsFor } from './presets.js';
import { sortedSeries, byDateDesc } from './series.js';
import { syncIndex, alignOffset, parallel } from './sync.js';
import { transferView } from './viewport_math.js';
import { imagePlane, referenceLine, offsetVector, shiftPoint } from './crossref.js';
import refWords from './i18n/refline.js';
import { el, t, initI18n, langButton, renderReport, watchSession, fatal, patientLine, applyI18n } from './ui.js';
import words from './i18n/workspace.js';
import { initSend } from './send.js';
import { MAX_PANES, layoutFor, findPrior } from './hanging.js';
import cmpWords from './i18n/compare.js';
import measWords from './i18n/measure.js';
import { MeasureStore, MeasureLayer, ValueCache } from './measure_tools.js';
import { formatValues } from './measure.js';

t.add(words);
t.add(cmpWords);
t.add(measWords);
t.add(refWords);
const $ = (id) => document.getElementById(id);
const LAYOUTS = { '1x1': [1, 1], '1x2': [1, 2], '2x1': [2, 1], '2x2': [2, 2] };

const state = {
  studies: [],
  cells: [],
  active: 0,
  layout: '1x2',
  tool: 'scroll',
  sync: { scroll: true, zoom: true, window: true },
  mpr: null, // the active exam's MprSet (the first row)
  mprs: [], // every exam's MprSet: two linked exams side by side → 2 rows of 3 planes
  refLines: readPref('cf-ws-reflines', 'on') !== 'off',
  overlay: readPref('cf-ws-overlay', 'on') !== 'off',
  firstSlice: readPref('cf-ws-first', 'first') === 'middle' ? 'middle' : 'first',
  fps: null,
};
// measurements of every pane (drawn wherever the same image is shown), raw values of frames
const measures = new MeasureStore({ onError: (e) => fatalToast(t('meas.failed', { msg: e.message || String(e) })) });
const frameValues = new ValueCache();

function readPref(key, dflt) {
  try { return localStorage.getItem(key) || dflt; } catch (e) { return dflt; }
}

function writePref(key, value) {
  try { localStorage.setItem(key, value); } catch (e) { /* private mode */ }
}

async function loadStudies() {
  const path = location.pathname.split('/').filter(Boolean);
  const q = new URLSearchParams(location.search);
  let uids = path.length > 1 ? decodeURIComponent(path[1]).split(',') : [];
  let patientId = q.get('patient_id');
  const details = new Map();
  for (const u of uids) details.set(u, await api.study(u));
  if (!patientId && uids.length) patientId = details.get(uids[0]).patient.patient_id;
  if (patientId) {
    const list = await api.studies({ patient_id: patientId, per_page: 100 });
    for (const s of list.studies) if (!details.has(s.study_uid)) details.set(s.study_uid, await api.study(s.study_uid));
  }
  return { studies: byDateDesc([...details.values()]), first: uids };
}

function makeCell(i) {
  const cell = el('div', 'ws-cell');
  cell.dataset.cell = String(i);
  const head = el('div', 'ws-cell-head');
  const title = el('span', 'title');
  const link = el('button', 'btn link-btn', t('ws.link'));
  link.type = 'button';
  link.dataset.i18nTitle = 'tip.link';
  link.title = t('tip.link');
  const align = el('button', 'btn align-btn', t('ws.align'));
  align.type = 'button';
  align.dataset.i18nTitle = 'tip.align';
  align.title = t('tip.align');
  const rep = el('button', 'btn report-btn', t('ws.report'));
  rep.type = 'button';
  rep.disabled = true; // until the pane shows an exam
  head.append(title, rep, link, align);
  const body = el('div', 'ws-cell-body');
  const empty = el('div', 'ws-empty', t('ws.empty'));
  body.append(empty);
  cell.append(head, body);
  const c = { i, cell, head, title, link, align, body, empty, kind: null, vp: null, mip: null, linked: false, rep, reportOpen: false };
  rep.addEventListener('click', () => { c.reportOpen = !c.reportOpen; drawCellReport(c); setActive(c.i); });
  link.addEventListener('click', () => { c.linked = !c.linked; updateCellHead(c); if (c.linked) broadcast(c, 'index'); });
  align.addEventListener('click', () => alignCell(c));
  cell.addEventListener('pointerdown', () => setActive(c.i), true);
  cell.addEventListener('dragover', (e) => { e.preventDefault(); });
  cell.addEventListener('drop', (e) => {
    e.preventDefault();
    const [s, se] = (e.dataTransfer.getData('text/plain') || '').split('|');
    const study = state.studies.find((x) => x.study_uid === s);
    const series = study && study.series.find((x) => x.series_uid === se);
    if (series) { setActive(c.i); assign(c, study, series); }
  });
  return c;
}

function updateCellHead(c) {
  c.link.classList.toggle('on', c.linked);
  c.link.textContent = c.linked ? t('ws.linked') : t('ws.link');
  c.cell.dataset.linked = c.linked ? '1' : '';
  const s = c.study;
  c.title.textContent = s ? `${c.hang ? `[${t(`cmp.${c.hang}`)}] ` : ''}${s.exam_date} ${s.modality} ${c.series.description || ''}${c.kind === 'mip' ? ' · 3D' : ''}` : '';
  c.rep.textContent = t('ws.report');
  c.rep.disabled = !s;
}

/** renderReport, with the exam it belongs to named under the title (N exams side by side). */
function showReport(box, c, opts) {
  renderReport(box, c.study, opts);
  const s = c.study;
  const label = el('p', 'report-exam', `${t('cmp.report.exam')}: ${[s.exam_date, s.modality, s.description, s.accession_number].filter(Boolean).join(' · ')}`);
  label.dataset.study = s.study_uid || '';
  box.querySelector('.report-title').after(label);
}

/** A pane's own report over its image, while its report button is on. */
function drawCellReport(c) {
  if (c.reportBox) c.reportBox.remove();
  c.reportBox = null;
  c.rep.classList.toggle('on', c.reportOpen && !!c.study);
  if (!c.reportOpen || !c.study) return;
  c.reportBox = el('div', 'ws-cell-report report');
  showReport(c.reportBox, c, { pages: false });
  const pdf = c.reportBox.querySelector('#report-pdf');
  if (pdf) pdf.removeAttribute('id'); // the report column's link keeps the id
  c.body.append(c.reportBox);
}

function setActive(i) {
  state.active = i;
  state.cells.forEach((c) => c.cell.classList.toggle('active', c.i === i));
  const c = state.cells[i];
  if (c && c.study) {
    showReport($('report'), c, { pages: true });
    buildPresets();
  }
  updateCineButton();
}

/** 播放/停止 of the active pane. */
function updateCineButton() {
  const c = activeCell();
  const playing = !!(c && c.vp && c.vp.playing);
  const b = $('cine');
  b.textContent = t(playing ? 'tool.stop' : 'tool.cine');
  b.classList.toggle('on', playing);
  b.setAttribute('aria-pressed', String(playing));
}

/** Text corners, orientation letters and scale bar of every pane: shown or hidden. */
function setOverlay(on) {
  state.overlay = on;
  writePref('cf-ws-overlay', on ? 'on' : 'off');
  for (const c of state.cells) if (c.vp) c.vp.root.classList.toggle('ov-off', !on);
  const b = $('overlay');
  b.textContent = t(on ? 'tool.overlay.hide' : 'tool.overlay.show');
  b.setAttribute('aria-pressed', String(on));
  b.classList.toggle('on', !on);
}

/** Cine speed of every pane (0: each file's own frame rate). */
function setFps(fps) {
  state.fps = fps > 0 ? fps : null;
  $('cine-fps').value = String(state.fps || 0);
  for (const c of state.cells) if (c.vp) c.vp.setFps(state.fps);
}

function stepFps(d) {
  const opts = [...$('cine-fps').options].map((o) => Number(o.value)).filter((v) => v > 0).sort((x, y) => x - y);
  const c = activeCell();
  const cur = state.fps || (c && c.vp ? c.vp.cineFps() : 10);
  const next = d > 0 ? opts.find((v) => v > cur) ?? opts[opts.length - 1]
    : [...opts].reverse().find((v) => v < cur) ?? opts[0];
  setFps(next);
}

const HELP_KEYS = [
  ['S W P Z M', 'help.k.tools'], ['E B A C X T', 'help.k.meas'], ['L', 'help.k.measlist'], ['Esc', 'help.k.cancel'], ['↑ ↓ ← →', 'help.k.scroll'], ['Home End', 'help.k.ends'],
  ['key.space', 'help.k.cine'], ['[ ]', 'help.k.fps'], ['I', 'help.k.invert'], ['R', 'help.k.rotate'],
  ['H', 'help.k.fliph'], ['V', 'help.k.flipv'], ['O', 'help.k.overlay'], ['G', 'help.k.reflines'], ['0', 'help.k.reset'],
  ['Delete', 'help.k.clear'], ['1 2 3 4', 'help.k.layout'], ['? Esc', 'help.k.help'],
];

function buildHelpKeys() {
  const table = $('help-keys');
  table.textContent = '';
  for (const [keys, what] of HELP_KEYS) {
    const tr = el('tr');
    const k = el('td');
    for (const key of (keys.startsWith('key.') ? [t(keys)] : keys.split(' '))) k.append(el('kbd', null, key), ' ');
    tr.append(k, el('td', null, t(what)));
    table.append(tr);
  }
}

function helpOpen() {
  return !$('help').classList.contains('hidden');
}

function toggleHelp(open = !helpOpen()) {
  $('help').classList.toggle('hidden', !open);
  if (open) { buildHelpKeys(); $('help-close').focus(); }
}

function clearCell(c) {
  if (c.vp) c.vp.destroy();
  c.vp = null;
  c.mip = null;
  c.body.textContent = '';
}

function assign(c, study, series, kind = 'stack') {
  clearCell(c);
  c.hang = null;
  c.study = study;
  c.series = series;
  c.kind = kind;
  const root = el('div');
  c.body.append(root);
  // Staff receive the series even when images are switched off for patients; only an
  // empty series list means there is nothing this user may see.
  if (!series) {
    root.className = 'vp notice';
    root.append(el('p', 'notice-text', t('state.noimages')));
  } else if (kind === 'mip') {
    const win = c.lastWindow || null;
    // a second linked 3D pane starts at the first one's rotation and rendering
    const lead = c.linked && state.cells.find((x) => x !== c && x.linked && x.mip);
    c.mip = new MipView(root, study, series, { t, window: win, mode: lead ? lead.mip.mode : c.mipMode, onUserChange: (k) => { c.mipMode = c.mip.mode; broadcast(c, k); } });
    if (lead) { c.mip.yaw = lead.mip.yaw; c.mip.pitch = lead.mip.pitch; }
    c.mip.refresh(true);
  } else {
    c.vp = new StackViewport(root, {
      t, desktop: true, concurrency: 6, mode: state.tool,
      onUserChange: (k) => broadcast(c, k),
      onForbidden: () => { root.textContent = ''; root.append(el('p', 'notice-text', t('state.noimages'))); },
      onChange: (k) => {
        if (k === 'cine' && c === activeCell()) updateCineButton();
        if (k === 'index') scheduleRefLines();
      },
    });
    c.vp.root.classList.toggle('ov-off', !state.overlay);
    c.vp.measureTools = new MeasureLayer(c.vp, { store: measures, values: frameValues, t });
    c.vp.userFps = state.fps;
    c.vp.load(study, series, { start: state.firstSlice });
  }
  scheduleRefLines();
  updateCellHead(c);
  drawCellReport(c);
  if (c.i === state.active) setActive(c.i);
}

function stackCells() {
  return state.cells.filter((c) => c.vp && c.vp.stack);
}

/** Apply a change of `src` to every other linked viewport. */
function broadcast(src, kind) {
  if (!src.linked) return;
  for (const c of state.cells) {
    if (c === src || !c.linked) continue;
    // linked 3D panes (two exams side by side) turn together and show the same rendering
    if (kind === 'rotate' && src.mip && c.mip) c.mip.setAngles(src.mip.yaw, src.mip.pitch);
    if (kind === 'settle' && src.mip && c.mip) c.mip.settle();
    if (kind === 'mode' && src.mip && c.mip) { c.mip.setMode(src.mip.mode); c.mipMode = src.mip.mode; }
    if (!src.vp || !c.vp || !src.vp.stack || !c.vp.stack) continue;
    const a = src.vp;
    const b = c.vp;
    if (kind === 'index' && state.sync.scroll) {
      const pos = a.position();
      if (pos && a.stack.normal && b.stack.normal && parallel(a.stack.normal, b.stack.normal)) {
        const k = syncIndex(pos, a.stack.normal, a.offset, b.positions, b.offset);
        if (k >= 0) b.setIndex(k);
      } else if (!a.stack.normal && !b.stack.normal && a.n > 1 && b.n > 1) {
        b.setIndex(Math.round((a.index / (a.n - 1)) * (b.n - 1)));
      }
    } else if (kind === 'view' && state.sync.zoom) {
      b.setView(transferView(a.view, a.geom, b.geom));
    } else if (kind === 'window' && state.sync.window && !a.color && !b.color) {
      b.invert = a.invert;
      b.setWindow(a.win);
    }
  }
}

function alignCell(c) {
  if (!c.vp || !c.vp.stack) return;
  const leader = state.cells.find((x) => x !== c && x.linked && x.vp && x.vp.position());
  const pos = c.vp.position();
  if (!leader || !pos || !leader.vp.stack.normal) return;
  c.vp.offset = alignOffset(leader.vp.position(), leader.vp.stack.normal, leader.vp.offset, pos);
  c.vp.offsetAxis = leader.vp.stack.normal; // the offset as a vector in patient coordinates
  c.vp.render();
  scheduleRefLines();
}

// ---------------------------------------------------------------- reference lines
/** A pane's manual offset (对齐) as a vector in patient coordinates. */
function offsetOf(c) {
  return c && c.vp ? offsetVector(c.vp.offset, c.vp.offsetAxis || (c.vp.stack && c.vp.stack.normal)) : [0, 0, 0];
}

/** Two panes share coordinates: the same frame of reference, or linked (their manual
 *  offsets then map one onto the other). */
function sameFrame(a, b) {
  const fa = a.series && a.series.frame_of_reference_uid;
  if (fa && fa === (b.series && b.series.frame_of_reference_uid)) return true;
  return a.linked && b.linked;
}

function scheduleRefLines() {
  if (scheduleRefLines.raf) return;
  scheduleRefLines.raf = requestAnimationFrame(() => { scheduleRefLines.raf = null; updateRefLines(); });
}

/** Each 2D pane shows where the other panes' current images cut it (none when parallel). */
function updateRefLines() {
  const shown = state.mpr ? [] : state.cells.slice(0, (LAYOUTS[state.layout] || [1, 1]).reduce((x, y) => x * y, 1));
  const cells = shown.filter((c) => c.vp && c.vp.stack && c.vp.stack.items.length);
  for (const dst of state.cells) {
    if (!dst.vp || !dst.vp.stack) continue;
    const lines = [];
    const dPlane = state.refLines && cells.includes(dst) ? imagePlane(dst.vp.item().instance) : null;
    for (const src of dPlane ? cells : []) {
      if (src === dst || !sameFrame(src, dst)) continue;
      // the source image in the destination's coordinates (its offset off, the destination's on)
      const off = shiftPoint([0, 0, 0], offsetOf(src), offsetOf(dst));
      const sPlane = imagePlane(src.vp.item().instance, off);
      const ln = sPlane && referenceLine(dPlane, sPlane);
      if (ln) lines.push({ ...ln, key: src.i, cls: `ref-${src.i}` });
    }
    dst.vp.setRefLines(lines);
  }
}

function setRefLines(on) {
  state.refLines = on;
  writePref('cf-ws-reflines', on ? 'on' : 'off');
  $('ref-lines').checked = on;
  updateRefLines();
}

function setLayout(name) {
  if (state.mpr) exitMpr();
  state.layout = name;
  const [rows, cols] = LAYOUTS[name];
  const grid = $('grid');
  grid.style.gridTemplateRows = `repeat(${rows}, minmax(0, 1fr))`;
  grid.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
  const n = rows * cols;
  while (state.cells.length < n) state.cells.push(makeCell(state.cells.length));
  grid.textContent = '';
  for (const c of state.cells.slice(0, n)) grid.append(c.cell);
  for (const c of state.cells.slice(n)) { if (c.vp) c.vp.stop(); }
  if (state.active >= n) setActive(0);
  for (const b of document.querySelectorAll('[data-layout]')) b.classList.toggle('on', b.dataset.layout === name);
  grid.dataset.layout = name;
  scheduleRefLines();
}

function activeCell() {
  return state.cells[state.active];
}

/** The crosshair point of a 2D pane: its image's centre of view, in patient coordinates. */
function viewPoint(vp) {
  const pos = vp.position();
  if (!pos) return null;
  const inst = vp.item().instance;
  const o = inst.image_orientation;
  const sp = inst.pixel_spacing || [1, 1];
  return [0, 1, 2].map((k) => pos[k] + o[k] * sp[1] * vp.view.cx + o[3 + k] * sp[0] * vp.view.cy);
}

/** The panes MPR shows: the active one, and beside it the first other linked pane showing a
 *  reformattable stack (two exams compared: 2 rows of axial / coronal / sagittal). */
function mprCells(c) {
  const ok = (x) => x.vp && x.vp.stack && x.vp.stack.normal;
  const shown = state.cells.slice(0, (LAYOUTS[state.layout] || [1, 1]).reduce((x, y) => x * y, 1));
  const other = c.linked ? shown.find((x) => x !== c && x.linked && ok(x)) : null;
  return other ? [c, other] : [c];
}

function enterMpr() {
  const c = activeCell();
  if (!c || !c.vp || !c.vp.stack || !c.vp.stack.normal) { if (c && c.vp) fatalToast(t('mpr.none')); return; }
  const cells = mprCells(c);
  const grid = $('grid');
  grid.textContent = '';
  grid.style.gridTemplateRows = `repeat(${cells.length}, minmax(0, 1fr))`;
  grid.style.gridTemplateColumns = 'repeat(3, minmax(0, 1fr))';
  grid.dataset.layout = cells.length > 1 ? 'mpr2' : 'mpr';
  const point = viewPoint(c.vp);
  const win = c.vp.currentWindow();
  state.mprs = cells.map((cc, row) => {
    const panes = {};
    for (const p of PLANES) {
      const cell = el('div', 'ws-cell');
      const body = el('div', 'ws-cell-body');
      const pane = el('div');
      body.append(pane);
      cell.append(body);
      grid.append(cell);
      panes[p] = pane;
    }
    const off = offsetOf(cc);
    const set = new MprSet(panes, cc.study, cc.series, {
      t, window: win, point: point && shiftPoint(point, offsetOf(c), off), tool: state.tool, row,
      examLabel: cells.length > 1 ? mprExamText(cc) : '',
      slab: Number($('slab').value) || 0, slabMode: $('slab-mode').value,
      onUser: (kind, src) => mprLinked(kind, src),
    });
    set.cell = cc;
    set.offsetVec = off;
    return set;
  });
  state.mpr = state.mprs[0];
  for (const set of state.mprs) set.start().catch((e) => fatalToast(t('state.error', { msg: e.message })));
  $('mpr').classList.add('on');
  $('slab').classList.remove('hidden');
  $('slab-mode').classList.remove('hidden');
}

/** 'Exam 2026-03-12 (offset 6.0 mm)': which exam a row of the MPR of two exams shows. */
function mprExamText(c) {
  const mm = c.vp && c.vp.offset ? t('mpr.offset', { mm: c.vp.offset.toFixed(1) }) : '';
  return t('mpr.exam', { date: c.study.exam_date || '', offset: mm });
}

/** One exam's MPR changed by the user: the other exam's follows — the same patient point
 *  (through both panes' manual offsets), window and crosshair turn. */
function mprLinked(kind, src) {
  for (const set of state.mprs) {
    if (set === src) continue;
    if (kind === 'point') set.setPoint(shiftPoint(src.point, src.offsetVec, set.offsetVec));
    else if (kind === 'window') set.setWindow(src.win);
    else if (kind === 'angle') set.setAngle(src.angle);
  }
}

function exitMpr() {
  state.mpr = null;
  state.mprs = [];
  $('mpr').classList.remove('on');
  $('slab').classList.add('hidden');
  $('slab-mode').classList.add('hidden');
  const name = state.layout;
  state.layout = null;
  setLayout(name);
}

function fatalToast(msg) {
  const box = $('toast');
  box.textContent = msg;
  box.classList.remove('hidden');
  clearTimeout(fatalToast.timer);
  fatalToast.timer = setTimeout(() => box.classList.add('hidden'), 4000);
}

function buildPresets() {
  const sel = $('preset');
  const c = activeCell();
  sel.textContent = '';
  for (const p of presetsFor(c && c.study ? c.study.modality : '')) {
    const o = el('option', null, t(p.key));
    o.value = p.id;
    sel.append(o);
  }
}

function buildSide() {
  const side = $('side');
  side.textContent = '';
  side.append(el('h3', null, t('ws.exams')));
  for (const s of state.studies) {
    const g = el('div', 'exam-group');
    g.append(el('h4', null, `${s.exam_date} ${s.modality} ${s.description || ''}`));
    if (s.images_enabled === false && !(s.series && s.series.length)) {
      g.append(el('p', 'muted', t('state.noimages')));
    }
    for (const se of sortedSeries(s)) {
      const b = el('button', 'series-item');
      b.type = 'button';
      b.draggable = true;
      b.dataset.series = se.series_uid;
      b.dataset.study = s.study_uid;
      const img = el('img');
      img.alt = '';
      img.loading = 'lazy';
      img.src = urls.seriesThumb(s.study_uid, se.series_uid);
      b.append(img, el('span', null, `${se.description || se.modality} (${se.num_frames || se.num_instances})`));
      b.addEventListener('click', () => { if (state.mpr) exitMpr(); assign(activeCell(), s, se); });
      b.addEventListener('dragstart', (e) => e.dataTransfer.setData('text/plain', `${s.study_uid}|${se.series_uid}`));
      g.append(b);
    }
    side.append(g);
  }
}

function bindToolbar() {
  for (const b of document.querySelectorAll('[data-layout]')) b.addEventListener('click', () => setLayout(b.dataset.layout));
  for (const b of document.querySelectorAll('[data-tool]')) b.addEventListener('click', () => setTool(b.dataset.tool));
  const vpDo = (fn) => () => { const c = activeCell(); if (c && c.vp) fn(c.vp); };
  $('preset').addEventListener('change', (e) => {
    if (state.mpr) { for (const m of state.mprs) m.applyPreset(e.target.value); return; } // MPR: the planes, not the hidden pane
    const c = activeCell(); if (c && c.vp) c.vp.applyPreset(e.target.value);
  });
  $('invert').addEventListener('click', vpDo((v) => v.toggleInvert()));
  $('rotate').addEventListener('click', vpDo((v) => v.rotate()));
  $('reset').addEventListener('click', () => {
    if (state.mpr) { for (const m of state.mprs) m.setAngle(0); return; } // MPR: the crosshair's turn
    const c = activeCell(); if (c && c.vp) c.vp.reset();
  });
  $('flip-h').addEventListener('click', vpDo((v) => v.flip(true)));
  $('flip-v').addEventListener('click', vpDo((v) => v.flip(false)));
  $('cine').addEventListener('click', vpDo((v) => (v.playing ? v.stop() : v.play())));
  // the speed applies at once; the keys go back to the panes (arrows would change the select)
  $('cine-fps').addEventListener('change', (e) => { setFps(Number(e.target.value)); e.target.blur(); });
  $('clear').addEventListener('click', vpDo((v) => v.clearMeasures()));
  bindMeasPanel();
  $('overlay').addEventListener('click', () => setOverlay(!state.overlay));
  setOverlay(state.overlay);
  $('help-btn').addEventListener('click', () => toggleHelp());
  $('help-close').addEventListener('click', () => toggleHelp(false));
  $('help').addEventListener('click', (e) => { if (e.target === $('help')) toggleHelp(false); });
  const first = $('first-slice');
  first.value = state.firstSlice;
  first.addEventListener('change', () => { state.firstSlice = first.value; writePref('cf-ws-first', first.value); });
  $('ref-lines').checked = state.refLines;
  $('ref-lines').addEventListener('change', (e) => setRefLines(e.target.checked));
  for (const k of ['scroll', 'zoom', 'window']) {
    const box = $(`sync-${k}`);
    box.checked = state.sync[k];
    box.addEventListener('change', () => { state.sync[k] = box.checked; });
  }
  $('mpr').addEventListener('click', () => (state.mpr ? exitMpr() : enterMpr()));
  const slabChange = () => { for (const m of state.mprs) m.setSlab(Number($('slab').value) || 0, $('slab-mode').value); };
  $('slab').addEventListener('change', slabChange);
  $('slab-mode').addEventListener('change', slabChange);
  $('mip').addEventListener('click', () => {
    if (state.mpr) exitMpr();
    const c = activeCell();
    if (!c || !c.study) return;
    if (c.kind === 'mip') { assign(c, c.study, c.series, 'stack'); return; }
    if (!c.vp || !c.vp.stack || !c.vp.stack.normal) { fatalToast(t('mpr.none')); return; }
    c.lastWindow = c.vp.currentWindow();
    assign(c, c.study, c.series, 'mip');
  });
  document.addEventListener('keydown', onKey);
}

function setTool(name) {
  if (name !== state.tool) cancelPending();
  state.tool = name;
  for (const x of document.querySelectorAll('[data-tool]')) x.classList.toggle('on', x.dataset.tool === name);
  for (const c of state.cells) if (c.vp) c.vp.mode = name;
  for (const m of state.mprs) m.tool = name;
}

const TOOL_KEYS = {
  s: 'scroll', w: 'window', p: 'pan', z: 'zoom', m: 'measure', e: 'ellipse', b: 'rect', a: 'angle', c: 'cobb', x: 'arrow', t: 'text',
};
const LAYOUT_KEYS = { 1: '1x1', 2: '1x2', 3: '2x1', 4: '2x2' };

/** Keyboard shortcuts (listed in the help, shown in the toolbar's tooltips). */
function onKey(e) {
  if (e.target.closest && e.target.closest('input, select, textarea')) return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === '?') { toggleHelp(); e.preventDefault(); return; }
  if (helpOpen()) { if (e.key === 'Escape') { toggleHelp(false); e.preventDefault(); } return; }
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  const done = () => e.preventDefault();
  if (TOOL_KEYS[key]) { setTool(TOOL_KEYS[key]); return done(); }
  if (key === 'l') { toggleMeasPanel(); return done(); }
  if (key === 'Escape') { if (cancelPending()) return done(); return undefined; }
  if (key === 'Delete' && measures.selected) { measures.remove(measures.selected); return done(); }
  if (LAYOUT_KEYS[key]) { setLayout(LAYOUT_KEYS[key]); return done(); }
  if (key === 'o') { setOverlay(!state.overlay); return done(); }
  if (key === 'g') { setRefLines(!state.refLines); return done(); }
  if (key === '[' || key === ']') { stepFps(key === ']' ? 1 : -1); return done(); }
  const c = activeCell();
  if (!c || !c.vp || !c.vp.stack) return undefined;
  const v = c.vp;
  const actions = {
    ArrowUp: () => v.scrollBy(-1), ArrowLeft: () => v.scrollBy(-1),
    ArrowDown: () => v.scrollBy(1), ArrowRight: () => v.scrollBy(1),
    Home: () => v.setIndex(0, true), End: () => v.setIndex(v.n - 1, true),
    ' ': () => (v.playing ? v.stop() : v.play()),
    i: () => v.toggleInvert(), r: () => v.rotate(), h: () => v.flip(true), v: () => v.flip(false),
    0: () => v.reset(), Delete: () => v.clearMeasures(),
  };
  const fn = actions[key];
  if (!fn) return undefined;
  fn();
  return done();
}

// ---------------------------------------------------------------- measurements (issue 18)
function cancelPending() {
  let any = false;
  for (const c of state.cells) if (c.vp && c.vp.measureTools && c.vp.measureTools.cancel()) any = true;
  return any;
}

/** The saved measurements of every exam on the page (none while the server has no API). */
async function loadMeasurements() {
  for (const s of state.studies) {
    await measures.load(s.study_uid);
    if (measures.remote === false) break;
  }
  renderMeasList();
}

function measOpen() {
  return !$('meas-panel').classList.contains('hidden');
}

function toggleMeasPanel(open = !measOpen()) {
  $('meas-panel').classList.toggle('hidden', !open);
  $('meas-btn').classList.toggle('on', open);
  $('meas-btn').setAttribute('aria-pressed', String(open));
  renderMeasList();
}

function bindMeasPanel() {
  $('meas-btn').addEventListener('click', () => toggleMeasPanel());
  $('meas-close').addEventListener('click', () => toggleMeasPanel(false));
  $('meas-sr').addEventListener('click', exportSr);
  measures.subscribe(() => {
    for (const c of state.cells) if (c.vp && c.vp.stack) c.vp.renderMeasures();
    renderMeasList();
  });
}

async function exportSr() {
  const c = activeCell();
  const study = c && c.study ? c.study : state.studies[0];
  if (!study) return;
  try {
    const out = await measures.exportSr(study.study_uid);
    fatalToast(t('meas.sr.done', { count: out && out.count !== undefined ? out.count : 0 }));
  } catch (e) {
    fatalToast(e.status === 404 || e.status === 405 ? t('meas.sr.none') : t('meas.failed', { msg: e.message }));
  }
}

/** Where a measurement is: the series' description and the image's number in it. */
function measWhere(m) {
  const study = state.studies.find((s) => s.study_uid === m.study_uid);
  const se = study && (study.series || []).find((x) => x.series_uid === m.series_uid);
  let n = '';
  const cell = state.cells.find((c) => c.vp && c.vp.stack && c.series && c.series.series_uid === m.series_uid);
  if (cell) n = cell.vp.stack.items.findIndex((it) => it.sop === m.sop_uid && it.frame === m.frame) + 1;
  else if (se) n = (se.instances || []).findIndex((i) => i.sop_uid === m.sop_uid) + 1 || '';
  const name = se ? `${study.exam_date || ''} ${se.description || se.modality || ''}`.trim() : '';
  return t('meas.image', { series: name, n: n || '?' });
}

function renderMeasList() {
  const list = $('meas-list');
  if (!list) return;
  $('meas-local').classList.toggle('hidden', measures.remote !== false);
  if (!measOpen()) return;
  list.textContent = '';
  if (!measures.items.length) { list.append(el('li', 'meas-empty', t('meas.none'))); return; }
  for (const m of measures.items) {
    const li = el('li', `meas-row${m === measures.selected ? ' sel' : ''}`);
    li.dataset.cid = String(m.cid);
    li.dataset.kind = m.kind;
    li.title = t('meas.goto');
    const value = m.kind === 'text' || m.kind === 'arrow' ? '' : formatValues(m.kind, m.values || {}, m.text);
    const del = el('button', 'btn meas-del', '×');
    del.type = 'button';
    del.title = t('meas.delete');
    del.setAttribute('aria-label', t('meas.delete'));
    del.addEventListener('click', (e) => { e.stopPropagation(); measures.remove(m); });
    li.append(el('span', 'meas-kind', t(`kind.${m.kind}`)), del, el('span', 'meas-value', value), el('span', 'meas-where', measWhere(m)));
    if (m.kind === 'text' || m.kind === 'arrow') {
      const input = el('input', 'meas-text');
      input.type = 'text';
      input.maxLength = 500;
      input.value = m.text || '';
      input.placeholder = t('meas.note');
      input.setAttribute('aria-label', t('meas.note'));
      input.addEventListener('click', (e) => e.stopPropagation());
      input.addEventListener('change', () => { m.text = input.value.trim(); measures.update(m); });
      li.append(input);
    }
    li.addEventListener('click', () => jumpTo(m));
    list.append(li);
  }
}

/** Show a measurement's image: in a pane with its series (the active one first), else the
 *  active pane switches to its series. */
function jumpTo(m) {
  const go = (c) => {
    const i = c.vp.stack.items.findIndex((it) => it.sop === m.sop_uid && it.frame === m.frame);
    if (i >= 0) c.vp.setIndex(i, true);
    setActive(c.i);
    measures.select(m);
  };
  const shows = (c) => c && c.vp && c.vp.stack && c.series && c.series.series_uid === m.series_uid;
  const c = shows(activeCell()) ? activeCell() : state.cells.find(shows);
  if (c) { go(c); return; }
  const study = state.studies.find((s) => s.study_uid === m.study_uid);
  const se = study && (study.series || []).find((x) => x.series_uid === m.series_uid);
  if (!se) return;
  if (state.mpr) exitMpr();
  const target = activeCell();
  assign(target, study, se);
  if (target.vp && target.vp.stack) go(target);
}

/** Tooltips of the toolbar buttons that other modules make (language, send). */
function tipExtras() {
  const lang = $('lang-switch');
  if (lang) lang.title = t('tip.lang');
  const send = $('send-ws');
  if (send) send.title = t('tip.send');
}

async function main() {
  await initI18n();
  watchSession();
  $('toolbar-end').append(langButton(() => {
    for (const c of state.cells) {
      updateCellHead(c); drawCellReport(c); c.empty.textContent = t('ws.empty'); if (c.vp) c.vp.render();
      c.link.title = t('tip.link'); c.align.title = t('tip.align');
    }
    buildSide(); buildPresets(); setOverlay(state.overlay); updateCineButton(); tipExtras();
    for (const m of state.mprs) {
      m.drawLines();
      m.panes.axial.reset.textContent = t('mpr.angle.reset');
      m.panes.axial.reset.title = t('tip.mpr.rotate');
      if (state.mprs.length > 1) for (const p of PLANES) m.panes[p].root.querySelector('.mpr-exam').textContent = mprExamText(m.cell);
    }
    if (helpOpen()) buildHelpKeys();
    renderMeasList();
    const c = activeCell(); if (c && c.study) showReport($('report'), c);
  }));
  bindToolbar();
  let loaded;
  try {
    loaded = await loadStudies();
  } catch (e) {
    if (e.status !== 401) fatal(e.status === 404 ? t('state.notfound') : t('state.error', { msg: e.message }));
    return;
  }
  state.studies = loaded.studies;
  if (!state.studies.length) { fatal(t('index.empty')); return; }
  $('patient').textContent = patientLine(state.studies[0].patient);
  buildSide();
  // first view: the exams named in the URL (all of them, up to 4: 1×2 or 2×2), else the two
  // newest; one exam alone hangs beside its prior (same modality and body part); linked when comparable
  let picks = loaded.first.length ? loaded.first.map((u) => state.studies.find((s) => s.study_uid === u)).filter(Boolean)
    : state.studies.slice(0, 2);
  if (picks.length > MAX_PANES) fatalToast(t('cmp.capped', { max: MAX_PANES, n: picks.length }));
  picks = picks.slice(0, MAX_PANES);
  const prior = loaded.first.length === 1 && picks.length === 1 ? findPrior(picks[0], state.studies) : null;
  if (prior) picks = [picks[0], prior];
  setLayout(layoutFor(picks.length));
  picks.slice(0, 4).forEach((s, i) => {
    if (i >= state.cells.length) return;
    const se = sortedSeries(s)[0];
    if (se) assign(state.cells[i], s, se);
  });
  if (prior) {
    state.cells[0].hang = 'current';
    state.cells[1].hang = 'prior';
    updateCellHead(state.cells[0]);
    updateCellHead(state.cells[1]);
  }
  const comparable = picks.length > 1 && picks.every((s) => s.modality === picks[0].modality);
  if (comparable) {
    for (const c of state.cells.slice(0, picks.length)) { c.linked = true; updateCellHead(c); }
    broadcast(state.cells[0], 'index');
  }
  setActive(0);
  loadMeasurements();
  initSend($('toolbar-end'), () => {
    const c = activeCell();
    return c && c.study ? { study: c.study, series: c.series } : { study: state.studies[0], series: null };
  }, fatalToast);
  tipExtras();
  window.cfWorkspace = state; // for tests and the benchmark
  window.cfMeasures = measures;
}

main();
