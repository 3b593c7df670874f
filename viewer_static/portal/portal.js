// Patient portal (/portal): verify identity, then the patient's exams newest first (report,
// images in the film view, download after a fresh verification), own patient QR codes
// (我的二维码: create, show, print, copy link, revoke), own shares with their open counts
// (create, revoke, copy link) and own downloads.
//
// The same page serves a patient QR (/p/{token}): the hospital, "验证身份后查看您的全部检查"
// and the verification form bound to the QR (POST /api/p/open), then 我的检查; a QR that is
// used up, expired, revoked or unknown shows what happened and the next steps.
// /portal#reverify=<study_uid> (from the film view): the form scrolled into view, then back
// to that exam's film view after a successful verification.
import { t, el, call, setCsrf, localTime, langButton, localMsg } from '../share/common.js';
import { linkRow } from '../share/copylink.js';
import { strings } from '../js/lang.js';
import { loadHospital, hospitalBlock } from '../js/hospital.js';

const $ = (id) => document.getElementById(id);
const hash = new URLSearchParams(location.hash.slice(1));
const examRef = hash.get('exam') || '';
const UID_RE = /^[0-9][0-9.]{0,63}$/;
let reverifyUid = UID_RE.test(hash.get('reverify') || '') ? hash.get('reverify') : '';
const qrMatch = location.pathname.match(/^\/p\/([A-Za-z0-9_-]{16,64})$/);
const qrToken = qrMatch ? qrMatch[1] : '';
let methods = null;
let me = null;
let hospital = {};
let pendingDownload = null;
let timer = null;

const COMBO_NAMES = { sms: 'verify.sms', id_number: 'verify.id', phone: 'verify.phone', accession: 'verify.acc' };

// strings of this page (the shared ones are in common.js)
const WORDS = {
  'zh-CN': {
    'pqr.title': '验证身份后查看您的全部检查', 'pqr.sub': '本二维码可查看您在本院的全部检查（包括以后的检查）。请先验证身份。',
    'pqr.bad.title': '二维码无法使用', 'pqr.portal': '验证身份，查看我的检查', 'pqr.home': '返回首页',
    'pqr.call': '请联系医院重新打印二维码', 'pqr.opens': '已使用 {o}/{m} 次 · 有效期至 {t}',
    'myqr.title': '我的二维码', 'myqr.note': '一个二维码查看您的全部检查（包括以后的检查）；扫码后需验证身份。可打印或发送给家人。',
    'myqr.opens': '可打开次数', 'myqr.days': '有效期', 'myqr.create': '生成我的二维码', 'myqr.print': '打印二维码',
    'myqr.none': '暂无二维码', 'myqr.times': '{n} 次', 'myqr.state': '已打开 {o}/{m} 次 · {s}', 'myqr.show': '显示二维码',
    'slip.title': '云胶片 · 全部检查二维码', 'slip.scan': '微信或手机相机扫码，验证身份后查看全部检查',
    'slip.facts': '可打开 {m} 次 · 有效期至 {t}', 'slip.who': '患者：{n}',
    'dl.exam': '整个检查', 'dl.series': '序列', 'dl.image': '图像',
  },
  en: {
    'pqr.title': 'Verify your identity to see all your exams', 'pqr.sub': 'This QR code shows all your exams at this hospital, including later ones. Verify your identity first.',
    'pqr.bad.title': 'This QR code cannot be used', 'pqr.portal': 'Verify your identity to see my exams', 'pqr.home': 'Home',
    'pqr.call': 'Ask the hospital to print a new QR code', 'pqr.opens': 'Used {o} of {m} times · valid until {t}',
    'myqr.title': 'My QR code', 'myqr.note': 'One QR code for all your exams, including later ones; scanning it asks for identity verification. Print it or send it to your family.',
    'myqr.opens': 'Opens allowed', 'myqr.days': 'Valid for', 'myqr.create': 'Create my QR code', 'myqr.print': 'Print QR code',
    'myqr.none': 'No QR codes', 'myqr.times': '{n} times', 'myqr.state': 'Opened {o}/{m} times · {s}', 'myqr.show': 'Show QR code',
    'slip.title': 'Cloud film · QR code for all exams', 'slip.scan': 'Scan with WeChat or the camera, verify your identity, see all exams',
    'slip.facts': 'Opens allowed: {m} · valid until {t}', 'slip.who': 'Patient: {n}',
    'dl.exam': 'whole exam', 'dl.series': 'series', 'dl.image': 'image',
  },
};

