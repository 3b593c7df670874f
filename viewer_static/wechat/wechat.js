// WeChat "my exams" (/wechat/): inside WeChat the server has already identified the WeChat
// user (silent web authorisation); a bound user lands on their exams, an unbound one
// verifies once (the portal's methods) and is bound. Several patients (parent, children)
// may be bound and switched between. Outside WeChat the page verifies like the portal.
import { el, call, setCsrf, localTime } from '../share/common.js';
import { t, isWechat } from './strings.js';
import { langButton } from '../js/lang.js';
import { configure, setShare, signedUrl } from './jsbridge.js';

const $ = (id) => document.getElementById(id);
let me = null;        // /api/wechat/me
let patient = null;   // /api/patient/me
let methods = null;
let mode = 'bind';    // 'bind' (WeChat visit) or 'portal'
let timer = null;
const COMBO = { sms: 'sms', id_number: 'id', phone: 'phone', accession: 'acc' };

function texts() {
  document.title = t('title');
  $('title').textContent = t('title');
  $('h-people').textContent = t('people');
  $('add').textContent = t('add');
  $('v-title').textContent = mode === 'bind' ? t('bindTitle') : t('verifyTitle');
  $('v-note').textContent = mode === 'bind' ? t('bindNote') : t('verifyNote');
  $('l-phone').textContent = t('phone');
  $('l-sms').textContent = t('sms');
  if (!timer) $('send').textContent = t('send');
  $('l-id').textContent = t('id');
  $('l-acc').textContent = t('acc');
  $('v-submit').textContent = mode === 'bind' ? t('submit') : t('submitPortal');
  $('v-cancel').textContent = t('cancel');
  $('h-exams').textContent = t('exams');
  $('logout').textContent = t('logout');
  if (methods) $('v-hint').textContent = t('hint', { c: methods.combinations.map((c) => c.map((m) => t(COMBO[m])).join('+')).join(' / ') });
  if (me) renderPeople();
  if (patient) renderExams();
}

function show(id, on) { $(id).classList.toggle('hidden', !on); }

async function showVerify(kind) {
  mode = kind;
  methods = await call('GET', '/api/verify/methods');
  const on = new Set(methods.methods);
  show('f-phone', on.has('phone') || on.has('sms'));
  show('f-sms', on.has('sms'));
  show('f-id', on.has('id_number'));
  show('f-acc', on.has('accession'));
  show('v-cancel', kind === 'bind' && me && me.bindings.length > 0);
  show('verify', true);
  show('loading', false);
  texts();
  $('verify').scrollIntoView();
}

function countdown(seconds) {
  let left = seconds;
  $('send').disabled = true;
  clearInterval(timer);
  timer = setInterval(() => {
    left -= 1;
    $('send').textContent = t('resend', { s: left });
    if (left <= 0) { clearInterval(timer); timer = null; $('send').disabled = false; $('send').textContent = t('send'); }
  }, 1000);
  $('send').textContent = t('resend', { s: left });
}

function renderPeople() {
  show('people', me.visit);
  const ul = $('bindings');
  ul.textContent = '';
  for (const b of me.bindings) {
    const li = el('li', `person${b.current ? ' current' : ''}`);
    const sex = { M: '男', F: '女' }[b.sex] || '';
    li.append(el('span', 'exam-title', `${b.name} ${sex} ${b.birth_year || ''}`));
    const acts = el('span', 'actions');
    if (!b.current) {
      const sw = el('button', 'btn small primary', t('switchTo'));
      sw.type = 'button';
      sw.addEventListener('click', () => act('/api/wechat/switch', { binding_id: b.id }));
      acts.append(sw);
    }
    const nt = el('button', 'btn small', b.notify ? t('notifyOn') : t('notifyOff'));
    nt.type = 'button';
    nt.addEventListener('click', () => act('/api/wechat/notify', { binding_id: b.id, on: !b.notify }));
    const ub = el('button', 'btn small danger', t('unbind'));
    ub.type = 'button';
    ub.addEventListener('click', () => { if (window.confirm(t('unbindAsk'))) act('/api/wechat/unbind', { binding_id: b.id }); });
    acts.append(nt, ub);
    li.append(acts);
    ul.append(li);
  }
  $('add').disabled = me.bindings.length >= me.max_bindings;
}

