// The share page (/s/{token}): type the access code and the film view opens at once (the
// film view has the download buttons). A browser that opened this share before goes
// straight to the images without a code and without counting another open.
import { t, call, setCsrf, localTime, codeInput, langButton, localMsg } from './common.js';
import { loadHospital, hospitalBlock, rememberShare } from '../js/hospital.js';

const $ = (id) => document.getElementById(id);
const token = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
let status = null;
let hospital = null;

// the film view's files, fetched while the code is typed (versioned, cached as immutable)
const FILM_FILES = ['js/film.js', 'js/api.js', 'js/film_view.js', 'js/viewport.js', 'js/ui.js',
  'js/loader.js', 'js/prefetch.js', 'js/viewport_math.js', 'js/series.js', 'js/presets.js',
  'js/i18n/zh-CN.js', 'css/viewer.css'];

function prefetchFilm() {
  const base = new URL('../', import.meta.url);
  for (const f of FILM_FILES) {
    const l = document.createElement('link');
    l.rel = f.endsWith('.js') ? 'modulepreload' : 'prefetch';
    if (l.rel === 'prefetch') l.as = 'style';
    l.href = new URL(f, base).href;
    document.head.append(l);
  }
}

function facts() {
  if (!status) return '';
  const parts = [t('share.expires', { t: localTime(status.expires_at) })];
  if (status.max_opens) parts.push(t('share.opens', { o: status.opens, m: status.max_opens }));
  if (!status.include_images) parts.push(t('share.reportonly'));
  return parts.join(' · ');
}

function texts() {
  document.title = t('title.share');
  $('title').textContent = t('title.share');
  $('code-label').textContent = t('code.label');
  $('open').textContent = t('code.open');
  $('next-portal').textContent = t('share.portal');
  $('expiry').textContent = facts();
  showHospital();
}

function showHospital() {
  const slot = $('hospital-slot');
  if (!slot || !hospital) return;
  slot.textContent = '';
  slot.append(hospitalBlock(hospital));
  if (hospital.name) $('hosp-name').textContent = hospital.name;
}

function refuse(message) {
  $('codeform').classList.add('hidden');
  $('expiry').classList.add('hidden');
  const r = $('refusal');
  r.textContent = message;
  r.classList.remove('hidden');
  $('next').classList.remove('hidden');
}

/** Inside WeChat with the Official Account configured: 发送给朋友 sends a card with the
 *  hospital's name and this code page's link (the code stays with the patient), no patient
 *  data. Quietly does nothing elsewhere. */
async function wechatCard() {
  if (!/MicroMessenger/i.test(navigator.userAgent)) return;
  const h0 = hospital || await loadHospital();
  if (!h0.wechat) return;
  try {
    const cfg = await call('GET', `/api/wechat/jssdk?url=${encodeURIComponent(location.href.split('#')[0])}`);
    const wx = await import('../wechat/jsbridge.js');
    const bridge = await wx.configure(cfg);
    const h = hospital || await loadHospital();
    await wx.setShare(bridge, { title: `${h.name || ''} ${t('title.share')}`.trim(), desc: t('share.card'), link: location.href.split('#')[0] });
  } catch (e) { /* WeChat not configured here, or no bridge: the link can still be copied */ }
}

function go(filmUrl, studyUid) {
  if (studyUid) rememberShare(studyUid, location.pathname);
  $('codeform').classList.add('hidden');
  $('opening').textContent = t('share.opening');
  $('opening').classList.remove('hidden');
  location.replace(filmUrl);
}

async function main() {
  $('lang').append(langButton(texts));
  $('code-slot').append(codeInput('code'));
  loadHospital().then((h) => { hospital = h; showHospital(); });
  try {
    status = await call('POST', '/api/share/status', { token });
  } catch (e) {
    texts();
    refuse(e.message);
    return;
  }
  texts();
  if (status.session) { go(status.film_url, status.study_uid); return; }
  if (status.state !== 'open') { refuse(localMsg(status.message)); return; }
  $('codeform').classList.remove('hidden');
  $('code').focus();
  prefetchFilm();
  wechatCard();
  $('codeform').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const code = $('code').value.trim();
    if (!/^[0-9]{6}$/.test(code)) { $('msg').textContent = t('code.format'); return; }
    $('open').disabled = true;
    $('msg').textContent = '';
    try {
      const opened = await call('POST', '/api/share/open', { token, code, include_study: true });
      setCsrf(opened.csrf_token);
      // the film view takes its data from here instead of asking again (one round trip less)
      if (opened.study && opened.study_uid) {
        try { sessionStorage.setItem(`cf-study:${opened.study_uid}`, JSON.stringify({ at: Date.now(), study: opened.study })); } catch (e) { /* full or private */ }
      }
      go(opened.film_url, opened.study_uid);
    } catch (e) {
      $('open').disabled = false;
      if (e.status === 403) { $('msg').textContent = e.message; $('code').select(); } else refuse(e.message);
    }
  });
}

main();
