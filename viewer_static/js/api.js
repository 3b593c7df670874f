// The one API client of every page (request(): JSON errors as ApiError, the CSRF proof,
// the 401 announcement) and every URL the viewer uses.
import { localMsg } from './lang.js';

const enc = encodeURIComponent;

export class ApiError extends Error {
  constructor(status, message, code = '') {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function qs(params) {
  const parts = [];
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === '' || v === false) continue;
    parts.push(`${enc(k)}=${enc(v)}`);
  }
  return parts.length ? `?${parts.join('&')}` : '';
}

const inst = (s, se, i) => `/dicomweb/studies/${enc(s)}/series/${enc(se)}/instances/${enc(i)}`;
const renderSeries = (s, se) => `/api/render/studies/${enc(s)}/series/${enc(se)}`;

export const urls = {
  studies: (q) => `/api/studies${qs(q)}`,
  study: (s) => `/api/studies/${enc(s)}`,
  reportPdf: (s, download) => `/api/studies/${enc(s)}/report.pdf${download ? '?download=1' : ''}`,
  reportPages: (s) => `/api/studies/${enc(s)}/report/pages`,
  reportPage: (s, n, width) => `/api/studies/${enc(s)}/report/pages/${n}${qs({ width })}`,
  rendered: (s, se, i, frame, p) => `${inst(s, se, i)}/frames/${frame}/rendered${qs(p)}`,
  seriesThumb: (s, se) => `/dicomweb/studies/${enc(s)}/series/${enc(se)}/thumbnail`,
  studyThumb: (s) => `/dicomweb/studies/${enc(s)}/thumbnail`,
  info: (s, se, i) => `${renderSeries(s, se)}/instances/${enc(i)}/info`,
  mpr: (s, se, plane, p) => `${renderSeries(s, se)}/mpr/${plane}${qs(p)}`,
  mprGeometry: (s, se, plane, p) => `${renderSeries(s, se)}/mpr/${plane}/geometry${qs(p)}`,
  volume: (s, se) => `${renderSeries(s, se)}/volume`,
  mip: (s, se, p) => `${renderSeries(s, se)}/mip${qs(p)}`,
  film: (s) => `/film/${enc(s)}`,
  workspace: (patientId) => `/workspace${qs({ patient_id: patientId })}`,
  workspaceStudies: (uids) => `/workspace/${uids.map(enc).join(',')}`,
};

let csrf = '';
export function setCsrf(v) { if (v) csrf = v; }

/** Every page's request: JSON (or o.as='blob') back; errors as ApiError(status, message in
 *  the chosen language, code); a 401 announced ('cf-session-expired') to pages that listen;
 *  a stale CSRF proof (403 'csrf_stale': another link started a session) renewed, sent again. */
export async function request(method, url, body, o = {}, retried = false) {
  const headers = { Accept: o.accept || 'application/json' };
  if (o.renderPriority !== undefined) headers['X-Render-Priority'] = String(o.renderPriority);
  const opts = { method, headers, signal: o.signal, priority: o.priority, credentials: 'same-origin' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  if (csrf && method !== 'GET') headers['X-CSRF-Token'] = csrf;
  const resp = await fetch(url, opts);
  if (resp.ok) {
    if (o.as === 'blob') return resp.blob();
    const text = await resp.text();
    return text ? JSON.parse(text) : null;
  }
  const data = await resp.json().catch(() => null);
  const code = (data && data.code) || '';
  if (resp.status === 403 && code === 'csrf_stale' && !retried) {
    const f = await request('GET', '/api/session/csrf').catch(() => null);
    csrf = (f && f.csrf_token) || '';
    return request(method, url, body, o, true);
  }
  const message = localMsg((data && data.error) || resp.statusText || `HTTP ${resp.status}`);
  if (resp.status === 401 && typeof window !== 'undefined') {
    window.dispatchEvent(new CustomEvent('cf-session-expired', { detail: { message, url } }));
  }
  const err = new ApiError(resp.status, message, code);
  const retry = Number(resp.headers.get('Retry-After'));
  if (retry > 0) err.retryAfter = retry; // seconds (a busy server's 429 or 503)
  throw err;
}

export const getJSON = (url, signal, priority) => request('GET', url, undefined, { signal, priority });
/** An image as a blob; ApiError on HTTP errors, TypeError on network failure. renderPriority:
 *  the server's render queue (0 the frame a person waits for, 1 near it, 2 a preview or
 *  prefetch that may wait, or get 429 while the server is busy); the browser's own fetch
 *  priority follows it. */
export const getImage = (url, signal, renderPriority) => request('GET', url, undefined, {
  signal, accept: 'image/jpeg,image/png;q=0.9', as: 'blob', renderPriority,
  priority: renderPriority === 0 ? 'high' : renderPriority === 2 ? 'low' : undefined,
});
export const postJSON = (url, body) => request('POST', url, body || {});

export const api = {
  studies: (q, signal) => getJSON(urls.studies(q), signal),
  study: (s, signal, priority) => getJSON(urls.study(s), signal, priority),
  reportPages: (s) => getJSON(urls.reportPages(s)),
  info: (s, se, i) => getJSON(urls.info(s, se, i)),
  mprGeometry: (s, se, plane, p) => getJSON(urls.mprGeometry(s, se, plane, p)),
  getVolume: (s, se) => getJSON(urls.volume(s, se)),
};
