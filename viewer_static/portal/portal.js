// Patient portal (/portal): verify identity, then the patient's exams newest first (report,
// images in the film view, download after a fresh verification), own shares with their open
// counts (create, revoke) and own downloads.
import { t, el, call, setCsrf, localTime, langButton } from '../share/common.js';

const $ = (id) => document.getElementById(id);
const hash = new URLSearchParams(location.hash.slice(1));
const examRef = hash.get('exam') || '';
let methods = null;
let me = null;
let pendingDownload = null;
let timer = null;

const COMBO_NAMES = { sms: 'verify.sms', id_number: 'verify.id', phone: 'verify.phone', accession: 'verify.acc' };

function texts() {
  document.title = t('title.portal');
  $('title').textContent = t('title.portal');
  $('v-title').textContent = t('verify.title');
  $('l-phone').textContent = t('verify.phone');
  $('l-sms').textContent = t('verify.sms');
  if (!timer) $('send').textContent = t('verify.send');
  $('l-id').textContent = t('verify.id');
  $('l-acc').textContent = t('verify.acc');
  $('v-submit').textContent = t('verify.submit');
  $('logout').textContent = t('me.logout');
  $('h-info').textContent = t('me.info');
  $('h-exams').textContent = t('me.exams');
  $('h-shares').textContent = t('me.shares');
  $('h-downloads').textContent = t('me.downloads');
  if (methods) {
    const combos = methods.combinations.map((c) => c.map((m) => t(COMBO_NAMES[m])).join('+')).join(' / ');
    $('v-hint').textContent = t('verify.hint', { c: combos });
  }
  if (me) renderMe();
}

async function showVerify(note) {
  methods = await call('GET', '/api/verify/methods');
  const on = new Set(methods.methods);
  $('f-phone').classList.toggle('hidden', !(on.has('phone') || on.has('sms')));
  $('f-sms').classList.toggle('hidden', !on.has('sms'));
  $('f-id').classList.toggle('hidden', !on.has('id_number'));
  $('f-acc').classList.toggle('hidden', !on.has('accession'));
  const [kind, value] = examRef.split(':');
  if (kind === 'accession' && value && !$('acc').value) $('acc').value = value;
  $('v-note').textContent = note || '';
  $('v-note').classList.toggle('hidden', !note);
  $('verify').classList.remove('hidden');
  texts();
}

function sendCountdown(seconds) {
  let left = seconds;
  $('send').disabled = true;
  clearInterval(timer);
  timer = setInterval(() => {
    left -= 1;
    $('send').textContent = t('verify.resend', { s: left });
    if (left <= 0) { clearInterval(timer); timer = null; $('send').disabled = false; $('send').textContent = t('verify.send'); }
  }, 1000);
  $('send').textContent = t('verify.resend', { s: left });
}

function li(text, cls) { return el('li', cls || '', text); }

function renderMe() {
  const p = me.patient;
  const info = $('info');
  info.textContent = '';
  const sex = { M: '男', F: '女' }[p.sex] || '';
  info.append(el('div', 'exam-title', `${p.name} ${sex} ${p.birth_year || ''}`));
  info.append(el('div', 'muted', `${t('verify.phone')}: ${p.phone || '-'}`));
  info.append(el('div', 'muted', `${t('verify.id')}: ${p.id_number || '-'}`));
  const ul = $('exams');
  ul.textContent = '';
  for (const e of me.exams) {
    const item = el('li');
    item.append(el('div', 'exam-title', `${e.exam_date || ''} ${e.exam_time || ''} · ${e.modality} ${e.description || ''}`));
    item.append(el('div', 'muted', `${e.accession_number || ''} ${e.institution || ''}`));
    if (e.report && e.report.impression) item.append(el('div', 'muted', e.report.impression));
    const acts = el('div', 'actions');
    const view = el('a', 'btn small primary', t('exam.view'));
    view.href = `/film/${encodeURIComponent(e.study_uid)}`;
    acts.append(view);
    if (e.report && e.report.has_pdf) {
      const pdf = el('a', 'btn small', t('exam.report'));
      pdf.href = `/api/studies/${encodeURIComponent(e.study_uid)}/report.pdf`;
      acts.append(pdf);
    } else if (!e.report) acts.append(el('span', 'tag', t('exam.noreport')));
    if (e.images_enabled) {
      const dl = el('a', 'btn small', t('exam.download'));
      dl.href = `/api/download/studies/${encodeURIComponent(e.study_uid)}.zip`;
      dl.addEventListener('click', (ev) => {
        if (me.freshly_verified) return;
        ev.preventDefault();
        pendingDownload = dl.href;
        showVerify(t('verify.again'));
        $('verify').scrollIntoView();
      });
      acts.append(dl);
    } else acts.append(el('span', 'tag', t('exam.noimages')));
    const share = el('button', 'btn small', t('exam.share'));
    share.type = 'button';
    share.addEventListener('click', () => createShare(e.study_uid));
    acts.append(share);
    item.append(acts);
    ul.append(item);
  }
}

