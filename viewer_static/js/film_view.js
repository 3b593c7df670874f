// Film view (phone first): the exam's images and report on one screen. Loaded by film.js,
// which has already asked for the study JSON while these modules were on their way.
// What is not needed for the first image (who is looking, download, the picture grid, the
// report page zoom, the hospital footer) lives in film_extras.js, loaded after it.
import { urls } from './api.js';
import { StackViewport, countKind } from './viewport.js';
import { presetsFor } from './presets.js';
import { sortedSeries, buildStack } from './series.js';
import { el, t, initI18n, langButton, renderReport, watchSession, fatal, patientLine, applyI18n } from './ui.js';

const $ = (id) => document.getElementById(id);
const NOTICES = { closed: 'state.noimages', pending: 'state.pending', reportonly: 'state.reportonly' };

export async function main(studyPromise) {
  await initI18n();
  watchSession();
  let study;
  let vp = null;
  let extras = null; // film_extras.js once loaded
  let notice = null; // why no images show: closed | pending | reportonly
  $('topbar-actions').append(langButton(() => {
    if (study) renderReport($('report'), study);
    if (vp) { vp.render(); buildPresets(); updateButtons(); }
    if (notice) setNotice(notice);
    relabelStrip();
    if (extras) extras.relabel();
  }));
  try {
    study = await studyPromise;
  } catch (e) {
    // asked for before watchSession() listened: announce the expired session again
    if (e.status === 401) { window.dispatchEvent(new CustomEvent('cf-session-expired')); return; }
    fatal(e.status === 404 ? t('state.notfound') : t('state.error', { msg: e.message }));
    return;
  }
  document.title = `${t('app.title')} · ${study.description || study.modality}`;
  $('patient').textContent = patientLine(study.patient);
  $('exam').textContent = `${study.exam_date || ''} ${study.modality || ''} ${study.description || ''} ${study.accession_number || ''}`;
  let firstResolve;
  const firstImage = new Promise((res) => { firstResolve = res; });
  // the report after the first frame's request has left (its text is quick, the request is not)
  const showReport = () => renderReport($('report'), study, { deferImages: firstImage });
  // the rest of the page after the first image: it must not compete with it
  firstImage.then(() => import('./film_extras.js')).then((m) => {
    extras = m;
    m.init({ study, vp: () => vp, setNotice, notice: () => notice });
  }).catch(() => { /* the images and the report work without it */ });

  const vpRoot = $('viewport');
  function setNotice(kind) {
    notice = kind;
    if (vp) { vp.destroy(); vp = null; }
    vpRoot.textContent = '';
    vpRoot.className = 'film-viewport notice';
    const p = el('p', 'notice-text', t(NOTICES[kind] || NOTICES.closed));
    p.id = 'notice';
    p.dataset.kind = kind;
    vpRoot.append(p);
    for (const id of ['tools', 'strip']) $(id).classList.add('hidden');
    firstResolve();
  }
  const noImagesBecause = (e) => {
    const m = String((e && e.message) || '');
    return /仅包含报告|report only/i.test(m) ? 'reportonly' : 'closed';
  };
  if (!study.series || !study.series.length) {
    showReport();
    setNotice(study.images_enabled === false ? 'closed' : 'pending');
    return;
  }
  const series = sortedSeries(study);
  // every picture of the exam's picture series (endoscopy, pathology, photos, US stills)
  const pictures = [];
  for (const s of series) {
    if (countKind(s, study.modality) !== 'picture') continue;
    buildStack(s).items.forEach((it, index) => pictures.push({ series: s, index, sop: it.sop, frame: it.frame }));
  }
  vp = new StackViewport(vpRoot, {
    t, dpr: window.devicePixelRatio || 1, concurrency: 6,
    onForbidden: (e) => setNotice(noImagesBecause(e)),
    onFirstImage: () => {
      document.body.dataset.firstImage = String(Math.round(performance.now()));
      firstResolve();
    },
    onChange: () => updateButtons(),
    onUserChange: (what) => { if (what === 'index') relabelStrip(); },
  });
  window.cfViewport = vp; // for tests and the benchmark
  function show(s, index) {
    if (!vp) return;
    if (vp.series === s && index !== undefined) {
      vp.setIndex(index, true);
      return;
    }
    vp.load(study, s, index === undefined ? {} : { index }).then(() => { buildPresets(); updateButtons(); });
    for (const b of $('strip').children) b.classList.toggle('active', b.dataset.series === s.series_uid);
    relabelStrip();
    buildPresets();
    updateButtons();
  }

  // tools
  for (const m of ['scroll', 'window', 'pan']) {
    $(`mode-${m}`).addEventListener('click', () => { if (vp) { vp.mode = m; updateButtons(); } });
  }
  $('cine').addEventListener('click', () => { if (vp) { vp.playing ? vp.stop() : vp.play(); updateButtons(); } });
  $('invert').addEventListener('click', () => vp && vp.toggleInvert());
  $('rotate').addEventListener('click', () => vp && vp.rotate());
  $('reset').addEventListener('click', () => { if (vp) { vp.reset(); $('preset').value = 'default'; } });
  $('preset').addEventListener('change', (e) => vp && vp.applyPreset(e.target.value));
  let overlayOn = true;
  try { overlayOn = localStorage.getItem('cf-overlay') !== 'off'; } catch (e) { /* private mode */ }
  $('overlay').addEventListener('click', () => {
    overlayOn = !overlayOn;
    try { localStorage.setItem('cf-overlay', overlayOn ? 'on' : 'off'); } catch (e) { /* ignore */ }
    updateButtons();
  });
  $('grid').addEventListener('click', () => {
    import('./film_extras.js').then((m) => m.openGrid({ study, pictures, vp, show }));
  });
  // report pages: a tap opens them full screen, zoomable (the page itself is not)
  $('report').addEventListener('click', (e) => {
    const img = e.target.closest && e.target.closest('img.report-page');
    if (img) import('./film_extras.js').then((m) => m.openZoom(img));
  });

  function buildPresets() {
    const sel = $('preset');
    const cur = sel.value || 'default';
    sel.textContent = '';
    for (const p of presetsFor(study.modality)) {
      const o = el('option', null, t(p.key));
      o.value = p.id;
      sel.append(o);
    }
    sel.value = cur;
    sel.classList.toggle('hidden', !vp || vp.color);
  }

  function updateButtons() {
    if (!vp) return;
    if (vp.color && vp.mode === 'window') vp.mode = 'scroll';
    applyI18n($('tools'));
    for (const m of ['scroll', 'window', 'pan']) $(`mode-${m}`).classList.toggle('on', vp.mode === m);
    $('mode-window').classList.toggle('hidden', !!vp.color);
    vpRoot.dataset.mode = vp.mode;
    const cine = $('cine');
    cine.textContent = vp.playing ? t('tool.stop') : t('tool.cine');
    cine.classList.toggle('on', vp.playing);
    cine.setAttribute('aria-pressed', String(vp.playing));
    cine.dataset.state = vp.playing ? 'playing' : 'stopped';
    cine.classList.toggle('hidden', vp.n < 2 || vp.countKind === 'picture'); // pictures: the grid
    const ov = $('overlay');
    ov.textContent = t(overlayOn ? 'tool.overlay.hide' : 'tool.overlay.show');
    ov.setAttribute('aria-pressed', String(overlayOn));
    vpRoot.classList.toggle('ov-off', !overlayOn);
    $('grid').classList.toggle('hidden', pictures.length < 2);
    if (pictures.length >= 2) $('grid').textContent = `${t('tool.grid')} (${pictures.length})`;
  }

  function stripLabel(s) {
    if (countKind(s, study.modality) === 'picture') {
      const n = buildStack(s).items.length;
      return vp && vp.series === s && n > 1 ? t('ov.picture', { n: vp.index + 1, total: n }) : t('series.pictures', { n });
    }
    return t('series.images', { n: s.num_frames || s.num_instances });
  }

  function relabelStrip() {
    for (const b of $('strip').children) {
      const s = series.find((x) => x.series_uid === b.dataset.series);
      const label = b.querySelector('.strip-label');
      if (s && label) label.textContent = `${s.description || s.modality || ''} · ${stripLabel(s)}`;
    }
  }

  show(series[0]);
  showReport();
  // the strip after the first image: its thumbnails must not compete with it
  firstImage.then(() => {
    if (!vp) return;
    for (const s of series) {
      const b = el('button', 'strip-item');
      b.type = 'button';
      b.dataset.series = s.series_uid;
      const img = el('img', 'strip-thumb');
      img.alt = '';
      img.src = urls.seriesThumb(study.study_uid, s.series_uid);
      b.append(img, el('span', 'strip-label', ''));
      b.addEventListener('click', () => show(s));
      if (s === vp.series) b.classList.add('active');
      $('strip').append(b);
    }
    relabelStrip();
  });
}
