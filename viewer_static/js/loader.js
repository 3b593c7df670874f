// Image loading with a concurrency limit, priorities given as an ordered wish list, stale
// requests cancelled (AbortController), network failures retried with backoff and resumed
// when the browser comes back online. No DOM: fetch and object URLs are injected, so the
// scheduling is tested with node --test.
import { retryDelay } from './prefetch.js';

export class FrameLoader {
  /**
   * fetchBlob(url, signal, task) → Promise<Blob>; toUrl(blob) → string; revoke(url).
   * onLoad(task, url), onError(task, error) are called for every finished request.
   */
  constructor({ fetchBlob, toUrl, revoke, concurrency = 4, maxFull = 48, onLoad, onError, onIdle, setTimer } = {}) {
    this.fetchBlob = fetchBlob;
    this.toUrl = toUrl || ((b) => b);
    this.revoke = revoke || (() => {});
    this.concurrency = concurrency;
    this.maxFull = maxFull;
    this.onLoad = onLoad || (() => {});
    this.onError = onError || (() => {});
    this.onIdle = onIdle || (() => {});
    this.setTimer = setTimer || ((fn, ms) => setTimeout(fn, ms));
    this.done = new Map(); // key → {url, task, used}
    this.inflight = new Map(); // key → {task, controller}
    this.failed = new Map(); // key → {count, until, permanent, error}
    this.wanted = [];
    this.networkFailures = 0;
    this.retryTimer = null;
    this.pinned = new Set();
    this.previewsUntil = 0; // a busy server refused a preview: previews wait until then
    this.tick = 0;
    this.bytes = 0;
  }

  has(key) {
    return this.done.has(key);
  }

  get(key) {
    const d = this.done.get(key);
    if (d) d.used = ++this.tick;
    return d ? d.url : null;
  }

  failure(key) {
    return this.failed.get(key) || null;
  }

  /** Replace the wish list (ordered tasks {key, url, ...}); cancels stale in-flight requests. */
  want(tasks, keepInflight = 0) {
    this.wanted = tasks;
    const wantedKeys = new Set(tasks.slice(0, Math.max(this.concurrency * 3, keepInflight)).map((t) => t.key));
    for (const [key, f] of this.inflight) {
      if (!wantedKeys.has(key)) {
        f.controller.abort();
        this.inflight.delete(key);
      }
    }
    this.pump();
  }

  /** Forget a failure (the user pressed retry) and try again. */
  retry(key) {
    this.failed.delete(key);
    for (const [k, f] of this.failed) if (f.network) this.failed.delete(k);
    this.networkFailures = 0;
    this.pump();
  }

  /** The network is back: clear temporary failures and continue. */
  resume() {
    for (const [key, f] of this.failed) if (!f.permanent) this.failed.delete(key);
    this.networkFailures = 0;
    this.pump();
  }

  /** The head task is exclusive (the frame the user looks at) and still to be loaded. */
  headBlocks(now = Date.now()) {
    const head = this.wanted[0];
    if (!head || !head.exclusive || this.done.has(head.key)) return false;
    const f = this.failed.get(head.key);
    return !(f && (f.permanent || f.until > now));
  }

  pump(now = Date.now()) {
    this.preempt(now);
    const blocks = this.headBlocks(now);
    let nextRetry = Infinity;
    for (const task of this.wanted) {
      if (this.inflight.size >= this.concurrency) break;
      if (blocks && task !== this.wanted[0]) break;
      if (this.done.has(task.key) || this.inflight.has(task.key)) continue;
      if (task.kind === 'preview' && this.previewsUntil > now) {
        nextRetry = Math.min(nextRetry, this.previewsUntil);
        continue;
      }
      const f = this.failed.get(task.key);
      if (f && !f.permanent && f.until > now) nextRetry = Math.min(nextRetry, f.until);
      if (f && (f.permanent || f.until > now)) continue;
      this.start(task);
    }
    if (nextRetry < Infinity) this.scheduleRetry(nextRetry - now);
    if (this.inflight.size === 0) this.onIdle();
  }

