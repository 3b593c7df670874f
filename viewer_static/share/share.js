// The share page (/s/{token}): type the access code, then the film view opens.
import { t, el, call, setCsrf, localTime, codeInput, langButton } from './common.js';

const $ = (id) => document.getElementById(id);
const token = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
let status = null;
let opened = null;

function texts() {
  document.title = t('title.share');
  $('title').textContent = t('title.share');
  $('code-label').textContent = t('code.label');
  $('open').textContent = t('code.open');
  $('view').textContent = t('share.view');
  $('reverify-btn').textContent = t('share.confirm');
  $('dl-link').textContent = t('share.download');
  if (status) $('expiry').textContent = t('share.expires', { t: localTime(status.expires_at) })
    + (status.include_images ? '' : ` · ${t('share.reportonly')}`);
}

function refuse(message) {
  $('codeform').classList.add('hidden');
  $('menu').classList.add('hidden');
  const r = $('refusal');
  r.textContent = message;
  r.classList.remove('hidden');
}

function showMenu(studyUid, allowDownload) {
  $('codeform').classList.add('hidden');
  $('menu').classList.remove('hidden');
  $('view').href = `/film/${encodeURIComponent(studyUid)}`;
  if (!allowDownload) return;
  $('dl').classList.remove('hidden');
  $('dl-link').href = `/api/download/studies/${encodeURIComponent(studyUid)}.zip`;
  prepareDownload();
}

async function prepareDownload() {
  const me = await call('GET', '/api/share/me');
  setCsrf(me.csrf_token);
  if (me.freshly_verified) {
    $('reverify').classList.add('hidden');
    $('dl-link').classList.remove('hidden');
    $('dl-hint').textContent = '';
  } else {
    $('dl-link').classList.add('hidden');
    $('reverify').classList.remove('hidden');
    $('dl-hint').textContent = t('share.reverify');
  }
}

async function main() {
  $('lang').append(langButton(texts));
  $('code-slot').append(codeInput('code'));
  $('reverify-slot').append(codeInput('code2'));
  try {
    status = await call('POST', '/api/share/status', { token });
  } catch (e) {
    texts();
    refuse(e.message);
    return;
  }
  texts();
  if (status.session) { showMenu(status.study_uid, status.allow_download); return; }
  if (status.state !== 'open') { refuse(status.message); return; }
  $('codeform').classList.remove('hidden');
  $('code').focus();
  $('codeform').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const code = $('code').value.trim();
    if (!/^[0-9]{6}$/.test(code)) { $('msg').textContent = t('code.format'); return; }
    $('open').disabled = true;
    $('msg').textContent = '';
    try {
      opened = await call('POST', '/api/share/open', { token, code });
      setCsrf(opened.csrf_token);
      if (opened.allow_download) showMenu(opened.study_uid, true);
      else location.replace(opened.film_url);
    } catch (e) {
      if (e.status === 403) { $('msg').textContent = e.message; $('code').select(); }
      else refuse(e.message);
    } finally {
      $('open').disabled = false;
    }
  });
  $('reverify-btn').addEventListener('click', async () => {
    const code = $('code2').value.trim();
    if (!/^[0-9]{6}$/.test(code)) { $('dl-msg').textContent = t('code.format'); return; }
    try {
      await call('POST', '/api/share/reverify', { code });
      $('dl-msg').textContent = '';
      await prepareDownload();
    } catch (e) { $('dl-msg').textContent = e.message; }
  });
}

main();
