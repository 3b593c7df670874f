// Film view, after the first image (loaded lazily by film_view.js, never before it):
//   - who is looking (GET /api/film/context/…): a share's opens used / allowed and expiry,
//     我的检查 for a verified patient, the hospital's name, phone and hours in a footer;
//   - the download panel: current image, current series, whole exam; the code or identity
//     check first when the last one is older than 10 minutes; inside WeChat (which drops
//     file downloads silently) how to open the page in the system browser instead;
//   - the thumbnail grid of a multi-picture exam (endoscopy, pathology, photos);
//   - report pages full screen with pinch zoom and pan (the film page is not zoomable).
// Its strings live here (both languages) so that the dictionary loaded before the first
// image stays small.
import { getJSON, postJSON, setCsrf, urls } from './api.js';
import { el, t } from './ui.js';
import { strings } from './lang.js';
import { copyText, selectText } from './clipboard.js';

const WORDS = {
  'zh-CN': {
    'share.line': '已打开 {opens}/{max} 次 · 有效期至 {until}',
    'share.until': '有效期至 {until}',
    'portal': '我的检查',
    'dl.button': '下载',
    'dl.title': '下载原始影像（DICOM）',
    'dl.image': '当前图像', 'dl.series': '当前序列', 'dl.study': '整个检查',
    'dl.close': '关闭',
    'dl.started': '已开始下载：{what}。文件较大时请耐心等待。',
    'dl.refused': '暂时无法下载：{msg}',
    'dl.not_allowed': '此次查看不允许下载影像。',
    'dl.verify.code': '为保护您的隐私，下载前请再次输入 6 位访问码。',
    'dl.verify.ok': '确认',
    'dl.verify.format': '请输入 6 位数字访问码',
    'dl.verify.done': '验证成功。',
    'dl.verify.identity': '为保护您的隐私，下载前需要验证身份。',
    'dl.verify.identity.btn': '验证身份后下载',
    'wx.title': '微信内无法下载文件',
    'wx.steps': '请点击右上角「···」→「在浏览器打开」，在手机浏览器中打开本页后再下载。',
    'wx.copy': '复制链接',
    'wx.copied': '链接已复制，请粘贴到手机浏览器中打开。',
    'wx.copy_failed': '无法自动复制，请长按下面的链接手动复制。',
    'hosp.phone': '电话', 'hosp.hours': '服务时间',
    'grid.title': '全部图片（{n}）', 'grid.item': '图 {n}', 'grid.close': '关闭',
    'zoom.close': '关闭', 'zoom.hint': '双指缩放 · 单指拖动 · 双击放大/还原',
  },
  en: {
    'share.line': 'Opened {opens}/{max} times · valid until {until}',
    'share.until': 'Valid until {until}',
    'portal': 'My exams',
    'dl.button': 'Download',
    'dl.title': 'Download the original images (DICOM)',
    'dl.image': 'Current image', 'dl.series': 'Current series', 'dl.study': 'Whole exam',
    'dl.close': 'Close',
    'dl.started': 'Download started: {what}. Large files take a while.',
    'dl.refused': 'Cannot download now: {msg}',
    'dl.not_allowed': 'Downloads are not allowed for this view.',
    'dl.verify.code': 'To protect your privacy, enter the 6-digit access code again before downloading.',
    'dl.verify.ok': 'Confirm',
    'dl.verify.format': 'Enter the 6-digit access code',
    'dl.verify.done': 'Verified.',
    'dl.verify.identity': 'To protect your privacy, verify your identity before downloading.',
    'dl.verify.identity.btn': 'Verify identity to download',
    'wx.title': 'WeChat cannot download files',
    'wx.steps': 'Tap «···» at the top right → «Open in browser», then download from the phone\'s browser.',
    'wx.copy': 'Copy link',
    'wx.copied': 'Link copied: paste it into the phone\'s browser.',
    'wx.copy_failed': 'Could not copy automatically: press and hold the link below to copy it.',
    'hosp.phone': 'Phone', 'hosp.hours': 'Hours',
    'grid.title': 'All pictures ({n})', 'grid.item': 'Picture {n}', 'grid.close': 'Close',
    'zoom.close': 'Close', 'zoom.hint': 'Pinch to zoom · drag to move · double tap to zoom in/out',
  },
};

