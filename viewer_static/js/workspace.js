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
import { el, t, initI18n, langButton, renderReport, watchSession, fatal, patientLine, applyI18n } from './ui.js';
import words from './i18n/workspace.js';
import { initSend } from './send.js';

t.add(words);
const $ = (id) => document.getElementById(id);
const LAYOUTS = { '1x1': [1, 1], '1x2': [1, 2], '2x1': [2, 1], '2x2': [2, 2] };

const state = {
  studies: [],
  cells: [],
  active: 0,
  layout: '1x2',
  tool: 'scroll',
  sync: { scroll: true, zoom: true, window: true },
  mpr: null,
};

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
  const align = el('button', 'btn align-btn', t('ws.align'));
  align.type = 'button';
  head.append(title, link, align);
  const body = el('div', 'ws-cell-body');
  const empty = el('div', 'ws-empty', t('ws.empty'));
  body.append(empty);
  cell.append(head, body);
  const c = { i, cell, head, title, link, align, body, empty, kind: null, vp: null, mip: null, linked: false };
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
  c.title.textContent = s ? `${s.exam_date} ${s.modality} ${c.series.description || ''}${c.kind === 'mip' ? ' · 3D' : ''}` : '';
}

function setActive(i) {
  state.active = i;
  state.cells.forEach((c) => c.cell.classList.toggle('active', c.i === i));
  const c = state.cells[i];
  if (c && c.study) {
    renderReport($('report'), c.study, { pages: true });
    buildPresets();
  }
}

function clearCell(c) {
  if (c.vp) c.vp.destroy();
  c.vp = null;
  c.mip = null;
  c.body.textContent = '';
}

function assign(c, study, series, kind = 'stack') {
  clearCell(c);
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
    c.mip = new MipView(root, study, series, { t, window: win, onUserChange: () => broadcast(c, 'rotate') });
    c.mip.refresh(true);
  } else {
    c.vp = new StackViewport(root, {
      t, desktop: true, concurrency: 6, mode: state.tool,
      onUserChange: (k) => broadcast(c, k),
      onForbidden: () => { root.textContent = ''; root.append(el('p', 'notice-text', t('state.noimages'))); },
      onChange: () => {},
    });
    c.vp.load(study, series);
  }
  updateCellHead(c);
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
    if (kind === 'rotate' && src.mip && c.mip) c.mip.setAngles(src.mip.yaw, src.mip.pitch);
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
  c.vp.render();
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
}

function activeCell() {
  return state.cells[state.active];
}

function enterMpr() {
  const c = activeCell();
  if (!c || !c.vp || !c.vp.stack || !c.vp.stack.normal) { if (c && c.vp) fatalToast(t('mpr.none')); return; }
  const grid = $('grid');
  grid.textContent = '';
  grid.style.gridTemplateRows = 'minmax(0, 1fr)';
  grid.style.gridTemplateColumns = 'repeat(3, minmax(0, 1fr))';
  grid.dataset.layout = 'mpr';
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
  const vp = c.vp;
  const pos = vp.position();
  let point = null;
  if (pos) {
    const inst = vp.item().instance;
    const o = inst.image_orientation;
    const sp = inst.pixel_spacing || [1, 1];
    point = [0, 1, 2].map((k) => pos[k] + o[k] * sp[1] * vp.view.cx + o[3 + k] * sp[0] * vp.view.cy);
  }
  state.mpr = new MprSet(panes, c.study, c.series, { t, window: vp.currentWindow(), point });
  state.mpr.slab = Number($('slab').value) || 0;
  state.mpr.start().catch((e) => fatalToast(t('state.error', { msg: e.message })));
  $('mpr').classList.add('on');
  $('slab').classList.remove('hidden');
}

