// Small DOM helpers shared by the viewer's pages: elements, the viewer's strings and language
// switch (over lang.js), session and access messages, the report panel.
import zh from './i18n/zh-CN.js';
import { urls, api, getJSON } from './api.js';
import { strings, currentLang, langButton as switcher } from './lang.js';

export { currentLang } from './lang.js';
// English is fetched only when chosen (i18n/en.js).
export const t = strings({ 'zh-CN': zh, en: () => import('./i18n/en.js') });

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

/** Load the stored language's strings and write them into the page. */
export async function initI18n() {
  await t.load();
  document.documentElement.lang = currentLang();
  applyI18n(document);
}

export function applyI18n(root) {
  for (const n of root.querySelectorAll('[data-i18n]')) n.textContent = t(n.dataset.i18n);
  for (const n of root.querySelectorAll('[data-i18n-placeholder]')) n.placeholder = t(n.dataset.i18nPlaceholder);
  for (const n of root.querySelectorAll('[data-i18n-title]')) n.title = t(n.dataset.i18nTitle);
}

/** The language button of the viewer's pages; `onChange` redraws what applyI18n cannot. */
export function langButton(onChange) {
  return switcher(t, 'lang.switch', () => { applyI18n(document); if (onChange) onChange(); }, 'btn lang-btn');
}

/** A page-wide notice (session expired, not found …) with its next steps: each action is
 *  {label, run} (a button) or {label, href} (a link). */
export function fatal(message, ...actions) {
  let box = document.getElementById('fatal');
  if (!box) {
    box = el('div', 'fatal');
    box.id = 'fatal';
    document.body.append(box);
  }
  box.textContent = '';
  box.append(el('p', 'fatal-text', message));
  for (const action of actions) {
    if (!action) continue;
    const b = el(action.href ? 'a' : 'button', 'btn', action.label);
    if (action.id) b.id = action.id;
    if (action.href) b.href = action.href; else b.addEventListener('click', action.run);
    box.append(b);
  }
}

/** Where this exam's share link is, if this browser opened the exam through one. */
function shareLinkFor(uid) {
  try {
    const l = localStorage.getItem(`cf-share:${uid}`);
    return l && /^\/s\/[A-Za-z0-9_-]+$/.test(l) ? l : null;
  } catch (e) { return null; }
}

/** An expired or revoked session: never reload the same failing page; offer the share's
 *  code page (when known), identity verification and the hospital's phone. */
export function watchSession() {
  window.addEventListener('cf-session-expired', async () => {
    if (!location.pathname.startsWith('/film/')) {
      // staff pages (workspace): sign in again and come back here
      fatal(t('state.expired'), { label: t('state.expired.action'), href: `/login?next=${encodeURIComponent(location.pathname + location.search)}`, id: 'relogin-staff' });
      return;
    }
    const m = location.pathname.match(/^\/film\/([0-9][0-9.]{0,63})$/);   // not /film/exam/N
    const uid = m ? m[1] : null;
    const link = uid ? shareLinkFor(uid) : null;
    const portal = uid ? `/portal#exam=${encodeURIComponent(`study_uid:${uid}`)}` : '/portal';
    const steps = [link && { label: t('next.code'), href: link, id: 'relogin-code' },
      { label: t('next.portal'), href: portal, id: 'relogin-portal' }];
    fatal(t('next.expired'), ...steps);
    try {
      const h = await getJSON('/api/hospital');
      if (h && h.phone) {
        fatal(t('next.expired'), ...steps, { label: `${t('next.call')} ${h.phone}`, href: `tel:${String(h.phone).replace(/[^0-9+-]/g, '')}`, id: 'relogin-call' });
      }
    } catch (e) { /* the two steps above still work */ }
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
  if (!r.has_pdf || !study.study_uid) return;
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