const w = strings(WORDS);
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// ------------------------------------------------------------------------- pure helpers
/** "YYYY-MM-DD HH:MM" in China time (UTC+8) of an ISO-8601 UTC time; '' if unreadable. */
export function chinaTime(iso) {
  const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(?::(\d{2})(?:\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$/.exec(String(iso || ''));
  if (!m) return '';
  const zone = !m[4] || m[4] === 'Z' ? 'Z' : m[4];
  const d = new Date(`${m[1]}T${m[2]}:${m[3] || '00'}${zone}`);
  if (Number.isNaN(d.getTime())) return '';
  const c = new Date(d.getTime() + 8 * 3600 * 1000);
  const p = (n) => String(n).padStart(2, '0');
  return `${c.getUTCFullYear()}-${p(c.getUTCMonth() + 1)}-${p(c.getUTCDate())} ${p(c.getUTCHours())}:${p(c.getUTCMinutes())}`;
}

/** The three download URLs of the film view. */
export function downloadUrl(kind, study, series, sop) {
  const base = `/api/download/studies/${enc(study)}`;
  if (kind === 'study') return `${base}.zip`;
  if (kind === 'series') return `${base}/series/${enc(series)}.zip`;
  return `${base}/series/${enc(series)}/instances/${enc(sop)}.zip`;
}

/** A 6-digit access code, or null. */
export function cleanCode(text) {
  const s = String(text || '').replace(/\s+/g, '');
  return /^[0-9]{6}$/.test(s) ? s : null;
}

// ------------------------------------------------------------------------- state
let opts = null;   // { study, vp(), setNotice(kind), notice() }
let ctx = null;    // the last /api/film/context answer
let pending = null; // the download asked for before verification

function contextUrl(study) {
  return study.study_uid ? `/api/film/context/${enc(study.study_uid)}` : `/api/film/context/exam/${enc(study.exam_id)}`;
}

async function readContext() {
  const c = await getJSON(contextUrl(opts.study));
  if (c && c.csrf_token) setCsrf(c.csrf_token);
  ctx = c;
  return c;
}

/** Called by film_view.js once the first image is on screen (or the notice that replaces it). */
export async function init(o) {
  opts = o;
  try {
    await readContext();
  } catch (e) {
    return; // 401 is announced by getJSON (the page shows its next steps); else nothing to add
  }
  render();
}

/** The language changed: write the strings again. */
export function relabel() {
  if (ctx) render();
  const grid = $('picture-grid');
  if (grid && grid.cfRelabel) grid.cfRelabel();
}

function render() {
  const c = ctx;
  // images missing: say why in the words that fit this visitor
  const notice = opts.notice();
  if (notice && c.kind === 'share' && c.images_enabled && c.include_images === false) opts.setNotice('reportonly');
  else if (notice && c.images_enabled === false && notice !== 'closed') opts.setNotice('closed');

  // 我的检查
  let portal = $('my-exams');
  if (c.portal) {
    if (!portal) {
      portal = el('a', 'btn', '');
      portal.id = 'my-exams';
      portal.href = '/portal';
      $('topbar-actions').prepend(portal);
    }
    portal.textContent = w('portal');
  } else if (portal) portal.remove();

  // opens used / allowed, expiry, download
  const bar = $('film-ctx');
  bar.textContent = '';
  if (c.share) {
    const until = chinaTime(c.share.expires_at);
    const line = el('span', 'share-info', c.share.max_opens
      ? w('share.line', { opens: c.share.opens, max: c.share.max_opens, until })
      : w('share.until', { until }));
    line.id = 'share-info';
    bar.append(line);
  }
  bar.classList.toggle('hidden', !bar.childNodes.length);
  // 下载 at the end of the tools (they show only while images do)
  const vp = opts.vp();
  let b = $('download');
  if (c.can_download && vp && opts.study.study_uid) {
    if (!b) {
      b = el('button', 'btn dl-button');
      b.type = 'button';
      b.id = 'download';
      b.addEventListener('click', () => togglePanel());
      $('tools').append(b);
    }
    b.textContent = w('dl.button');
    b.setAttribute('aria-expanded', String(!!$('download-panel')));
  } else if (b) {
    b.remove();
  }
  if ($('download-panel')) renderPanel();

  // the hospital's name, phone and hours
  const h = c.hospital || {};
  const foot = $('film-footer');
  foot.textContent = '';
  if (h.name) {
    const name = el('div', 'hosp-name', h.name);
    if (h.logo_url) {
      const img = el('img', 'hosp-logo');
      img.src = h.logo_url;
      img.alt = '';
      name.prepend(img);
    }
    foot.append(name);
  }
  if (h.phone) {
    const p = el('div', null, `${w('hosp.phone')}：`);
    const a = el('a', 'hosp-phone', h.phone);
    a.id = 'hospital-phone';
    a.href = `tel:${String(h.phone).replace(/[^0-9+-]/g, '')}`;
    p.append(a);
    foot.append(p);
  }
  if (h.hours) foot.append(el('div', null, `${w('hosp.hours')}：${h.hours}`));
  foot.classList.toggle('hidden', !foot.childNodes.length);
}

// ------------------------------------------------------------------------- download
function togglePanel(force) {
  const open = $('download-panel');
  if (open && force !== true) {
    open.remove();
    pending = null;
    const b = $('download');
    if (b) b.setAttribute('aria-expanded', 'false');
    return;
  }
  if (!open) {
    const panel = el('section', 'dl-panel');
    panel.id = 'download-panel';
    $('tools').after(panel);
  }
  const b = $('download');
  if (b) b.setAttribute('aria-expanded', 'true');
  renderPanel();
  $('download-panel').scrollIntoView({ block: 'nearest' });
}

function renderPanel() {
  const panel = $('download-panel');
  if (!panel) return;
  const status = $('dl-status');
  const keep = status ? { text: status.textContent, cls: status.className } : null;
  panel.textContent = '';
  const head = el('div', 'dl-head');
  head.append(el('h3', null, w('dl.title')));
  const close = el('button', 'btn dl-close', w('dl.close'));
  close.type = 'button';
  close.addEventListener('click', () => togglePanel());
  head.append(close);
  panel.append(head);
  if (ctx.in_wechat) {
    panel.append(wechatTip());
  } else {
    const row = el('div', 'dl-buttons');
    for (const kind of ['image', 'series', 'study']) {
      const b = el('button', 'btn dl-kind', w(`dl.${kind}`));
      b.type = 'button';
      b.id = `dl-${kind}`;
      b.addEventListener('click', () => request(kind));
      row.append(b);
    }
    panel.append(row);
  }
  const verify = el('div', 'dl-verify hidden');
  verify.id = 'dl-verify';
  panel.append(verify);
  const st = el('p', 'dl-status muted', keep ? keep.text : '');
  st.id = 'dl-status';
  st.setAttribute('role', 'status');
  panel.append(st);
  if (pending) showVerify();
}

function what(kind) {
  return w(`dl.${kind}`);
}

function setStatus(text, warn) {
  const st = $('dl-status');
  if (!st) return;
  st.textContent = text;
  st.classList.toggle('warn', !!warn);
}

async function request(kind) {
  const vp = opts.vp();
  if (!vp || !vp.series) return;
  const it = vp.item();
  const url = downloadUrl(kind, opts.study.study_uid, vp.series.series_uid, it && it.sop);
  setStatus('');
  try {
    await readContext(); // the last check may be more than 10 minutes old by now
  } catch (e) {
    setStatus(w('dl.refused', { msg: e.message }), true);
    return;
  }
  if (ctx.in_wechat) { renderPanel(); return; }
  if (!ctx.can_download) { setStatus(w('dl.not_allowed'), true); return; }
  if (!ctx.freshly_verified) {
    pending = { kind, url };
    showVerify();
    return;
  }
  pending = null;
  start(kind, url);
}

function start(kind, url) {
  const a = el('a');
  a.href = url;
  a.setAttribute('download', '');
  a.style.display = 'none';
  document.body.append(a);
  a.click();
  a.remove();
  setStatus(w('dl.started', { what: what(kind) }));
  const v = $('dl-verify');
  if (v) v.classList.add('hidden');
}

function showVerify() {
  const box = $('dl-verify');
  if (!box) return;
  box.textContent = '';
  box.classList.remove('hidden');
  const uid = opts.study.study_uid;
  if (ctx.reverify === 'identity') {
    box.append(el('p', null, w('dl.verify.identity')));
    const a = el('a', 'btn primary', w('dl.verify.identity.btn'));
    a.id = 'reverify-identity';
    a.href = `/portal#reverify=${enc(uid)}`;
    box.append(a);
  } else {
    const form = el('form', 'dl-code');
    form.id = 'reverify-form';
    form.noValidate = true;
    const label = el('label', null, w('dl.verify.code'));
    label.htmlFor = 'reverify-code';
    const input = el('input');
    input.id = 'reverify-code';
    input.type = 'text';
    input.inputMode = 'numeric';
    input.autocomplete = 'one-time-code';
    input.maxLength = 6;
    input.pattern = '[0-9]{6}';
    input.placeholder = '______';
    const ok = el('button', 'btn primary', w('dl.verify.ok'));
    ok.type = 'submit';
    ok.id = 'reverify-submit';
    const msg = el('p', 'dl-msg warn');
    msg.id = 'reverify-msg';
    form.append(label, el('div', 'dl-code-row'), msg);
    form.children[1].append(input, ok);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const code = cleanCode(input.value);
      if (!code) { msg.textContent = w('dl.verify.format'); input.focus(); return; }
      ok.disabled = true;
      msg.textContent = '';
      try {
        await postJSON('/api/share/reverify', { code, study_uid: uid });
        await readContext();
      } catch (e) {
        ok.disabled = false;
        msg.textContent = e.message || '';
        input.select();
        return;
      }
      ok.disabled = false;
      if (ctx.freshly_verified && pending) {
        const p = pending;
        pending = null;
        box.classList.add('hidden');
        setStatus(w('dl.verify.done'));
        start(p.kind, p.url);
      }
    });
    box.append(form);
  }
  box.scrollIntoView({ block: 'center' });
  const input = $('reverify-code');
  if (input) input.focus({ preventScroll: true });
}

