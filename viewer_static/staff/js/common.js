// Shared by the staff pages: calls through js/api.js (session cookie + CSRF header, JSON
// errors as ApiError; a 401 outside sign-in goes to the login page), the top bar with the
// pages of the signed-in user's roles, small DOM helpers. Every access decision is the server's; the bar only hides links.
import { request, setCsrf } from '../../js/api.js';

export { setCsrf };

export function loginUrl(extra) {
  const next = location.pathname + location.search;
  return `/login?${extra ? `${extra}&` : ''}next=${encodeURIComponent(next)}`;
}

/** api('POST', url, body): js/api.js's request (CSRF proof, errors as ApiError). */
export const api = (method, url, body) => request(method, url, body);

// A session that ended (not a failed sign-in) sends the person to sign in again.
window.addEventListener('cf-session-expired', (e) => {
  if (!e.detail.url.startsWith('/api/auth/')) location.assign(loginUrl('expired=1'));
});

/** el('td', {class: 'x', onclick: fn}, 'text', child, ...) */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else if (v === true) node.setAttribute(k, '');
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function show(box, kind, text) {
  box.replaceChildren();
  if (!text) { box.classList.add('hidden'); return; }
  box.classList.remove('hidden');
  box.className = `msg ${kind}`;
  box.textContent = text;
}

export function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso.endsWith('Z') || iso.includes('+') ? iso : `${iso}Z`);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

export const REPORT_STATUS = { preliminary: '初步报告', final: '已审核', corrected: '已更正' };
export const EXAM_STATUS = { ordered: '已登记', scheduled: '已预约', examined: '已检查', reported: '已出报告', cancelled: '已取消' };

/** Load who is signed in, draw the top bar; sends anonymous visitors to the login page. */
export async function initPage(current) {
  let nav;
  try {
    nav = await api('GET', '/api/staff/nav');
  } catch (e) {
    location.assign(loginUrl());
    throw e;
  }
  if (nav.must_change_password) {
    location.assign(loginUrl('change=1'));
    throw new Error('password change needed');
  }
  setCsrf(nav.csrf_token);
  const bar = document.getElementById('topbar');
  const links = nav.pages.map((p) => el('a', { href: p.path, class: p.page === current ? 'current' : '' }, p.title));
  const logout = el('button', { type: 'button', id: 'logout' }, '退出登录');
  logout.addEventListener('click', async () => {
    try { await api('POST', '/api/auth/logout', {}); } finally { location.assign('/login'); }
  });
  bar.replaceChildren(
    el('span', { class: 'brand' }, '云胶片'),
    el('nav', {}, links),
    el('span', { class: 'who' }, `${nav.username}（${nav.role_names.join('、')}）`),
    el('a', { href: loginUrl('change=1'), class: 'btn secondary' }, '修改密码'),
    logout,
  );
  return nav;
}
