// Send to workstation (doctors): a toolbar button opening a small dialog (destination, whole
// exam or the current series), then a progress line polled from /api/staff/sends until the
// job is done or failed. Shown only when /api/staff/dicom-destinations answers (doctors with
// destinations configured).
import { getJSON, postJSON, setCsrf } from './api.js';
import { el, t } from './ui.js';

t.add({
  'zh-CN': {
    'send.button': '发送到工作站', 'send.title': '发送到工作站', 'send.dest': '目的地',
    'send.exam': '整个检查', 'send.series': '当前序列', 'send.go': '发送', 'send.cancel': '取消',
    'send.queued': '已排队…', 'send.progress': '发送到 {dest}：{sent}/{total}',
    'send.failed_n': '，失败 {n}', 'send.retrying': '（重试中：{error}）',
    'send.done': '发送到 {dest}：{sent}/{total} 完成', 'send.dead': '发送到 {dest} 失败：{error}',
  },
  en: {
    'send.button': 'Send to workstation', 'send.title': 'Send to workstation', 'send.dest': 'Destination',
    'send.exam': 'Whole exam', 'send.series': 'Current series', 'send.go': 'Send', 'send.cancel': 'Cancel',
    'send.queued': 'Queued…', 'send.progress': 'Sending to {dest}: {sent}/{total}',
    'send.failed_n': ', {n} failed', 'send.retrying': ' (retrying: {error})',
    'send.done': 'Sent to {dest}: {sent}/{total} done', 'send.dead': 'Sending to {dest} failed: {error}',
  },
});

const POLL_MS = 1000;

/** The progress line of one job, in the chosen language. */
export function progressText(job) {
  const v = { dest: job.destination, sent: job.sent, total: job.total, error: job.error || '', n: job.failed };
  if (job.status === 'done') return t('send.done', v);
  if (job.status === 'failed') return t('send.dead', v);
  let s = t('send.progress', v);
  if (job.failed) s += t('send.failed_n', v);
  if (job.status === 'retrying') s += t('send.retrying', v);
  return s;
}

/** Add the button to `bar` when this user may send; `current()` → { study, series } of the
 *  active viewport (or null). */
export async function initSend(bar, current, toast) {
  let dests;
  try {
    dests = (await getJSON('/api/staff/dicom-destinations')).destinations;
    const nav = await getJSON('/api/staff/nav');
    setCsrf(nav.csrf_token);
  } catch (e) {
    return; // not a doctor (or not signed in as staff): no button
  }
  if (!dests.length) return;
  const btn = el('button', 'btn', t('send.button'));
  btn.type = 'button';
  btn.id = 'send-ws';
  const line = el('span', 'muted send-progress');
  line.id = 'send-progress';
  bar.append(btn, line);
  btn.addEventListener('click', () => openDialog(dests, current(), line, toast));
}

function openDialog(dests, cur, line, toast) {
  if (!cur || !cur.study) return;
  const dlg = el('dialog', 'send-dialog');
  dlg.id = 'send-dialog';
  const sel = el('select', 'btn');
  sel.id = 'send-dest';
  for (const d of dests) { const o = el('option', '', d.name); o.value = d.name; sel.append(o); }
  const scope = el('div', 'send-scope');
  for (const [value, key] of [['exam', 'send.exam'], ['series', 'send.series']]) {
    const r = el('input');
    r.type = 'radio'; r.name = 'send-scope'; r.value = value; r.checked = value === 'exam';
    if (value === 'series' && !cur.series) r.disabled = true;
    const lab = el('label', '');
    lab.append(r, el('span', '', t(key)));
    scope.append(lab);
  }
  const go = el('button', 'btn on', t('send.go'));
  go.type = 'button'; go.id = 'send-go';
  const cancel = el('button', 'btn', t('send.cancel'));
  cancel.type = 'button';
  const destLab = el('label', '');
  destLab.append(el('span', '', t('send.dest') + ' '), sel);
  dlg.append(el('h3', '', t('send.title')), destLab, scope, el('div', 'send-actions'));
  dlg.lastChild.append(go, cancel);
  document.body.append(dlg);
  dlg.showModal();
  const close = () => { dlg.close(); dlg.remove(); };
  cancel.addEventListener('click', close);
  go.addEventListener('click', async () => {
    const body = { destination: sel.value };
    if (dlg.querySelector('input[name=send-scope]:checked').value === 'series') body.series_uid = cur.series.series_uid;
    go.disabled = true;
    try {
      const out = await postJSON(`/api/staff/studies/${encodeURIComponent(cur.study.study_uid)}/send`, body);
      close();
      line.textContent = t('send.queued');
      follow(out.job.id, line);
    } catch (e) {
      go.disabled = false;
      toast(e.message);
    }
  });
}

async function follow(id, line) {
  for (;;) {
    let job;
    try {
      job = (await getJSON('/api/staff/sends')).jobs.find((j) => j.id === id);
    } catch (e) {
      job = null;
    }
    if (job) {
      line.textContent = progressText(job);
      line.dataset.status = job.status;
      if (job.status === 'done' || job.status === 'failed') return;
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