// ------------------------------------------------------------------------- WeChat
/** The link to open in the system browser: the share's code page if this browser opened
 *  the exam through one (the system browser holds no session), else this page. */
function linkToCopy() {
  const uid = opts.study.study_uid;
  let share = ctx.share && ctx.share.token_url;
  if (!share && uid) {
    try { share = localStorage.getItem(`cf-share:${uid}`); } catch (e) { /* private mode */ }
  }
  return share && /^\/s\/[A-Za-z0-9_-]+$/.test(share) ? location.origin + share : location.href;
}

function wechatTip() {
  const box = el('div', 'wx-tip');
  box.id = 'wechat-tip';
  box.append(el('p', 'wx-title', w('wx.title')), el('p', null, w('wx.steps')));
  const link = linkToCopy();
  const row = el('div', 'wx-row');
  const b = el('button', 'btn primary', w('wx.copy'));
  b.type = 'button';
  b.id = 'copy-link';
  const done = el('p', 'wx-done hidden');
  done.id = 'copy-done';
  done.setAttribute('role', 'status');
  const shown = el('p', 'wx-link', link);
  shown.id = 'copy-text';
  b.addEventListener('click', async () => {
    const ok = await copyText(link);
    done.textContent = ok ? w('wx.copied') : w('wx.copy_failed');
    done.classList.remove('hidden');
    done.classList.toggle('warn', !ok);
    if (!ok) selectText(shown);
  });
  row.append(b);
  box.append(row, done, shown);
  return box;
}