const w = strings(WORDS);

function texts() {
  document.title = qrToken ? `${w('pqr.title')} · ${t('title.portal')}` : t('title.portal');
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
  $('h-myqr').textContent = w('myqr.title');
  $('myqr-note').textContent = w('myqr.note');
  $('l-qr-opens').textContent = w('myqr.opens');
  $('l-qr-days').textContent = w('myqr.days');
  for (const o of $('qr-opens').options) o.textContent = w('myqr.times', { n: o.value });
  for (const o of $('qr-days').options) o.textContent = t('days', { n: parseInt(o.value, 10) });
  $('qr-create').textContent = w('myqr.create');
  $('pqr-title').textContent = w('pqr.title');
  $('pqr-sub').textContent = w('pqr.sub');
  if (methods) {
    const combos = methods.combinations.map((c) => c.map((m) => t(COMBO_NAMES[m])).join('+')).join(' / ');
    $('v-hint').textContent = t('verify.hint', { c: combos });
  }
  showHospital(qrToken ? $('pqr-hosp') : $('portal-hosp'));
  if (me) { renderMe(); loadQrs(); loadDownloads(); }
}

function showHospital(box) {
  box.textContent = '';
  if (hospital && hospital.name) box.append(hospitalBlock(hospital));
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

/** The verification form, shown and scrolled into view (a phone keeps it off-screen
 *  otherwise, below the exam list the patient was looking at). */
async function verifyInView(note) {
  await showVerify(note);
  $('verify').scrollIntoView({ block: 'start', behavior: 'auto' });
  const first = [...$('verify').querySelectorAll('input')].find((i) => i.offsetParent !== null);
  if (first) first.focus({ preventScroll: true });
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

function filmHref(e) {
  return e.study_uid ? `/film/${encodeURIComponent(e.study_uid)}` : `/film/exam/${e.exam_id}`;
}

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
    view.href = filmHref(e);
    acts.append(view);
    if (e.report && e.report.has_pdf && e.study_uid) {
      const pdf = el('a', 'btn small', t('exam.report'));
      pdf.href = `/api/studies/${encodeURIComponent(e.study_uid)}/report.pdf`;
      acts.append(pdf);
    } else if (!e.report) acts.append(el('span', 'tag', t('exam.noreport')));
    if (e.images_enabled && e.study_uid) {
      const dl = el('a', 'btn small', t('exam.download'));
      dl.href = `/api/download/studies/${encodeURIComponent(e.study_uid)}.zip`;
      dl.addEventListener('click', (ev) => {
        if (me.freshly_verified) return;
        ev.preventDefault();
        pendingDownload = dl.href;
        verifyInView(t('verify.again'));
      });
      acts.append(dl);
    } else if (!e.images_enabled) acts.append(el('span', 'tag', t('exam.noimages')));
    if (e.study_uid) {
      const share = el('button', 'btn small', t('exam.share'));
      share.type = 'button';
      share.addEventListener('click', () => createShare(e.study_uid));
      acts.append(share);
    }
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
  box.append(linkRow(r.url));
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
    // the link itself is shown (and copied) when the share is created: only its hash is kept
    if (s.url) item.append(linkRow(s.url));
    if (!s.revoked_at && s.state !== 'expired') {
      const b = el('button', 'btn small danger', t('shares.revoke'));
      b.type = 'button';
      b.addEventListener('click', async () => { await call('POST', `/api/patient/shares/${s.id}/revoke`, {}); loadShares(); });
      item.append(b);
    }
    ul.append(item);
  }
}