  /**
   * The most wanted task waits for a free slot: cancel the least wanted request for it. An
   * exclusive head (the frame on screen, on a slow link) gets the whole link: every other
   * request is cancelled until it has arrived.
   */
  preempt(now = Date.now()) {
    const head = this.wanted[0];
    if (this.headBlocks(now)) {
      for (const [key, f] of this.inflight) {
        if (key === head.key) continue;
        f.controller.abort();
        this.inflight.delete(key);
      }
      return;
    }
    if (!head || this.inflight.size < this.concurrency || this.done.has(head.key)
      || this.inflight.has(head.key) || this.failed.has(head.key)) return;
    const rank = new Map(this.wanted.map((t, i) => [t.key, i]));
    let worst = null;
    for (const key of this.inflight.keys()) {
      if (worst === null || (rank.get(key) ?? Infinity) > (rank.get(worst) ?? Infinity)) worst = key;
    }
    if (worst !== null) {
      this.inflight.get(worst).controller.abort();
      this.inflight.delete(worst);
    }
  }

  start(task) {
    const controller = new AbortController();
    this.inflight.set(task.key, { task, controller });
    this.fetchBlob(task.url, controller.signal, task).then((blob) => {
      if (this.inflight.get(task.key)?.controller !== controller) return;
      this.inflight.delete(task.key);
      this.failed.delete(task.key);
      if (this.networkFailures > 0) {
        // the network is back: everything that failed for want of it may go again
        for (const [key, f] of this.failed) if (f.network) this.failed.delete(key);
      }
      this.networkFailures = 0;
      this.bytes += blob.size || 0;
      const url = this.toUrl(blob);
      this.done.set(task.key, { url, task, used: ++this.tick });
      this.evict();
      this.onLoad(task, url);
      this.pump();
    }, (err) => {
      if (this.inflight.get(task.key)?.controller !== controller) return;
      this.inflight.delete(task.key);
      if (err && err.name === 'AbortError') return;
      if (err && (err.status === 429 || err.status === 503) && task.kind === 'preview') {
        // the server sheds background work while busy (429 + Retry-After; a 503 of a node
        // that is going away likewise): no preview is asked
        // for until then, so the frames people wait for get the server; not a failure
        this.previewsUntil = Date.now() + 1000 * (err.retryAfter || 2);
        this.scheduleRetry(this.previewsUntil - Date.now());
        this.pump();
        return;
      }
      const network = !(err && typeof err.status === 'number');
      const permanent = !network && err.status !== 429 && err.status < 500;
      const prev = this.failed.get(task.key);
      const count = (prev ? prev.count : 0) + 1;
      if (network) this.networkFailures++;
      const delay = retryDelay(network ? this.networkFailures : count);
      this.failed.set(task.key, { count, until: Date.now() + delay, permanent, error: err, network });
      this.onError(task, err);
      if (!permanent && count < 100) this.scheduleRetry(delay);
      this.pump();
    });
  }

  scheduleRetry(delay) {
    if (this.retryTimer) return;
    this.retryTimer = this.setTimer(() => {
      this.retryTimer = null;
      this.pump();
    }, delay + 10);
  }

  /** Keep every preview; keep at most maxFull full-quality images (least recently used go). */
  evict() {
    const full = [...this.done.entries()].filter(([, d]) => d.task.kind !== 'preview');
    if (full.length <= this.maxFull) return;
    full.sort((a, b) => a[1].used - b[1].used);
    for (const [key, d] of full.slice(0, full.length - this.maxFull)) {
      if (this.pinned.has(d.url)) continue;
      this.done.delete(key);
      this.revoke(d.url);
    }
  }

  /** Drop everything (another series). */
  clear() {
    for (const f of this.inflight.values()) f.controller.abort();
    this.inflight.clear();
    for (const d of this.done.values()) if (!this.pinned.has(d.url)) this.revoke(d.url);
    this.done.clear();
    this.failed.clear();
    this.wanted = [];
  }
}