// ------------------------------------------------------------------------- full-screen sheets
let sheet = null; // { node, pushed }

function openSheet(node) {
  if (sheet) {
    sheet.node.replaceWith(node); // reuse the history entry of the one shown
    sheet.node = node;
  } else {
    document.body.append(node);
    sheet = { node, pushed: false };
    try { history.pushState({ cfSheet: true }, ''); sheet.pushed = true; } catch (e) { /* ignore */ }
  }
  document.body.classList.add('sheet-open');
}

function closeSheet(fromHistory) {
  if (!sheet) return;
  const s = sheet;
  sheet = null;
  s.node.remove();
  document.body.classList.remove('sheet-open');
  if (s.pushed && !fromHistory) history.back();
}

if (typeof window !== 'undefined') {
  window.addEventListener('popstate', () => closeSheet(true));
  window.addEventListener('keydown', (e) => { if (e.key === 'Escape') closeSheet(false); });
}

function sheetHead(title, closeLabel, closeId) {
  const head = el('div', 'sheet-head');
  const h = el('h3', null, title);
  const b = el('button', 'btn', closeLabel);
  b.type = 'button';
  b.id = closeId;
  b.addEventListener('click', () => closeSheet(false));
  head.append(h, b);
  return { head, h, b };
}

// ------------------------------------------------------------------------- picture grid
/** Thumbnails of every picture of the exam; a tap shows that picture. */
export function openGrid({ study, pictures, vp, show }) {
  const node = el('div', 'sheet grid-sheet');
  node.id = 'picture-grid';
  node.setAttribute('role', 'dialog');
  const { head, h, b } = sheetHead('', '', 'grid-close');
  const list = el('div', 'grid-list');
  const side = Math.min(400, Math.round(170 * (window.devicePixelRatio || 1)));
  const items = [];
  pictures.forEach((p, k) => {
    const it = el('button', 'grid-item');
    it.type = 'button';
    it.dataset.n = String(k + 1);
    if (vp && vp.series === p.series && vp.index === p.index) it.classList.add('active');
    const img = el('img', 'grid-thumb');
    img.alt = '';
    img.loading = 'lazy';
    img.decoding = 'async';
    img.src = urls.rendered(study.study_uid, p.series.series_uid, p.sop, p.frame, { viewport: `${side},${side}`, quality: 70 });
    const label = el('span', 'grid-label');
    it.append(img, label);
    it.addEventListener('click', () => {
      closeSheet(false);
      show(p.series, p.index);
    });
    list.append(it);
    items.push(label);
  });
  node.cfRelabel = () => {
    h.textContent = w('grid.title', { n: pictures.length });
    b.textContent = w('grid.close');
    items.forEach((label, k) => { label.textContent = w('grid.item', { n: k + 1 }); });
  };
  node.cfRelabel();
  node.append(head, list);
  openSheet(node);
  b.focus({ preventScroll: true });
}