// 我的二维码 ------------------------------------------------------------------------------
function qrState(q) {
  const s = q.state === 'open' || q.state === 'locked' ? t('share.expires', { t: localTime(q.expires_at) }) : t(`shares.${q.state}`);
  return w('myqr.state', { o: q.opens, m: q.max_opens, s });
}

/** Show one patient QR (a fresh one carries its PNG; a listed one is drawn by /api/qr). */
async function showQr(q, png) {
  let src = png;
  if (!src) {
    const blob = await call('POST', '/api/qr', { text: q.url, format: 'png' }, { accept: 'image/png', as: 'blob' }).catch(() => null);
    if (!blob) return;
    src = URL.createObjectURL(blob);
  }
  const box = $('qr-new');
  box.textContent = '';
  const img = el('img', 'qr-img');
  img.src = src;
  img.alt = 'QR';
  box.append(img, el('div', 'muted', qrState(q)), linkRow(q.url));
  const pr = el('button', 'btn wide', w('myqr.print'));
  pr.type = 'button';
  pr.addEventListener('click', () => printSlip(q, src));
  box.append(pr);
  box.classList.remove('hidden');
  box.scrollIntoView({ block: 'nearest' });
}

function printSlip(q, src) {
  showHospital($('s-hosp'));
  $('s-title').textContent = w('slip.title');
  $('s-who').textContent = me ? w('slip.who', { n: me.patient.name }) : '';
  $('s-qr').src = src;
  $('s-scan').textContent = w('slip.scan');
  $('s-facts').textContent = w('slip.facts', { m: q.max_opens, t: localTime(q.expires_at) });
  $('s-url').textContent = q.url;
  window.print();
}

async function loadQrs() {
  const { shares } = await call('GET', '/api/patient/qr');
  const ul = $('qrs');
  ul.textContent = '';
  if (!shares.length) ul.append(li(w('myqr.none'), 'muted'));
  for (const q of shares) {
    const item = el('li');
    item.append(el('div', '', `${localTime(q.created_at)} · ${qrState(q)}`));
    if (q.url) item.append(linkRow(q.url));
    const acts = el('div', 'actions');
    if (q.url) {
      const b = el('button', 'btn small', w('myqr.show'));
      b.type = 'button';
      b.addEventListener('click', () => showQr(q));
      acts.append(b);
    }
    if (!q.revoked_at && q.state !== 'expired') {
      const b = el('button', 'btn small danger', t('shares.revoke'));
      b.type = 'button';
      b.addEventListener('click', async () => {
        await call('POST', `/api/patient/qr/${q.id}/revoke`, {});
        $('qr-new').classList.add('hidden');
        loadQrs();
      });
      acts.append(b);
    }
    item.append(acts);
    ul.append(item);
  }
}

async function createQr() {
  $('qr-msg').textContent = '';
  try {
    const r = await call('POST', '/api/patient/qr', { max_opens: parseInt($('qr-opens').value, 10), expires: $('qr-days').value });
    await showQr(r.share, r.qr_png);
    loadQrs();
  } catch (e) { $('qr-msg').textContent = e.message; }
}

// downloads --------------------------------------------------------------------------------
async function loadDownloads() {
  const { downloads } = await call('GET', '/api/patient/downloads');
  const ul = $('downloads');
  ul.textContent = '';
  if (!downloads.length) ul.append(li(t('downloads.none'), 'muted'));
  for (const d of downloads) {
    const mb = (d.bytes_sent / 1048576).toFixed(1);
    const scope = w(`dl.${d.scope === 'study' ? 'exam' : d.scope}`);
    ul.append(li(`${localTime(d.time)} · ${d.accession_number || ''} ${scope} · ${mb} MB · ${d.completed ? t('downloads.done') : t('downloads.aborted')}`));
  }
}

