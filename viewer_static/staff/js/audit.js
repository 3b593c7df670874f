// Audit admin (read only): the tamper-evident audit log with filters, CSV export and chain
// check, and the download log.
import { api, el, show, fmtTime, initPage } from './common.js';

const $ = (id) => document.getElementById(id);
let page = 1;
const PER_PAGE = 100;

function filters() {
  const f = { action: $('f-action').value.trim(), actor: $('f-actor').value.trim(), object: $('f-object').value.trim(), outcome: $('f-outcome').value, from: $('f-from').value, to: $('f-to').value };
  return Object.entries(f).filter(([, v]) => v).map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&');
}

async function load() {
  const q = filters();
  $('csv').href = `/api/admin/audit.csv${q ? `?${q}` : ''}`;
  try {
    const r = await api('GET', `/api/admin/audit?${q}${q ? '&' : ''}page=${page}&per_page=${PER_PAGE}`);
    show($('msg'), '', '');
    $('count').textContent = `共 ${r.total} 条，第 ${page} 页`;
    $('events').tBodies[0].replaceChildren(...r.events.map((e) => el('tr', {}, el('td', {}, e.id), el('td', {}, fmtTime(e.time)),
      el('td', {}, `${e.actor_id || ''}${e.actor_kind !== 'staff' ? `（${e.actor_kind}）` : ''}`), el('td', {}, e.ip),
      el('td', {}, e.action), el('td', {}, e.object_id ? `${e.object_type}:${e.object_id}` : ''),
      el('td', {}, el('span', { class: `tag ${e.outcome === 'ok' ? 'on' : 'off'}` }, e.outcome)), el('td', {}, e.detail))));
    $('prev').disabled = page <= 1;
    $('next').disabled = page * PER_PAGE >= r.total;
  } catch (e) {
    show($('msg'), 'error', e.message);
  }
}

async function loadDownloads() {
  try {
    const r = await api('GET', '/api/admin/downloads?limit=100');
    $('downloads').tBodies[0].replaceChildren(...r.downloads.map((d) => el('tr', {}, el('td', {}, fmtTime(d.time)),
      el('td', {}, d.accession_number || d.study_uid), el('td', {}, `${d.actor_id}（${d.actor_kind}）`), el('td', {}, d.scope),
      el('td', {}, `${d.bytes_sent} / ${d.bytes_total}`), el('td', {}, d.completed ? '是' : '否'), el('td', {}, d.ip), el('td', {}, d.user_agent))));
  } catch (e) {
    show($('msg'), 'error', e.message);
  }
}

$('filter').addEventListener('submit', (ev) => { ev.preventDefault(); page = 1; load(); });
$('prev').addEventListener('click', () => { page -= 1; load(); });
$('next').addEventListener('click', () => { page += 1; load(); });
$('verify').addEventListener('click', async () => {
  try {
    const r = await api('GET', '/api/admin/audit/verify');
    show($('verify-msg'), r.intact ? 'ok' : 'error', r.intact ? `日志完整：已校验 ${r.checked} 条，未发现篡改。` : `发现问题：${r.problem}`);
  } catch (e) { show($('verify-msg'), 'error', e.message); }
});

initPage('audit').then(() => Promise.all([load(), loadDownloads()])).catch(() => {});
