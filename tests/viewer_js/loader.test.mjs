import test from 'node:test';
import assert from 'node:assert/strict';
import { FrameLoader } from '../../viewer_static/js/loader.js';

function fakeNet() {
  const pending = [];
  const fetchBlob = (url, signal) => new Promise((resolve, reject) => {
    const p = { url, resolve, reject, aborted: false };
    signal.addEventListener('abort', () => { p.aborted = true; const e = new Error('aborted'); e.name = 'AbortError'; reject(e); });
    pending.push(p);
  });
  return { pending, fetchBlob };
}
const tick = () => new Promise((r) => setImmediate(r));
const tasks = (keys) => keys.map((k) => ({ key: k, url: `/u/${k}`, kind: 'preview', index: 0 }));

test('concurrency limit and priority order', async () => {
  const net = fakeNet();
  const l = new FrameLoader({ fetchBlob: net.fetchBlob, concurrency: 2, setTimer: () => 0 });
  l.want(tasks(['a', 'b', 'c', 'd']));
  assert.deepEqual(net.pending.map((p) => p.url), ['/u/a', '/u/b']);
  net.pending[0].resolve({ size: 10 });
  await tick();
  assert.deepEqual(net.pending.map((p) => p.url), ['/u/a', '/u/b', '/u/c']);
  assert.ok(l.has('a'));
  assert.equal(l.bytes, 10);
});

test('stale requests are aborted when the wish list changes', async () => {
  const net = fakeNet();
  const l = new FrameLoader({ fetchBlob: net.fetchBlob, concurrency: 1, setTimer: () => 0 });
  l.want(tasks(['x1', 'x2', 'x3', 'x4']));
  const first = net.pending[0];
  l.want(tasks(['y1', 'y2', 'y3', 'y4']));
  await tick();
  assert.ok(first.aborted);
  assert.equal(net.pending.at(-1).url, '/u/y1');
});

test('network failure: retried later, resumed when back online; 404 is permanent', async () => {
  const net = fakeNet();
  let timer = null;
  const errors = [];
  const l = new FrameLoader({ fetchBlob: net.fetchBlob, concurrency: 1, setTimer: (fn) => { timer = fn; return 1; }, onError: (t, e) => errors.push(e) });
  l.want(tasks(['a', 'b']));
  net.pending[0].reject(new TypeError('Failed to fetch'));
  await tick();
  assert.equal(l.networkFailures, 1);
  assert.ok(l.failure('a').network);
  assert.ok(timer, 'a retry is scheduled');
  assert.equal(net.pending.at(-1).url, '/u/b');
  net.pending.at(-1).resolve({ size: 1 });
  await tick();
  l.resume();
  assert.equal(net.pending.at(-1).url, '/u/a');
  const e404 = Object.assign(new Error('nope'), { status: 404 });
  net.pending.at(-1).reject(e404);
  await tick();
  assert.ok(l.failure('a').permanent);
  l.retry('a');
  assert.equal(net.pending.filter((p) => p.url === '/u/a').length, 3);
  assert.ok(l.has('b'));
});

test('an exclusive head gets the link alone: others wait and in-flight ones are cancelled', async () => {
  const net = fakeNet();
  const l = new FrameLoader({ fetchBlob: net.fetchBlob, concurrency: 3, setTimer: () => 0 });
  l.want(tasks(['p1', 'p2', 'p3']));
  assert.equal(net.pending.length, 3);
  const head = { key: 'f', url: '/u/f', kind: 'full', index: 0, exclusive: true };
  l.want([head, ...tasks(['p1', 'p2', 'p3'])]);
  assert.ok(net.pending.slice(0, 3).every((p) => p.aborted), 'previews cancelled for the frame on screen');
  assert.deepEqual(net.pending.filter((p) => !p.aborted).map((p) => p.url), ['/u/f']);
  net.pending.at(-1).resolve({ size: 50000 });
  await tick();
  assert.ok(l.has('f'));
  assert.deepEqual(net.pending.filter((p) => !p.aborted && p.url !== '/u/f').map((p) => p.url), ['/u/p1', '/u/p2', '/u/p3']);
});

test('an exclusive head that failed does not block the rest while it waits for its retry', async () => {
  const net = fakeNet();
  const l = new FrameLoader({ fetchBlob: net.fetchBlob, concurrency: 2, setTimer: () => 0 });
  const head = { key: 'f', url: '/u/f', kind: 'full', index: 0, exclusive: true };
  l.want([head, ...tasks(['p1'])]);
  assert.deepEqual(net.pending.map((p) => p.url), ['/u/f']);
  net.pending[0].reject(Object.assign(new Error('busy'), { status: 503 }));
  await tick();
  assert.equal(net.pending.at(-1).url, '/u/p1');
});

test('a busy server (429 on a preview) holds every preview for Retry-After, not the frame on screen', async () => {
  const net = fakeNet();
  const timers = [];
  const l = new FrameLoader({ fetchBlob: net.fetchBlob, concurrency: 2, setTimer: (fn, ms) => timers.push({ fn, ms }) });
  const full = { key: 'f0', url: '/u/f0', kind: 'full', index: 0 };
  l.want([...tasks(['p1', 'p2', 'p3', 'p4'])]);
  assert.deepEqual(net.pending.map((p) => p.url), ['/u/p1', '/u/p2']);
  const busy = Object.assign(new Error('busy'), { status: 429, retryAfter: 3 });
  net.pending[0].reject(busy);
  await tick();
  // no other preview is asked for (no storm of refusals), none is marked failed
  assert.deepEqual(net.pending.map((p) => p.url), ['/u/p1', '/u/p2']);
  assert.equal(l.failure('p1'), null);
  assert.ok(timers.some((t) => t.ms >= 2900 && t.ms <= 3100));
  // the frame on screen still goes
  l.want([full, ...tasks(['p1', 'p2', 'p3', 'p4'])]);
  assert.deepEqual(net.pending.map((p) => p.url), ['/u/p1', '/u/p2', '/u/f0']);
  // after Retry-After the previews go again
  l.previewsUntil = Date.now() - 1;
  net.pending[2].resolve({ size: 5 });
  await tick();
  assert.ok(net.pending.map((p) => p.url).includes('/u/p1'));
});