function renderExams() {
  const p = patient.patient;
  const sex = { M: '男', F: '女' }[p.sex] || '';
  $('patient').textContent = `${p.name} ${sex} ${p.birth_year || ''}`;
  const ul = $('exams');
  ul.textContent = '';
  if (!patient.exams.length) ul.append(el('li', 'muted', t('none')));
  for (const e of patient.exams) {
    const li = el('li', 'exam');
    li.dataset.study = e.study_uid;
    li.append(el('div', 'exam-title', `${e.exam_date || ''} ${e.exam_time || ''} · ${e.modality} ${e.description || ''}`));
    li.append(el('div', 'muted', `${e.accession_number || ''} ${e.institution || ''}`));
    const acts = el('div', 'actions');
    if (e.images_enabled || e.report) {
      const v = el('a', 'btn small primary', t('view'));
      v.href = `/film/${encodeURIComponent(e.study_uid)}`;
      acts.append(v);
    }
    if (!e.images_enabled) acts.append(el('span', 'tag', t('noimages')));
    if (e.report && e.report.has_pdf) {
      const r = el('a', 'btn small', t('report'));
      r.href = `/api/studies/${encodeURIComponent(e.study_uid)}/report.pdf`;
      acts.append(r);
    } else if (!e.report) acts.append(el('span', 'tag', t('noreport')));
    const s = el('button', 'btn small', t('sendDoctor'));
    s.type = 'button';
    s.addEventListener('click', () => sendToDoctor(e).catch((err) => alert(err.message)));
    acts.append(s);
    li.append(acts);
    ul.append(li);
  }
}

async function sendToDoctor(exam) {
  const r = await call('POST', '/api/patient/shares', { study_uid: exam.study_uid, max_opens: 5, expires: '7d' });
  const box = $('sent');
  box.textContent = '';
  box.append(el('h2', '', t('sentTitle')));
  const inApp = isWechat(navigator.userAgent) && me && me.visit;
  box.append(el('p', 'hint-arrow', inApp ? t('sentHow') : t('sentOutside')));
  box.append(el('div', 'code', r.code));
  box.append(el('div', 'muted', r.url));
  box.append(el('div', 'muted', t('valid', { t: localTime(r.share.expires_at), n: r.share.max_opens })));
  show('sent', true);
  box.scrollIntoView();
  if (inApp) {
    try {
      const cfg = await call('GET', `/api/wechat/jssdk?url=${encodeURIComponent(signedUrl(location.href))}`);
      const bridge = await configure(cfg);
      await setShare(bridge, { title: t('sentTitle'), desc: `${exam.exam_date || ''} ${exam.modality}`, link: r.url });
    } catch (err) { /* the link and code are on screen; copying them still works */ }
  }
}

async function act(url, body) {
  try {
    const r = await call('POST', url, body);
    if (r.csrf_token) setCsrf(r.csrf_token);
    await refresh();
  } catch (e) { alert(e.message); }
}

async function showExams() {
  patient = await call('GET', '/api/patient/me');
  setCsrf(patient.csrf_token);
  show('verify', false);
  show('loading', false);
  show('exams-card', true);
  show('logout', true);
  renderExams();
}

async function refresh() {
  me = await call('GET', '/api/wechat/me');
  setCsrf(me.csrf_token);
  renderPeople();
  if (me.signed_in) { await showExams(); return; }
  patient = null;
  show('exams-card', false);
  if (me.visit && me.bindings.length && location.hash !== '#bind') {
    const r = await call('POST', '/api/wechat/switch', { binding_id: me.bindings[0].id });
    setCsrf(r.csrf_token);
    await refresh();
    return;
  }
  if (me.visit) { await showVerify('bind'); return; }
  if (isWechat(navigator.userAgent) && me.configured) { location.replace('/wechat/oauth/start'); return; }
  if (!me.configured && isWechat(navigator.userAgent)) $('v-note').textContent = t('notConfigured');
  await showVerify('portal');
}

async function main() {
  $('lang').append(langButton(t, 'lang', texts));
  texts();
  $('send').addEventListener('click', async () => {
    $('v-msg').classList.remove('ok');
    $('v-msg').textContent = '';
    try {
      const r = await call('POST', '/api/verify/sms', { phone: $('phone').value });
      $('v-msg').textContent = r.message;
      $('v-msg').classList.add('ok');
      countdown(r.retry_after_s);
    } catch (e) { $('v-msg').textContent = e.message; }
  });
  $('verify').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('v-msg').classList.remove('ok');
    $('v-msg').textContent = '';
    const body = { phone: $('phone').value, sms_code: $('sms').value, id_number: $('idn').value, accession: $('acc').value };
    try {
      const r = await call('POST', mode === 'bind' ? '/api/wechat/bind' : '/api/verify', body);
      setCsrf(r.csrf_token);
      $('sms').value = '';
      $('idn').value = '';
      if (location.hash) history.replaceState(null, '', location.pathname);
      await refresh();
    } catch (e) { $('v-msg').textContent = e.message; }
  });
  $('v-cancel').addEventListener('click', async () => { history.replaceState(null, '', location.pathname); show('verify', false); await refresh(); });
  $('add').addEventListener('click', () => showVerify('bind'));
  $('logout').addEventListener('click', async () => {
    await call('POST', '/api/wechat/logout', {});
    location.replace(isWechat(navigator.userAgent) ? '/wechat/#bind' : '/wechat/');
  });
  try { await refresh(); } catch (e) { show('loading', true); $('loading').textContent = e.message; }
}

main();
