// Where to go after signing in: only a path of this site (no open redirect).

export const HOME = '/staff';

/** `raw` if it is a same-origin relative path ("/staff/doctor?x=1"), else HOME. */
export function safeNext(raw, origin) {
  if (typeof raw !== 'string' || raw.length === 0 || raw.length > 2000) return HOME;
  if (raw[0] !== '/' || raw[1] === '/' || raw[1] === '\\') return HOME;
  // Control characters and backslashes let browsers reinterpret the path as a host.
  for (const ch of raw) {
    const c = ch.charCodeAt(0);
    if (c < 0x20 || c === 0x7f || ch === '\\') return HOME;
  }
  let url;
  try {
    url = new URL(raw, origin);
  } catch (e) {
    return HOME;
  }
  if (url.origin !== origin) return HOME;
  if (url.pathname === '/login') return HOME;
  return url.pathname + url.search + url.hash;
}