async function createShare(studyUid) {
  const r = await call('POST', '/api/patient/shares', { study_uid: studyUid, max_opens: 5, expires: '7d' });
  const box = $('newshare');
  box.textContent = '';
  box.append(el('div', '', t('shares.new', { code: '' })));
  box.append(el('div', 'code', r.code));
  const img = el('img', 'qr-img');
  img.src = r.qr_png;
  img.alt = 'QR';
  box.append(img);
  box.append(el('div', 'muted', r.url));
  box.append(el('div', 'muted', t('share.expires', { t: localTime(r.share.expires_at) })));
  box.classList.remove('hidden');
  box.scrollIntoView();
  loadShares();
}

async function loadShares() {
  const { shares } = await call('GET', '/api/patient/shares');
  const ul = $('shares');
  ul.textContent = '';
  if (!shares.length) ul.append(li(t('shares.none'), 'muted'));
  for (const s of shares) {
    const item = el('li');
    item.append(el('div', '', `${s.exam_date || ''} ${s.modality} ${s.description || ''}`));
    const state = s.state === 'open' || s.state === 'locked' ? t('share.expires', { t: localTime(s.expires_at) }) : t(`shares.${s.state}`);
    item.append(el('div', 'muted', `${t('shares.opens', { o: s.opens, m: s.max_opens })} · ${state}`));
    if (!s.revoked_at && s.state !== 'expired') {
      const b = el('button', 'btn small danger', t('shares.revoke'));
      b.type = 'button';
      b.addEventListener('click', async () => { await call('POST', `/api/patient/shares/${s.id}/revoke`, {}); loadShares(); });
      item.append(b);
    }
    ul.append(item);
  }
}

async function loadDownloads() {
  const { downloads } = await call('GET', '/api/patient/downloads');
  const ul = $('downloads');
  ul.textContent = '';
  if (!downloads.length) ul.append(li(t('downloads.none'), 'muted'));
  for (const d of downloads) {
    const mb = (d.bytes_sent / 1048576).toFixed(1);
    ul.append(li(`${localTime(d.time)} · ${d.accession_number || ''} ${d.scope} · ${mb} MB · ${d.completed ? t('downloads.done') : t('downloads.aborted')}`));
  }
}

async function showMe() {
  me = await call('GET', '/api/patient/me');
  setCsrf(me.csrf_token);
  $('verify').classList.add('hidden');
  $('me').classList.remove('hidden');
  $('logout').classList.remove('hidden');
  renderMe();
  loadShares();
  loadDownloads();
}

async function main() {
  $('lang').append(langButton(texts));
  texts();
  $('send').addEventListener('click', async () => {
    $('v-msg').textContent = '';
    try {
      const r = await call('POST', '/api/verify/sms', { phone: $('phone').value });
      $('v-msg').textContent = r.message;
      $('v-msg').classList.add('ok');
      sendCountdown(r.retry_after_s);
    } catch (e) { $('v-msg').classList.remove('ok'); $('v-msg').textContent = e.message; }
  });
  $('verify').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('v-msg').classList.remove('ok');
    $('v-msg').textContent = '';
    const body = { phone: $('phone').value, sms_code: $('sms').value, id_number: $('idn').value, accession: $('acc').value };
    if (examRef) body.exam_ref = examRef;
    try {
      const r = await call('POST', '/api/verify', body);
      setCsrf(r.csrf_token);
      $('sms').value = '';
      if (r.open_study_uid && !me) { location.href = `/film/${encodeURIComponent(r.open_study_uid)}`; return; }
      await showMe();
      if (pendingDownload) { const u = pendingDownload; pendingDownload = null; location.href = u; }
    } catch (e) { $('v-msg').textContent = e.message; }
  });
  $('logout').addEventListener('click', async () => {
    await call('POST', '/api/patient/logout', {});
    location.replace('/portal');
  });
  try {
    await showMe();
    if (examRef) await showVerify();
  } catch (e) {
    await showVerify();
  }
}

main();
