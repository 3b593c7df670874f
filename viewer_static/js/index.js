// Exam list: search, newest first, links to the film view and the comparison workspace.
// Staff sign in here when the API answers 401.
import { api, urls, request } from './api.js';
import { byDateDesc } from './series.js';
import { el, t, initI18n, langButton, patientLine } from './ui.js';
import words from './i18n/workspace.js';

t.add(words);
const $ = (id) => document.getElementById(id);

async function search() {
  const q = $('q').value.trim();
  const params = { per_page: 100 };
  if (q) {
    if (/^[A-Za-z]{2}\d{6,}$/.test(q)) params.accession = q;
    else if (/^[A-Za-z]*\d{4,}$/.test(q)) params.patient_id = q;
    else params.name = q;
  }
  const list = $('list');
  list.textContent = '';
  let data;
  try {
    data = await api.studies(params);
  } catch (e) {
    if (e.status === 401) { showLogin(); return; }
    list.append(el('li', 'muted', t('state.error', { msg: e.message })));
    return;
  }
  $('login').classList.add('hidden');
  $('total').textContent = t('index.total', { n: data.total });
  if (!data.studies.length) list.append(el('li', 'muted', t('index.empty')));
  for (const s of byDateDesc(data.studies)) {
    const li = el('li', 'exam-row');
    const img = el('img', 'exam-thumb');
    img.alt = '';
    img.loading = 'lazy';
    if (s.images_enabled !== false) img.src = urls.studyThumb(s.study_uid);
    const main = el('div', 'exam-main');
    main.append(el('div', null, patientLine(s.patient)));
    const line = el('div', 'muted');
    line.append(el('span', 'tag', t(`cat.${s.category}`)), document.createTextNode(`${s.exam_date || ''} ${s.modality} ${s.description || ''} ${s.accession_number || ''}`));
    main.append(line);
    const actions = el('div', 'exam-actions');
    const film = el('a', 'btn', t('index.film'));
    film.href = urls.film(s.study_uid);
    const ws = el('a', 'btn', t('index.workspace'));
    ws.href = urls.workspace(s.patient.patient_id);
    actions.append(film, ws);
    li.append(img, main, actions);
    list.append(li);
  }
}

function showLogin() {
  $('login').classList.remove('hidden');
}

async function login(e) {
  e.preventDefault();
  try {
    await request('POST', '/api/auth/login', { username: $('user').value, password: $('pass').value });
  } catch (err) {
    $('login-error').textContent = err.message;
    return;
  }
  search();
}

async function main() {
  await initI18n();
  $('topbar-actions').append(langButton(search));
  $('search').addEventListener('submit', (e) => { e.preventDefault(); search(); });
  $('login').addEventListener('submit', login);
  search();
}

main();
