// The site root on a phone: the patient's two ways in (我的云胶片 after verification, or a
// share link) and, small, the staff sign-in.
import { t, langButton } from './common.js';
import { loadHospital, hospitalBlock } from '../js/hospital.js';

const $ = (id) => document.getElementById(id);
let hospital = null;

function texts() {
  document.title = t('entry.title');
  $('title').textContent = t('entry.title');
  $('hint').textContent = t('entry.hint');
  $('to-portal').textContent = t('entry.portal');
  $('link-label').textContent = t('entry.link');
  $('go').textContent = t('entry.go');
  $('to-staff').textContent = t('entry.staff');
  if (hospital) {
    $('hosp-name').textContent = hospital.name || '';
    $('hospital-slot').textContent = '';
    $('hospital-slot').append(hospitalBlock(hospital));
  }
}

/** '/s/TOKEN' from a pasted link or a bare share token; null when it is neither. */
export function shareTarget(text) {
  const s = String(text || '').trim();
  const m = s.match(/\/s\/([A-Za-z0-9_-]{16,64})(?:[?#].*)?$/) || s.match(/^([A-Za-z0-9_-]{16,64})$/);
  return m ? `/s/${m[1]}` : null;
}

$('lang').append(langButton(texts));
texts();
loadHospital().then((h) => { hospital = h; texts(); });
$('linkform').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const target = shareTarget($('link').value);
  if (!target) { $('msg').textContent = t('entry.bad'); return; }
  location.assign(target);
});
