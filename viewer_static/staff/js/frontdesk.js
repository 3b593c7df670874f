// Front desk: find an exam (name, patient ID, accession number, date), see its report
// status, switch its images off/on for patients, create a share and print its QR slip,
// list and revoke shares, see who downloaded what.
import { api, el, show, fmtTime, initPage, REPORT_STATUS } from './common.js';

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
let current = null;          // the selected exam (summary from /api/studies)
let lastShare = null;

function qs(params) {
  return Object.entries(params).filter(([, v]) => v).map(([k, v]) => `${enc(k)}=${enc(v)}`).join('&');
}

function imagesTag(on) {
  return el('span', { class: `tag ${on ? 'on' : 'off'}` }, on ? '开放' : '已关闭');
}

function reportTag(e) {
  if (e.report && e.report.status) return el('span', { class: 'tag on' }, REPORT_STATUS[e.report.status] || e.report.status);
  if (e.status === 'reported') return el('span', { class: 'tag on' }, '已出报告');
  return el('span', { class: 'tag' }, '未出报告');
}

async function search(ev) {
  if (ev) ev.preventDefault();
  const q = { name: $('q-name').value.trim(), patient_id: $('q-pid').value.trim(), accession: $('q-acc').value.trim(), date_from: $('q-from').value, date_to: $('q-to').value, per_page: 100 };
  show($('search-msg'), '', '');
  try {
    const r = await api('GET', `/api/studies?${qs(q)}`);
    const rows = r.studies || [];
    $('total').textContent = `共 ${r.total ?? rows.length} 个`;
    const body = $('results').tBodies[0];
    body.replaceChildren(...rows.map((e) => {
      const tr = el('tr', { 'data-uid': e.study_uid, tabindex: 0 },
        el('td', {}, e.exam_date || ''), el('td', {}, e.patient.name), el('td', {}, e.patient.patient_id),
        el('td', {}, e.accession_number || ''), el('td', {}, `${e.modality} ${e.description || ''}`),
        el('td', {}, reportTag(e)), el('td', {}, imagesTag(e.images_enabled)));
      tr.addEventListener('click', () => select(e, tr));
      tr.addEventListener('keydown', (k) => { if (k.key === 'Enter') select(e, tr); });
      return tr;
    }));
    if (!rows.length) show($('search-msg'), 'info', '没有找到符合条件的检查。');
  } catch (e) {
    show($('search-msg'), 'error', e.message);
  }
}

async function select(exam, tr) {
  for (const r of $('results').tBodies[0].rows) r.classList.remove('selected');
  if (tr) tr.classList.add('selected');
  current = exam;
  $('detail-empty').classList.add('hidden');
  $('detail-body').classList.remove('hidden');
  show($('d-msg'), '', '');
  $('d-title').textContent = `${exam.patient.name} · ${exam.modality} ${exam.description || ''}`;
  $('d-info').replaceChildren(
    el('span', {}, '患者ID'), el('span', {}, exam.patient.patient_id),
    el('span', {}, '检查号'), el('span', {}, exam.accession_number || ''),
    el('span', {}, '检查日期'), el('span', {}, exam.exam_date || ''),
    el('span', {}, '报告'), el('span', {}, reportTag(exam)),
    el('span', {}, '患者查看影像'), el('span', { id: 'd-images' }, imagesTag(exam.images_enabled)),
  );
  $('view-btn').href = `/film/${enc(exam.study_uid)}`;
  drawSwitch();
  await Promise.all([loadShares(), loadDownloads()]);
}

function drawSwitch() {
  const b = $('images-btn');
  b.textContent = current.images_enabled ? '关闭影像（患者只能看报告）' : '开放影像';
  b.className = current.images_enabled ? 'switch-off' : 'switch-on';
}

$('images-btn').addEventListener('click', async () => {
  const enabled = !current.images_enabled;
  if (!enabled && !window.confirm('关闭后，患者和分享链接只能看到报告，看不到影像。确定关闭吗？')) return;
  try {
    const r = await api('POST', `/api/exams/${enc(current.study_uid)}/images`, { enabled });
    current.images_enabled = r.images_enabled;
    drawSwitch();
    $('d-images').replaceChildren(imagesTag(current.images_enabled));
    const row = $('results').querySelector(`tr[data-uid="${CSS.escape(current.study_uid)}"]`);
    if (row) row.cells[6].replaceChildren(imagesTag(current.images_enabled));
    show($('d-msg'), 'ok', enabled ? '影像已开放。' : '影像已关闭，报告仍可查看。');
  } catch (e) {
    show($('d-msg'), 'error', e.message);
  }
});

const STATE = { open: '有效', locked: '输错过多，暂时锁定', expired: '已过期', revoked: '已撤销', exhausted: '次数已用完' };

