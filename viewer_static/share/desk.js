// Front desk (/share/desk?study=UID): create a share for one exam, print its slip (exam, QR,
// code, expiry), see and revoke the exam's shares, switch the exam's images on or off.
// 患者二维码（全部检查）: one QR code for all of the exam's patient's exams (R1.4), printed on
// the same slip; the patient's QR codes listed with copy link and revoke.
import { t, el, call, setCsrf, localTime, langButton } from './common.js';
import { linkRow } from './copylink.js';
import { strings } from '../js/lang.js';
import { loadHospital, hospitalBlock } from '../js/hospital.js';

const WORDS = {
  'zh-CN': {
    pqr: '患者二维码（全部检查）', title: '云胶片 · 全部检查二维码',
    scan: '微信或手机相机扫码，验证身份后查看全部检查（包括以后的检查）',
    who: '患者：{n}', facts: '可打开 {m} 次 · 有效期至 {t}', none: '暂无患者二维码',
    state: '{c} · 已打开 {o}/{m} 次', copyhint: '链接',
  },
  en: {
    pqr: 'Patient QR code (all exams)', title: 'Cloud film · QR code for all exams',
    scan: 'Scan with WeChat or the camera, verify identity, see all exams (also later ones)',
    who: 'Patient: {n}', facts: 'Opens allowed: {m} · valid until {t}', none: 'No patient QR codes',
    state: '{c} · opened {o}/{m} times', copyhint: 'Link',
  },
};
const w = strings(WORDS);
let patientDbId = null;
let slipKind = 'share';
let hospital = {};

const $ = (id) => document.getElementById(id);
const study = new URLSearchParams(location.search).get('study') || '';
let exam = null;
let created = null;

function texts() {
  document.title = t('title.desk');
  $('title').textContent = t('title.desk');
  $('l-opens').textContent = t('desk.opens');
  $('l-expires').textContent = t('desk.expires');
  for (const o of $('expires').options) o.textContent = t('days', { n: parseInt(o.value, 10) });
  $('l-images').textContent = t('desk.images');
  $('l-download').textContent = t('desk.download');
  $('create').textContent = t('desk.create');
  $('print').textContent = t('desk.print');
  $('s-title').textContent = t('slip.title');
  $('s-code-l').textContent = t('slip.code');
  $('s-scan').textContent = t('slip.scan');
  $('h-shares').textContent = t('me.shares');
  $('pqr-create').textContent = w('pqr');
  $('h-pqrs').textContent = w('pqr');
  if (slipKind === 'patient') {
    $('s-title').textContent = w('title');
    $('s-scan').textContent = w('scan');
  }
  if (exam) $('switch').textContent = exam.images_enabled ? t('desk.switch.on') : t('desk.switch.off');
  if (created && slipKind === 'share') $('s-expiry').textContent = `${t('slip.expires')} ${localTime(created.share.expires_at)}`;
  if (created && slipKind === 'patient') $('s-expiry').textContent = w('facts', { m: created.share.max_opens, t: localTime(created.share.expires_at) });
}

function examLine(e) {
  return `${e.exam_date || ''} ${e.modality || ''} ${e.description || ''}`.trim();
}

async function loadShares() {
  const { shares } = await call('GET', `/api/shares?study_uid=${encodeURIComponent(study)}`);
  const ul = $('shares');
  ul.textContent = '';
  if (!shares.length) ul.append(el('li', 'muted', t('shares.none')));
  for (const s of shares) {
    const li = el('li');
    li.append(el('div', '', `${localTime(s.created_at)} · ${t('shares.opens', { o: s.opens, m: s.max_opens })}`));
    const state = s.state === 'open' || s.state === 'locked' ? `${t('share.expires', { t: localTime(s.expires_at) })}` : t(`shares.${s.state}`);
    li.append(el('div', 'muted', state));
    // only the hash of a share's token is kept: its link is shown (and copied) when created
    if (s.url) li.append(linkRow(s.url));
    if (s.state === 'locked') {   // wrong codes: 15 min, then 1 h, then until unlocked here
      li.append(el('div', 'muted', t(s.locked_until === 'desk' ? 'shares.locked.desk' : 'shares.locked')));
      const u = el('button', 'btn small', t('shares.unlock'));
      u.type = 'button';
      u.addEventListener('click', async () => { await call('POST', `/api/shares/${s.id}/unlock`, {}); loadShares(); });
      li.append(u);
    }
    if (!s.revoked_at) {
      const b = el('button', 'btn small danger', t('shares.revoke'));
      b.type = 'button';
      b.addEventListener('click', async () => { await call('POST', `/api/shares/${s.id}/revoke`, {}); loadShares(); });
      li.append(b);
    }
    ul.append(li);
  }
}

