// Small DOM helpers shared by the pages: elements, strings, language switch, session and
// access messages, the report panel.
import zh from './i18n/zh-CN.js';
import { urls, api } from './api.js';

// Strings: lookup with {name} parameters, language choice (here rather than in a module of
// their own: one request less before the film view's first image). The dictionaries live in
// i18n/zh-CN.js (default) and i18n/en.js (loaded when chosen).
export const LANGS = ['zh-CN', 'en'];
export const DEFAULT_LANG = 'zh-CN';

/** `dict[key]` with {param} substitution; falls back to `fallback[key]`, then the key. */
export function translate(dict, key, params, fallback) {
  let s = dict && Object.prototype.hasOwnProperty.call(dict, key) ? dict[key] : undefined;
  if (s === undefined && fallback) s = fallback[key];
  if (s === undefined) return key;
  if (!params) return s;
  return s.replace(/\{(\w+)\}/g, (m, name) => (params[name] === undefined ? m : String(params[name])));
}

/** The language to use: a stored choice if valid, else Chinese (the hospital's default). */
export function pickLang(stored) {
  return LANGS.includes(stored) ? stored : DEFAULT_LANG;
}

export function otherLang(lang) {
  return lang === 'en' ? 'zh-CN' : 'en';
}


let dict = zh;
let lang = 'zh-CN';

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

export function t(key, params) {
  return translate(dict, key, params, zh);
}

export function currentLang() {
  return lang;
}

/** Load the stored language (English is fetched only when chosen). */
export async function initI18n() {
  let stored = null;
  try { stored = localStorage.getItem('cf-lang'); } catch (e) { /* private mode */ }
  lang = pickLang(stored);
  if (lang === 'en') dict = (await import('./i18n/en.js')).default;
  document.documentElement.lang = lang;
  applyI18n(document);
}

export function applyI18n(root) {
  for (const n of root.querySelectorAll('[data-i18n]')) n.textContent = t(n.dataset.i18n);
  for (const n of root.querySelectorAll('[data-i18n-placeholder]')) n.placeholder = t(n.dataset.i18nPlaceholder);
  for (const n of root.querySelectorAll('[data-i18n-title]')) n.title = t(n.dataset.i18nTitle);
}

/** A button that switches language and reloads the page's strings via `onChange`. */
export function langButton(onChange) {
  const b = el('button', 'btn lang-btn', t('lang.switch'));
  b.type = 'button';
  b.id = 'lang-switch';
  b.addEventListener('click', async () => {
    lang = otherLang(lang);
    dict = lang === 'en' ? (await import('./i18n/en.js')).default : zh;
    try { localStorage.setItem('cf-lang', lang); } catch (e) { /* ignore */ }
    document.documentElement.lang = lang;
    b.textContent = t('lang.switch');
    applyI18n(document);
    onChange && onChange();
  });
  return b;
}

/** A page-wide notice (session expired, not found …). */
export function fatal(message, action) {
  let box = document.getElementById('fatal');
  if (!box) {
    box = el('div', 'fatal');
    box.id = 'fatal';
    document.body.append(box);
  }
  box.textContent = '';
  box.append(el('p', 'fatal-text', message));
  if (action) {
    const b = el('button', 'btn', action.label);
    b.addEventListener('click', action.run);
    box.append(b);
  }
}

export function watchSession() {
  window.addEventListener('cf-session-expired', () => {
    fatal(t('state.expired'), { label: t('state.expired.action'), run: () => window.location.reload() });
  });
}

/** Report: text, then the PDF's pages as images, then the download link. */
export function renderReport(box, study, { pages = true, deferImages = null } = {}) {
  box.textContent = '';
  box.append(el('h2', 'report-title', t('report.title')));
  const r = study.report;
  if (!r) {
    box.append(el('p', 'muted', t('report.none')));
    return;
  }
  const sec = (key, text) => {
    if (!text) return;
    box.append(el('h3', null, t(key)));
    for (const para of String(text).split('\n')) box.append(el('p', 'report-text', para));
  };
  sec('report.findings', r.findings);
  sec('report.impression', r.impression);
  const meta = el('p', 'muted report-meta');
  meta.textContent = [r.author && `${t('report.author')}: ${r.author}`, r.reviewer && `${t('report.reviewer')}: ${r.reviewer}`,
    r.signed_at && `${t('report.signed')}: ${String(r.signed_at).replace('T', ' ').slice(0, 16)}`].filter(Boolean).join('  ');
  box.append(meta);
  if (!r.has_pdf) return;
  const a = el('a', 'btn report-pdf', t('report.pdf'));
  a.href = urls.reportPdf(study.study_uid, true);
  a.setAttribute('download', '');
  a.id = 'report-pdf';
  box.append(a);
  if (!pages) return;
  const holder = el('div', 'report-pages');
  box.append(el('h3', null, t('report.pages')), holder);
  const load = async () => {
    try {
      const { pages: n } = await api.reportPages(study.study_uid);
      const width = Math.min(1600, Math.round((holder.clientWidth || 360) * (window.devicePixelRatio || 1)));
      for (let i = 1; i <= n; i++) {
        const img = el('img', 'report-page');
        img.alt = t('report.page', { n: i });
        img.loading = 'lazy';
        img.src = urls.reportPage(study.study_uid, i, Math.max(100, width));
        holder.append(img);
      }
    } catch (e) {
      holder.append(el('p', 'muted', t('state.error', { msg: e.message })));
    }
  };
  if (deferImages) deferImages.then(load); else load();
}

export function patientLine(p) {
  if (!p) return '';
  return [p.name, p.sex ? t(`sex.${p.sex}`) : '', p.birth_date, p.patient_id].filter(Boolean).join(' · ');
}
