// Every URL the viewer uses, and one fetch wrapper that turns the server's JSON errors
// ({"ok": false, "status": 4xx, "error": "…"}) into ApiError. 401 and 403 are announced as
// window events so each page shows one clear message.

const enc = encodeURIComponent;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
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

function announce(status, message) {
  if (typeof window === 'undefined') return;
  if (status === 401) window.dispatchEvent(new CustomEvent('cf-session-expired', { detail: message }));
}

async function errorOf(resp) {
  let message = resp.statusText || `HTTP ${resp.status}`;
  try {
    const body = await resp.json();
    if (body && body.error) message = body.error;
  } catch (e) { /* not JSON */ }
  announce(resp.status, message);
  return new ApiError(resp.status, message);
}

export async function getJSON(url, signal, priority) {
  const resp = await fetch(url, { signal, priority, credentials: 'same-origin', headers: { Accept: 'application/json' } });
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

/** An image as a blob; ApiError on HTTP errors, TypeError on network failure. */
export async function getImage(url, signal) {
  const resp = await fetch(url, { signal, credentials: 'same-origin', headers: { Accept: 'image/jpeg,image/png;q=0.9' } });
  if (!resp.ok) throw await errorOf(resp);
  return resp.blob();
}

let csrfToken = '';
export function setCsrf(v) { if (v) csrfToken = v; }

/** A JSON POST with the page's CSRF proof. Another link opened in this browser may have
 *  started a session since this page loaded: a stale proof is answered 403 with code
 *  'csrf_stale', and the call fetches a fresh proof and is sent once more. */
export async function postJSON(url, body, retried = false) {
  const headers = { Accept: 'application/json', 'Content-Type': 'application/json' };
  if (csrfToken) headers['X-CSRF-Token'] = csrfToken;
  const resp = await fetch(url, { method: 'POST', credentials: 'same-origin', headers, body: JSON.stringify(body || {}) });
  if (resp.status === 403 && !retried) {
    const data = await resp.clone().json().catch(() => null);
    if (data && data.code === 'csrf_stale') {
      const f = await getJSON('/api/session/csrf').catch(() => null);
      csrfToken = (f && f.csrf_token) || '';
      return postJSON(url, body, true);
    }
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

export const api = {
  studies: (q, signal) => getJSON(urls.studies(q), signal),
  study: (s, signal, priority) => getJSON(urls.study(s), signal, priority),
  reportPages: (s) => getJSON(urls.reportPages(s)),
  info: (s, se, i) => getJSON(urls.info(s, se, i)),
  mprGeometry: (s, se, plane, p) => getJSON(urls.mprGeometry(s, se, plane, p)),
  getVolume: (s, se) => getJSON(urls.volume(s, se)),
};
