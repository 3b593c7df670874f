// Doctor workspace: find a patient, see every exam of theirs by time (those known only in
// the PACS are marked and fetched when opened), open one or several side by side in the
// comparison workspace (/workspace/uid1,uid2,...): 2 exams in 1×2, 3 or 4 in 2×2; more are
// refused here (four panes is what a screen shows readably).
import { api, el, show, initPage, REPORT_STATUS, EXAM_STATUS } from './common.js';
import { MAX_PANES as MAX_COMPARE } from '../../js/hanging.js';   // the workspace's 2×2

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const SEX = { M: '男', F: '女', O: '其他' };
let patient = null;
let exams = [];
let ohifViewer = null;   // '/ohif/viewer' when ohif_enabled (GET /api/ohif)

async function search(ev) {
  if (ev) ev.preventDefault();
  show($('search-msg'), '', '');
  try {
    const r = await api('GET', `/api/staff/patients?q=${enc($('q').value.trim())}`);
    const body = $('patients').tBodies[0];
    body.replaceChildren(...r.patients.map((p) => {
      const tr = el('tr', { tabindex: 0 }, el('td', {}, p.name), el('td', {}, p.patient_id),
        el('td', {}, SEX[p.sex] || ''), el('td', {}, p.birth_date || ''), el('td', {}, p.phone),
        el('td', {}, p.id_number), el('td', {}, p.exams), el('td', {}, p.last_exam_date || ''));
      tr.addEventListener('click', () => open(p.patient_id));
      tr.addEventListener('keydown', (k) => { if (k.key === 'Enter') open(p.patient_id); });
      return tr;
    }));
    $('patients').classList.toggle('hidden', !r.patients.length);
    if (!r.patients.length) show($('search-msg'), 'info', '没有找到患者。');
    if (r.patients.length === 1) open(r.patients[0].patient_id);
  } catch (e) {
    show($('search-msg'), 'error', e.message);
  }
}

async function open(patientId) {
  const r = await api('GET', `/api/staff/patients/${enc(patientId)}/exams`);
  patient = r.patient;
  exams = r.exams;
  $('history').classList.remove('hidden');
  show($('p-msg'), '', '');
  $('p-title').textContent = `${patient.name} 的全部检查（${exams.length}）`;
  const unmask = el('button', { type: 'button', class: 'secondary', id: 'unmask-btn' }, '查看完整手机号');
  unmask.addEventListener('click', unmaskPhone);
  $('p-info').replaceChildren(
    el('span', {}, '患者ID'), el('span', {}, patient.patient_id),
    el('span', {}, '性别 / 出生'), el('span', {}, `${SEX[patient.sex] || ''} ${patient.birth_date || ''}`),
    el('span', {}, '手机'), el('span', {}, el('span', { id: 'p-phone' }, patient.phone || '—'), ' ', patient.phone ? unmask : ''),
    el('span', {}, '身份证'), el('span', {}, patient.id_number || '—'));
  $('pacs-btn').classList.toggle('hidden', !r.pacs_configured);
  drawExams();
  $('history').scrollIntoView();
}

function drawExams() {
  const body = $('exams').tBodies[0];
  body.replaceChildren(...exams.map((e) => {
    const box = el('input', { type: 'checkbox', value: e.study_uid, 'aria-label': '选择' });
    box.addEventListener('change', updateCompare);
    const openBtn = el('button', { type: 'button', class: 'secondary' }, e.pacs_only ? '从PACS调阅' : '打开');
    openBtn.addEventListener('click', () => openExams([e]));
    // OHIF v3 (docs/ohif.md), when the server offers it and the images are here
    const ohif = ohifViewer && e.study_uid && !e.pacs_only
      ? el('a', { href: `${ohifViewer}?StudyInstanceUIDs=${enc(e.study_uid)}`, target: '_blank',
        rel: 'noopener', class: 'btn secondary ohif-link' }, 'OHIF 阅片') : '';
    return el('tr', {}, el('td', {}, box), el('td', {}, `${e.exam_date || ''} ${e.exam_time || ''}`),
      el('td', {}, `${e.modality} ${e.description || ''}`), el('td', {}, e.accession_number || ''),
      el('td', {}, EXAM_STATUS[e.status] || e.status),
      el('td', {}, e.report_status ? REPORT_STATUS[e.report_status] || e.report_status : '—'),
      el('td', {}, e.pacs_only ? el('span', { class: 'tag pacs' }, '仅在PACS') : `${e.num_instances} 幅`),
      el('td', {}, openBtn, ' ', ohif));
  }));
  updateCompare();
}

function selected() {
  const uids = [...$('exams').querySelectorAll('input[type=checkbox]:checked')].map((b) => b.value);
  return exams.filter((e) => uids.includes(e.study_uid));
}

function updateCompare() {
  const n = selected().length;
  $('compare-btn').disabled = n < 2 || n > MAX_COMPARE;
  $('compare-btn').textContent = n >= 2 ? `并排对比所选 ${n} 个检查` : '并排对比所选检查';
  show($('compare-msg'), n > MAX_COMPARE ? 'error' : '', n > MAX_COMPARE
    ? `最多可同时对比 ${MAX_COMPARE} 个检查，已选 ${n} 个，请取消勾选 ${n - MAX_COMPARE} 个。`
      + ` / At most ${MAX_COMPARE} exams can be compared side by side: ${n} are ticked, untick ${n - MAX_COMPARE}.`
    : '');
}

async function retrieve(e) {
  show($('p-msg'), 'info', `正在从 PACS 调阅 ${e.accession_number || e.study_uid} …`);
  await api('POST', `/api/pacs/studies/${enc(e.study_uid)}/retrieve`, {});
  for (let i = 0; i < 600; i += 1) {
    const p = await api('GET', `/api/pacs/studies/${enc(e.study_uid)}/retrieve`);
    if (p.first_image_ready) return;
    if (p.status === 'failed') throw new Error(`PACS 调阅失败：${p.error || ''}`);
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error('PACS 调阅超时');
}

async function openExams(list) {
  try {
    for (const e of list) if (e.pacs_only) await retrieve(e);
    show($('p-msg'), '', '');
    const url = `/workspace/${list.map((e) => enc(e.study_uid)).join(',')}`;
    window.open(url, '_blank', 'noopener');
  } catch (err) {
    show($('p-msg'), 'error', err.message);
  }
}

async function unmaskPhone() {
  const reason = window.prompt('查看完整手机号会记入审计日志。请填写原因（如：电话通知复查）：');
  if (reason === null) return;
  try {
    const r = await api('POST', `/api/staff/patients/${enc(patient.patient_id)}/unmask`, { field: 'phone', reason });
    $('p-phone').textContent = r.value;
    $('unmask-btn').remove();
  } catch (e) {
    show($('p-msg'), 'error', e.message);
  }
}

$('compare-btn').addEventListener('click', () => openExams(selected()));
$('pacs-btn').addEventListener('click', async () => {
  try {
    show($('p-msg'), 'info', '正在查询 PACS …');
    const r = await api('GET', `/api/pacs/patients/${enc(patient.patient_id)}/studies`);
    show($('p-msg'), 'ok', `PACS 中共有 ${r.studies.length} 个检查。`);
    await open(patient.patient_id);
  } catch (e) {
    show($('p-msg'), 'error', e.message);
  }
});
$('search').addEventListener('submit', search);

initPage('doctor').then(async () => {
  try { ohifViewer = (await api('GET', '/api/ohif')).viewer; } catch (e) { ohifViewer = null; }
  const q = new URLSearchParams(location.search).get('patient_id');
  if (q) { $('q').value = q; search(); }
}).catch(() => {});
