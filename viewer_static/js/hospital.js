// The hospital's identity (name, logo, phone, opening hours) for every patient page: one
// request, answered from the settings hospital_name / _logo_file / _phone / _hours.
import { strings } from './lang.js';
import { getJSON } from './api.js';

let pending = null;

export function loadHospital() {
  if (!pending) {
    pending = getJSON('/api/hospital').catch(() => ({}));
  }
  return pending;
}

const WORDS = {
  'zh-CN': { call: '联系电话', hours: '服务时间', help: '如有疑问，请联系{name}' },
  en: { call: 'Phone', hours: 'Hours', help: 'Questions? Contact {name}' },
};

const w = strings(WORDS);

function node(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text) e.textContent = text;
  return e;
}

/** A small block: the hospital's name (and logo), "如有疑问…", its phone as a tel: link and
 *  its hours, in the chosen language. */
export function hospitalBlock(h) {
  const box = node('div', 'hosp-contact');
  box.id = 'hospital';
  if (!h || !h.name) return box;
  const head = node('div', 'hosp');
  if (h.logo_url) {
    const img = node('img', 'hosp-logo');
    img.src = h.logo_url;
    img.alt = '';
    head.append(img);
  }
  head.append(node('span', 'hosp-name', h.name));
  box.append(head, node('p', 'muted', w('help', { name: h.name })));
  if (h.phone) {
    const p = node('p', 'muted', `${w('call')}：`);
    const a = node('a', 'hosp-phone', h.phone);
    a.href = `tel:${String(h.phone).replace(/[^0-9+-]/g, '')}`;
    p.append(a);
    box.append(p);
  }
  if (h.hours) box.append(node('p', 'muted', `${w('hours')}：${h.hours}`));
  return box;
}

/** Remember which share link opened an exam, so that a later refusal can offer its code
 *  page again (the film URL does not carry the share's token). */
export function rememberShare(studyUid, shareUrl) {
  try { localStorage.setItem(`cf-share:${studyUid}`, shareUrl); } catch (e) { /* private mode */ }
}

export function shareFor(studyUid) {
  try { return localStorage.getItem(`cf-share:${studyUid}`); } catch (e) { return null; }
}