function exitMpr() {
  state.mpr = null;
  $('mpr').classList.remove('on');
  $('slab').classList.add('hidden');
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
  for (const b of document.querySelectorAll('[data-tool]')) {
    b.addEventListener('click', () => {
      state.tool = b.dataset.tool;
      for (const x of document.querySelectorAll('[data-tool]')) x.classList.toggle('on', x === b);
      for (const c of state.cells) if (c.vp) c.vp.mode = state.tool;
    });
  }
  const vpDo = (fn) => () => { const c = activeCell(); if (c && c.vp) fn(c.vp); };
  $('preset').addEventListener('change', (e) => { const c = activeCell(); if (c && c.vp) c.vp.applyPreset(e.target.value); });
  $('invert').addEventListener('click', vpDo((v) => v.toggleInvert()));
  $('rotate').addEventListener('click', vpDo((v) => v.rotate()));
  $('reset').addEventListener('click', vpDo((v) => v.reset()));
  $('cine').addEventListener('click', vpDo((v) => (v.playing ? v.stop() : v.play())));
  $('clear').addEventListener('click', vpDo((v) => v.clearMeasures()));
  for (const k of ['scroll', 'zoom', 'window']) {
    const box = $(`sync-${k}`);
    box.checked = state.sync[k];
    box.addEventListener('change', () => { state.sync[k] = box.checked; });
  }
  $('mpr').addEventListener('click', () => (state.mpr ? exitMpr() : enterMpr()));
  $('slab').addEventListener('change', (e) => state.mpr && state.mpr.setSlab(Number(e.target.value) || 0));
  $('mip').addEventListener('click', () => {
    if (state.mpr) exitMpr();
    const c = activeCell();
    if (!c || !c.study) return;
    if (c.kind === 'mip') { assign(c, c.study, c.series, 'stack'); return; }
    if (!c.vp || !c.vp.stack || !c.vp.stack.normal) { fatalToast(t('mpr.none')); return; }
    c.lastWindow = c.vp.currentWindow();
    assign(c, c.study, c.series, 'mip');
  });
  document.addEventListener('keydown', (e) => {
    const c = activeCell();
    if (!c || !c.vp || e.target.closest('input, select')) return;
    if (e.key === 'ArrowUp' || e.key === 'ArrowLeft') { c.vp.scrollBy(-1); e.preventDefault(); }
    if (e.key === 'ArrowDown' || e.key === 'ArrowRight') { c.vp.scrollBy(1); e.preventDefault(); }
    if (e.key === ' ') { c.vp.playing ? c.vp.stop() : c.vp.play(); e.preventDefault(); }
  });
}

async function main() {
  await initI18n();
  watchSession();
  $('toolbar-end').append(langButton(() => {
    for (const c of state.cells) { updateCellHead(c); c.empty.textContent = t('ws.empty'); if (c.vp) c.vp.render(); }
    buildSide(); buildPresets();
    const c = activeCell(); if (c && c.study) renderReport($('report'), c.study);
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
  // first view: the exams named in the URL, else the two newest; linked when comparable
  const picks = loaded.first.length ? loaded.first.map((u) => state.studies.find((s) => s.study_uid === u))
    : state.studies.slice(0, 2);
  setLayout(picks.length > 1 ? '1x2' : '1x1');
  picks.slice(0, 4).forEach((s, i) => {
    if (i >= state.cells.length) return;
    const se = sortedSeries(s)[0];
    if (se) assign(state.cells[i], s, se);
  });
  const comparable = picks.length > 1 && picks.every((s) => s.modality === picks[0].modality);
  if (comparable) {
    for (const c of state.cells.slice(0, picks.length)) { c.linked = true; updateCellHead(c); }
    broadcast(state.cells[0], 'index');
  }
  setActive(0);
  initSend($('toolbar-end'), () => {
    const c = activeCell();
    return c && c.study ? { study: c.study, series: c.series } : { study: state.studies[0], series: null };
  }, fatalToast);
  window.cfWorkspace = state; // for tests and the benchmark
}

main();
