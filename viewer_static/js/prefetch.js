// Prefetch ordering: which frames to load next, cheapest useful first. Pure.
//
// Order: the current frame at full quality; previews of the near neighbours; full quality of
// the near neighbours; then previews of every other frame by distance from the current one
// (ahead of the scroll direction first on ties).

export function byDistance(n, current, direction = 1) {
  const out = [];
  if (n <= 0) return out;
  const c = Math.min(n - 1, Math.max(0, current));
  out.push(c);
  for (let d = 1; out.length < n; d++) {
    const a = c + d * (direction >= 0 ? 1 : -1);
    const b = c - d * (direction >= 0 ? 1 : -1);
    if (a >= 0 && a < n) out.push(a);
    if (b >= 0 && b < n) out.push(b);
  }
  return out;
}

/**
 * Tasks [{index, kind: 'full'|'preview'}] in the order to fetch them.
 * opts: fullRadius (neighbours loaded at full quality), nearRadius (previews that come before
 * those), direction (+1/−1, the way the user scrolls), previews (false: no preview tasks).
 */
export function prefetchOrder(n, current, opts = {}) {
  const fullRadius = opts.fullRadius ?? 2;
  const nearRadius = Math.max(opts.nearRadius ?? 4, fullRadius);
  const direction = opts.direction ?? 1;
  const previews = opts.previews ?? true;
  const order = byDistance(n, current, direction);
  const tasks = [];
  if (n === 0) return tasks;
  tasks.push({ index: order[0], kind: 'full' });
  const near = order.filter((i) => Math.abs(i - order[0]) <= nearRadius && i !== order[0]);
  if (previews) for (const i of near) tasks.push({ index: i, kind: 'preview' });
  for (const i of near) if (Math.abs(i - order[0]) <= fullRadius) tasks.push({ index: i, kind: 'full' });
  if (previews) {
    for (const i of order) if (Math.abs(i - order[0]) > nearRadius) tasks.push({ index: i, kind: 'preview' });
  }
  return tasks;
}

/** Keys of in-flight requests that are no longer wanted in the first `keep` tasks. */
export function staleKeys(inflightKeys, wantedKeys, keep = Infinity) {
  const wanted = new Set(wantedKeys.slice(0, keep));
  return inflightKeys.filter((k) => !wanted.has(k));
}

/** Fraction (0..1) of frames that have something to show. */
export function progress(n, hasIndex) {
  if (n <= 0) return 1;
  let k = 0;
  for (let i = 0; i < n; i++) if (hasIndex(i)) k++;
  return k / n;
}

/** Retry delay after `failures` consecutive network failures (ms), capped. */
export function retryDelay(failures, base = 1000, cap = 15000) {
  return Math.min(cap, base * 2 ** Math.max(0, failures - 1));
}

/**
 * How fast the link is: measured from full frames that had the link to themselves (bytes over
 * request time, latency included, smoothed), else the browser's own estimate
 * (navigator.connection.downlink, Mbit/s; Chrome on Android has it, Safari does not).
 */
export class LinkEstimate {
  constructor(downlinkMbps = null) {
    this.downlink = typeof downlinkMbps === 'number' && downlinkMbps > 0 ? downlinkMbps : null;
    this.kbps = null;
  }

  /** A frame of `bytes` arrived `ms` after it was asked for. Small answers say little. */
  note(bytes, ms) {
    if (!(bytes >= 8000) || !(ms > 0)) return;
    const k = (bytes * 8) / ms;
    this.kbps = this.kbps === null ? k : 0.6 * this.kbps + 0.4 * k;
  }

  /** Mbit/s, or null when nothing is known. */
  mbps() {
    if (this.kbps !== null) return this.kbps / 1000;
    return this.downlink;
  }

  slow(threshold = 3) {
    const m = this.mbps();
    return m !== null && m < threshold;
  }
}

/** JPEG quality of the full frame: lighter on a slow link, so it arrives within half a second. */
export function fullQualityFor(link, fast = 88, slow = 75) {
  return link && link.slow() ? slow : fast;
}