async function loadShares() {
  const body = $('shares').tBodies[0];
  try {
    const r = await api('GET', `/api/shares?study_uid=${enc(current.study_uid)}`);
    body.replaceChildren(...r.shares.map((s) => {
      const revoke = (s.state !== 'revoked' && s.state !== 'expired') ? el('button', { type: 'button', class: 'danger' }, '撤销') : '';
      if (revoke) revoke.addEventListener('click', () => revokeShare(s));
      // locked after wrong codes: 15 min, then 1 h, then until unlocked here
      const unlock = s.state === 'locked' ? el('button', { type: 'button' }, '解锁') : '';
      if (unlock) unlock.addEventListener('click', () => unlockShare(s));
      const state = s.locked_until === 'desk' ? '输错过多，需服务台解锁' : (STATE[s.state] || s.state);
      return el('tr', {}, el('td', {}, fmtTime(s.created_at)),
        el('td', {}, s.include_images ? (s.allow_download ? '报告+影像+下载' : '报告+影像') : '仅报告'),
        el('td', {}, `${s.opens} / ${s.max_opens}`), el('td', {}, fmtTime(s.expires_at)),
        el('td', {}, state), el('td', {}, unlock, revoke));
    }));
    if (!r.shares.length) body.replaceChildren(el('tr', {}, el('td', { colspan: 6, class: 'muted' }, '还没有分享。')));
  } catch (e) {
    body.replaceChildren(el('tr', {}, el('td', { colspan: 6 }, e.message)));
  }
}

async function unlockShare(s) {
  if (!window.confirm('请先核实来访者身份。确定解锁此分享吗？')) return;
  try {
    await api('POST', `/api/shares/${s.id}/unlock`, {});
    show($('d-msg'), 'ok', '分享已解锁。');
    await loadShares();
  } catch (e) {
    show($('d-msg'), 'error', e.message);
  }
}

async function revokeShare(s) {
  if (!window.confirm('撤销后此二维码立即失效。确定撤销吗？')) return;
  try {
    await api('POST', `/api/shares/${s.id}/revoke`, {});
    show($('d-msg'), 'ok', '分享已撤销。');
    await loadShares();
  } catch (e) {
    show($('d-msg'), 'error', e.message);
  }
}

$('share-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const body = { study_uid: current.study_uid, include_images: $('s-images').checked, allow_download: $('s-download').checked, max_opens: Number($('s-opens').value), expires: $('s-expires').value };
  try {
    const r = await api('POST', '/api/shares', body);
    lastShare = r;
    $('slip-exam').replaceChildren(
      el('div', {}, `${current.patient.name}　${current.modality} ${current.description || ''}`),
      el('div', { class: 'muted' }, `检查日期 ${current.exam_date || ''}　检查号 ${current.accession_number || ''}`));
    $('slip-qr').src = r.qr_png;
    $('slip-code').textContent = r.code;
    $('slip-limits').textContent = `有效期至 ${fmtTime(r.share.expires_at)}，最多打开 ${r.share.max_opens} 次${r.share.include_images ? '' : '（仅报告）'}`;
    $('slip-section').classList.remove('hidden');
    $('slip-section').scrollIntoView();
    await loadShares();
  } catch (e) {
    show($('d-msg'), 'error', e.message);
  }
});

$('print-btn').addEventListener('click', () => {
  document.body.classList.add('printing-slip');
  window.print();
  document.body.classList.remove('printing-slip');
});
$('slip-close').addEventListener('click', () => { $('slip-section').classList.add('hidden'); lastShare = null; });

function size(n) {
  if (!n) return '0';
  return n > 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : `${Math.ceil(n / 1024)} KB`;
}

async function loadDownloads() {
  const body = $('downloads').tBodies[0];
  try {
    const r = await api('GET', `/api/downloads?study_uid=${enc(current.study_uid)}`);
    const rows = r.downloads || [];
    body.replaceChildren(...rows.map((d) => el('tr', {}, el('td', {}, fmtTime(d.time)),
      el('td', {}, d.actor_kind === 'patient' ? '患者本人' : d.actor_kind === 'share' ? '分享访问者' : d.actor_id),
      el('td', {}, { exam: '整个检查', series: '序列', image: '单幅图像' }[d.scope] || d.scope),
      el('td', {}, size(d.bytes_sent)), el('td', {}, d.completed ? '是' : '否'), el('td', {}, d.ip))));
    if (!rows.length) body.replaceChildren(el('tr', {}, el('td', { colspan: 6, class: 'muted' }, '没有下载记录。')));
  } catch (e) {
    body.replaceChildren(el('tr', {}, el('td', { colspan: 6 }, e.message)));
  }
}

$('search').addEventListener('submit', search);
$('today-btn').addEventListener('click', () => {
  const d = new Date();
  const p = (n) => String(n).padStart(2, '0');
  const today = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
  $('q-from').value = today; $('q-to').value = today;
  search();
});

initPage('frontdesk').then((nav) => {
  // a share never grants more than its creator may do: only roles that may download (the
  // doctor) can allow downloads; the server refuses it anyway
  if (!nav.roles.includes('doctor')) {
    $('s-download').checked = false;
    $('s-download').disabled = true;
    $('s-download').parentElement.title = '前台没有下载原始影像的权限，不能创建允许下载的分享';
  }
  search();
}).catch(() => {});