function showSlip() {
  $('s-hosp').textContent = '';
  if (hospital && hospital.name) $('s-hosp').append(hospitalBlock(hospital));
  $('s-qr').src = created.qr_png;
  $('s-url').textContent = created.url;
  $('s-copy').textContent = '';
  $('s-copy').append(linkRow(created.url));
  $('slip').classList.remove('hidden');
  $('print').classList.remove('hidden');
  $('slip').scrollIntoView({ block: 'nearest' });
}

function maskedName(n) { return n ? n[0] + '*'.repeat(Math.max(1, n.length - 1)) : ''; }

async function createPatientQr() {
  $('msg').textContent = '';
  const opens = parseInt($('opens').value, 10);
  try {
    if (patientDbId === null) await loadPatientQrs();
    created = await call('POST', `/api/patients/${patientDbId}/qr`, {
      max_opens: Number.isFinite(opens) ? opens : 0, expires: $('expires').value,
    });
  } catch (e) { $('msg').textContent = e.message; return; }
  slipKind = 'patient';
  $('s-exam').textContent = w('who', { n: maskedName(exam.patient.name || '') });
  $('s-code-box').classList.add('hidden');
  $('s-code').textContent = '';
  showSlip();
  texts();
  loadPatientQrs();
}

async function loadPatientQrs() {
  const r = await call('GET', `/api/patients/qr?study_uid=${encodeURIComponent(study)}`);
  patientDbId = r.patient_db_id;
  const ul = $('pqrs');
  ul.textContent = '';
  if (!r.shares.length) ul.append(el('li', 'muted', w('none')));
  for (const q of r.shares) {
    const li = el('li');
    li.append(el('div', '', w('state', { c: localTime(q.created_at), o: q.opens, m: q.max_opens })));
    const state = q.state === 'open' || q.state === 'locked' ? t('share.expires', { t: localTime(q.expires_at) }) : t(`shares.${q.state}`);
    li.append(el('div', 'muted', state));
    if (q.url) li.append(linkRow(q.url));
    if (!q.revoked_at) {
      const b = el('button', 'btn small danger', t('shares.revoke'));
      b.type = 'button';
      b.addEventListener('click', async () => { await call('POST', `/api/patients/qr/${q.id}/revoke`, {}); loadPatientQrs(); });
      li.append(b);
    }
    ul.append(li);
  }
}

async function main() {
  $('lang').append(langButton(texts));
  texts();
  try {
    const me = await call('GET', '/api/auth/me');
    setCsrf(me.csrf_token);
    exam = await call('GET', `/api/studies/${encodeURIComponent(study)}`);
  } catch (e) {
    $('msg').textContent = t('error', { m: e.message });
    return;
  }
  $('exam').textContent = examLine(exam);
  $('exam-sub').textContent = `${exam.accession_number || ''} · ${exam.patient.name || ''}`;
  texts();
  $('switch').addEventListener('click', async () => {
    try {
      const r = await call('POST', `/api/exams/${encodeURIComponent(study)}/images`, { enabled: !exam.images_enabled });
      exam.images_enabled = r.images_enabled;
      texts();
    } catch (e) { $('msg').textContent = e.message; }
  });
  $('form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('msg').textContent = '';
    const opens = parseInt($('opens').value, 10);
    try {
      created = await call('POST', '/api/shares', {
        study_uid: study, max_opens: Number.isFinite(opens) ? opens : 0, expires: $('expires').value,
        include_images: $('images').checked, allow_download: $('images').checked && $('download').checked,
      });
    } catch (e) { $('msg').textContent = e.message; return; }
    slipKind = 'share';
    $('s-title').textContent = t('slip.title');
    $('s-scan').textContent = t('slip.scan');
    $('s-exam').textContent = `${t('slip.exam')}: ${examLine(exam)} ${exam.accession_number || ''}`;
    $('s-code-box').classList.remove('hidden');
    showSlip();
    $('s-code').textContent = created.code;
    texts();
    loadShares();
  });
  $('pqr-create').addEventListener('click', createPatientQr);
  $('print').addEventListener('click', () => window.print());
  loadHospital().then((h) => { hospital = h || {}; });
  loadShares();
  loadPatientQrs().catch((e) => { $('msg').textContent = e.message; });
}

main();