// ------------------------------------------------------------------------- report page zoom
/** A report page full screen: pinch and wheel zoom, one-finger pan, double tap. */
export function openZoom(pageImg) {
  const node = el('div', 'sheet zoom-sheet');
  node.id = 'page-zoom';
  node.setAttribute('role', 'dialog');
  const { head, b } = sheetHead(pageImg.alt || '', w('zoom.close'), 'zoom-close');
  const area = el('div', 'zoom-area');
  const img = el('img', 'zoom-img');
  img.id = 'page-zoom-img';
  img.alt = pageImg.alt || '';
  img.draggable = false;
  img.src = pageImg.currentSrc || pageImg.src;
  area.append(img);
  node.append(head, area, el('p', 'zoom-hint', w('zoom.hint')));
  openSheet(node);
  b.focus({ preventScroll: true });

  // a sharper page for zooming in (the report page URL takes a width up to 2480)
  try {
    const u = new URL(img.src, location.href);
    const want = Math.min(2480, Math.round(Math.max(window.innerWidth, 600) * (window.devicePixelRatio || 1) * 2.5));
    if (u.searchParams.get('width') && Number(u.searchParams.get('width')) < want) {
      u.searchParams.set('width', String(want));
      const hi = new Image();
      hi.onload = () => { img.src = hi.src; };
      hi.src = u.pathname + u.search;
    }
  } catch (e) { /* keep the page image shown */ }

  const z = { s: 1, x: 0, y: 0, bw: 0, bh: 0 };
  const ptrs = new Map();
  let last = null;
  let prevPinch = null;
  let lastTap = null;

  const layout = () => {
    const W = area.clientWidth || 1;
    const H = area.clientHeight || 1;
    const r = (img.naturalWidth || 1) / (img.naturalHeight || 1.414);
    z.bw = Math.min(W, H * r) || W;
    z.bh = z.bw / r;
    img.style.width = `${z.bw}px`;
    img.style.height = `${z.bh}px`;
    clamp();
    apply();
  };
  const clamp = () => {
    const W = area.clientWidth || 1;
    const H = area.clientHeight || 1;
    const w2 = z.bw * z.s;
    const h2 = z.bh * z.s;
    z.x = w2 <= W ? (W - w2) / 2 : Math.min(0, Math.max(W - w2, z.x));
    z.y = h2 <= H ? (H - h2) / 2 : Math.min(0, Math.max(H - h2, z.y));
  };
  const apply = () => {
    img.style.transform = `translate(${z.x}px, ${z.y}px) scale(${z.s})`;
    node.dataset.scale = z.s.toFixed(2);
  };
  const zoomAt = (f, mx, my) => {
    const s = Math.max(1, Math.min(8, z.s * f));
    const k = s / z.s;
    z.x = mx - (mx - z.x) * k;
    z.y = my - (my - z.y) * k;
    z.s = s;
  };
  const local = (e) => {
    const r = area.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  };
  const pinch = () => {
    const [a, c] = [...ptrs.values()];
    return { mx: (a.x + c.x) / 2, my: (a.y + c.y) / 2, d: Math.hypot(a.x - c.x, a.y - c.y) || 1 };
  };
  if (img.complete && img.naturalWidth) layout(); else img.addEventListener('load', layout, { once: true });
  const ro = new ResizeObserver(() => layout());
  ro.observe(area);

  area.addEventListener('pointerdown', (e) => {
    area.setPointerCapture?.(e.pointerId);
    const p = local(e);
    ptrs.set(e.pointerId, { ...p, x0: p.x, y0: p.y, t0: performance.now() });
    if (ptrs.size === 2) prevPinch = pinch();
    last = p;
    e.preventDefault();
  });
  area.addEventListener('pointermove', (e) => {
    const ptr = ptrs.get(e.pointerId);
    if (!ptr) return;
    const p = local(e);
    const dx = p.x - ptr.x;
    const dy = p.y - ptr.y;
    ptr.x = p.x;
    ptr.y = p.y;
    if (ptrs.size >= 2 && prevPinch) {
      const now = pinch();
      zoomAt(now.d / prevPinch.d, now.mx, now.my);
      z.x += now.mx - prevPinch.mx;
      z.y += now.my - prevPinch.my;
      prevPinch = now;
    } else if (ptrs.size === 1) {
      z.x += dx;
      z.y += dy;
    }
    clamp();
    apply();
    e.preventDefault();
  });
  const up = (e) => {
    const ptr = ptrs.get(e.pointerId);
    if (!ptr) return;
    ptrs.delete(e.pointerId);
    if (ptrs.size < 2) prevPinch = null;
    const now = performance.now();
    if (!ptrs.size && Math.hypot(ptr.x - ptr.x0, ptr.y - ptr.y0) < 10 && now - ptr.t0 < 300) {
      if (lastTap && now - lastTap.t < 350 && Math.hypot(ptr.x - lastTap.x, ptr.y - lastTap.y) < 40) {
        lastTap = null;
        if (z.s > 1.05) z.s = 1; else zoomAt(2.5, ptr.x, ptr.y);
        clamp();
        apply();
      } else {
        lastTap = { t: now, x: ptr.x, y: ptr.y };
      }
    }
  };
  area.addEventListener('pointerup', up);
  area.addEventListener('pointercancel', up);
  area.addEventListener('wheel', (e) => {
    e.preventDefault();
    const p = local(e);
    zoomAt(Math.exp(-e.deltaY / 300), p.x, p.y);
    clamp();
    apply();
  }, { passive: false });
  area.addEventListener('dblclick', (e) => e.preventDefault());
  // stop observing once closed
  const mo = new MutationObserver(() => { if (!node.isConnected) { ro.disconnect(); mo.disconnect(); } });
  mo.observe(document.body, { childList: true });
}
