// A 复制链接 (copy link) button for share links and patient QR codes: the Clipboard API where
// the page may use it (HTTPS or localhost), else a hidden textarea and
// document.execCommand('copy') (plain HTTP inside the hospital, older WeChat browsers); a
// visible 已复制 confirmation either way, and the link selected for copying by hand when
// both fail.
import { strings } from '../js/lang.js';
import { copyText, selectText } from '../js/clipboard.js';

const WORDS = {
  'zh-CN': { copy: '复制链接', done: '已复制', fail: '无法自动复制，请长按链接手动复制' },
  en: { copy: 'Copy link', done: 'Copied', fail: 'Could not copy: press and hold the link to copy it' },
};

const w = strings(WORDS);

/** A row: the link (wrapping at any character), a 复制链接 button and its confirmation. */
export function linkRow(url) {
  const row = document.createElement('div');
  row.className = 'link-row';
  const link = document.createElement('a');
  link.className = 'link-url';
  link.href = url;
  link.textContent = url;
  link.target = '_blank';
  link.rel = 'noopener';
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'btn small copy-link';
  b.textContent = w('copy');
  const note = document.createElement('span');
  note.className = 'copied';
  note.setAttribute('role', 'status');
  note.setAttribute('aria-live', 'polite');
  let timer = null;
  b.addEventListener('click', async () => {
    const ok = await copyText(url);
    note.textContent = ok ? `✓ ${w('done')}` : w('fail');
    note.classList.toggle('bad', !ok);
    if (!ok) selectText(link);
    clearTimeout(timer);
    if (ok) timer = setTimeout(() => { note.textContent = ''; }, 4000);
  });
  const acts = document.createElement('div');
  acts.className = 'actions';
  acts.append(b, note);
  row.append(link, acts);
  return row;
}