async function showMe() {
  me = await call('GET', '/api/patient/me');
  setCsrf(me.csrf_token);
  $('verify').classList.add('hidden');
  $('pqr').classList.add('hidden');
  $('me').classList.remove('hidden');
  $('logout').classList.remove('hidden');
  renderMe();
  loadQrs();
  loadShares();
  loadDownloads();
}

// the patient QR page (/p/{token}) -------------------------------------------------------------
function qrRefusal(message) {
  $('pqr-title').textContent = w('pqr.bad.title');
  $('pqr-sub').classList.add('hidden');
  $('pqr-msg').textContent = message;
  const next = $('pqr-next');
  next.textContent = '';
  const portal = el('a', 'btn primary wide', w('pqr.portal'));
  portal.href = '/portal';
  portal.id = 'pqr-portal';
  const home = el('a', 'btn wide', w('pqr.home'));
  home.href = '/entry';
  next.append(portal, home, el('p', 'muted', w('pqr.call')));
  $('pqr-refusal').classList.remove('hidden');
  $('verify').classList.add('hidden');
}

async function qrPage() {
  $('pqr').classList.remove('hidden');
  let st;
  try {
    st = await call('POST', '/api/p/status', { token: qrToken });
  } catch (e) {
    qrRefusal(e.message);
    return;
  }
  if (st.session) { location.replace('/portal'); return; }
  if (st.state !== 'open') { qrRefusal(localMsg(st.message)); return; }
  $('pqr-sub').textContent = w('pqr.sub');
  await showVerify();
}

async function submitVerify(ev) {
  ev.preventDefault();
  $('v-msg').classList.remove('ok');
  $('v-msg').textContent = '';
  const body = { phone: $('phone').value, sms_code: $('sms').value, id_number: $('idn').value, accession: $('acc').value };
  try {
    if (qrToken) {
      const r = await call('POST', '/api/p/open', { token: qrToken, ...body });
      setCsrf(r.csrf_token);
      location.replace(r.next || '/portal');
      return;
    }
    if (examRef) body.exam_ref = examRef;
    const r = await call('POST', '/api/verify', body);
    setCsrf(r.csrf_token);
    $('sms').value = '';
    if (reverifyUid) { location.replace(`/film/${encodeURIComponent(reverifyUid)}`); return; }
    if (r.open_study_uid && !me) { location.href = `/film/${encodeURIComponent(r.open_study_uid)}`; return; }
    await showMe();
    if (pendingDownload) { const u = pendingDownload; pendingDownload = null; location.href = u; }
  } catch (e) {
    $('v-msg').textContent = e.message;
    if (qrToken && (e.status === 410 || e.status === 429 || e.status === 404)) qrRefusal(e.message);
  }
}

async function main() {
  $('lang').append(langButton(texts));
  texts();
  loadHospital().then((h) => {
    hospital = h || {};
    showHospital(qrToken ? $('pqr-hosp') : $('portal-hosp'));
  });
  $('send').addEventListener('click', async () => {
    $('v-msg').textContent = '';
    try {
      const r = await call('POST', '/api/verify/sms', { phone: $('phone').value });
      $('v-msg').textContent = r.message;
      $('v-msg').classList.add('ok');
      sendCountdown(r.retry_after_s);
    } catch (e) { $('v-msg').classList.remove('ok'); $('v-msg').textContent = e.message; }
  });
  $('verify').addEventListener('submit', submitVerify);
  $('qr-create').addEventListener('click', createQr);
  $('logout').addEventListener('click', async () => {
    await call('POST', '/api/patient/logout', {});
    location.replace('/portal');
  });
  if (qrToken) { await qrPage(); return; }
  try {
    await showMe();
    if (examRef) await showVerify();
  } catch (e) {
    await showVerify();
  }
  if (reverifyUid) await verifyInView(t('verify.again'));
  // the film view may send a patient already on this page (same document, new hash)
  window.addEventListener('hashchange', () => {
    const uid = new URLSearchParams(location.hash.slice(1)).get('reverify') || '';
    if (UID_RE.test(uid)) { reverifyUid = uid; verifyInView(t('verify.again')); }
  });
}

main();
