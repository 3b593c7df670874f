// Front desk (/share/desk?study=UID): create a share for one exam, print its slip (exam, QR,
// code, expiry), see and revoke the exam's shares, switch the exam's images on or off.
import { t, el, call, setCsrf, localTime, langButton } from './common.js';

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
  if (exam) $('switch').textContent = exam.images_enabled ? t('desk.switch.on') : t('desk.switch.off');
  if (created) $('s-expiry').textContent = `${t('slip.expires')} ${localTime(created.share.expires_at)}`;
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
    if (!s.revoked_at) {
      const b = el('button', 'btn small danger', t('shares.revoke'));
      b.type = 'button';
      b.addEventListener('click', async () => { await call('POST', `/api/shares/${s.id}/revoke`, {}); loadShares(); });
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
    $('s-exam').textContent = `${t('slip.exam')}: ${examLine(exam)} ${exam.accession_number || ''}`;
    $('s-qr').src = created.qr_png;
    $('s-code').textContent = created.code;
    $('s-url').textContent = created.url;
    $('slip').classList.remove('hidden');
    $('print').classList.remove('hidden');
    texts();
    loadShares();
  });
  $('print').addEventListener('click', () => window.print());
  loadShares();
}

main();
