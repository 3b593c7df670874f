// Film view (phone first): the exam's images and report on one screen. Loaded by film.js,
// which has already asked for the study JSON while these modules were on their way.
import { urls } from './api.js';
import { StackViewport } from './viewport.js';
import { presetsFor } from './presets.js';
import { sortedSeries } from './series.js';
import { el, t, initI18n, langButton, renderReport, watchSession, fatal, patientLine, applyI18n } from './ui.js';

const $ = (id) => document.getElementById(id);

export async function main(studyPromise) {
  await initI18n();
  watchSession();
  let study;
  let vp = null;
  $('topbar-actions').append(langButton(() => {
    if (study) renderReport($('report'), study);
    if (vp) { vp.render(); buildPresets(); updateButtons(); }
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

  const vpRoot = $('viewport');
  const noImages = () => {
    vpRoot.textContent = '';
    vpRoot.classList.add('notice');
    vpRoot.append(el('p', 'notice-text', t('state.noimages')));
    $('tools').classList.add('hidden');
    $('strip').classList.add('hidden');
    firstResolve();
  };
  if (!study.series || !study.series.length) {
    showReport();
    noImages();
    return;
  }
  vp = new StackViewport(vpRoot, {
    t, dpr: window.devicePixelRatio || 1, concurrency: 6,
    onForbidden: noImages,
    onFirstImage: () => {
      document.body.dataset.firstImage = String(Math.round(performance.now()));
      firstResolve();
    },
    onChange: () => updateButtons(),
  });
  window.cfViewport = vp; // for tests and the benchmark
  const series = sortedSeries(study);
  const show = (s) => {
    vp.load(study, s).then(() => { buildPresets(); updateButtons(); });
    for (const b of $('strip').children) b.classList.toggle('active', b.dataset.series === s.series_uid);
    buildPresets();
    updateButtons();
  };

  // tools
  for (const m of ['scroll', 'window']) {
    $(`mode-${m}`).addEventListener('click', () => { vp.mode = m; updateButtons(); });
  }
  $('cine').addEventListener('click', () => { vp.playing ? vp.stop() : vp.play(); updateButtons(); });
  $('invert').addEventListener('click', () => vp.toggleInvert());
  $('rotate').addEventListener('click', () => vp.rotate());
  $('reset').addEventListener('click', () => { vp.reset(); $('preset').value = 'default'; });
  $('preset').addEventListener('change', (e) => vp.applyPreset(e.target.value));

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
    $('mode-scroll').classList.toggle('on', vp.mode === 'scroll');
    $('mode-window').classList.toggle('on', vp.mode === 'window');
    $('mode-window').classList.toggle('hidden', !!vp.color);
    $('cine').textContent = vp.playing ? t('tool.stop') : t('tool.cine');
    $('cine').classList.toggle('hidden', vp.n < 2);
    applyI18n($('tools'));
  }

  show(series[0]);
  showReport();
  // the strip after the first image: its thumbnails must not compete with it
  firstImage.then(() => {
    for (const s of series) {
      const b = el('button', 'strip-item');
      b.type = 'button';
      b.dataset.series = s.series_uid;
      const img = el('img', 'strip-thumb');
      img.alt = '';
      img.src = urls.seriesThumb(study.study_uid, s.series_uid);
      b.append(img, el('span', 'strip-label', `${s.description || s.modality || ''} · ${t('series.images', { n: s.num_frames || s.num_instances })}`));
      b.addEventListener('click', () => show(s));
      if (s === vp.series) b.classList.add('active');
      $('strip').append(b);
    }
  });
}
