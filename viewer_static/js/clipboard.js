// Copying a link: the Clipboard API where the page may use it (HTTPS or localhost), else a
// hidden textarea and document.execCommand('copy') (plain HTTP inside the hospital, older
// WeChat browsers). Used by the film view, the share desk and the portal.

function fallbackCopy(text) {
  const ta = document.createElement('textarea');
  ta.value = text;
  ta.setAttribute('readonly', '');
  ta.style.cssText = 'position:fixed;top:0;left:0;width:1px;height:1px;opacity:0;';
  document.body.append(ta);
  ta.select();
  ta.setSelectionRange(0, text.length);
  let ok = false;
  try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
  ta.remove();
  return ok;
}

/** Copy `text`; resolves true when it reached the clipboard. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try { await navigator.clipboard.writeText(text); return true; } catch (e) { /* fall back */ }
  }
  return fallbackCopy(text);
}

/** Select a node's text, so that a person can copy it by hand when copying failed. */
export function selectText(node) {
  try {
    const r = document.createRange();
    r.selectNodeContents(node);
    const s = window.getSelection();
    s.removeAllRanges();
    s.addRange(r);
  } catch (e) { /* nothing more to do */ }
}
