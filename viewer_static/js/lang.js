// Every page's strings: language choice (localStorage 'cf-lang' + cookie cf_lang for the
// server's pages), lookup with {name} parameters, the language button. Each page keeps its
// dictionaries: t = strings({'zh-CN': {...}, en: {...} or () => import(...)}).
export const LANGS = ['zh-CN', 'en'];
export const DEFAULT_LANG = 'zh-CN';
const has = (d, k) => d && Object.prototype.hasOwnProperty.call(d, k);

/** `dict[key]` with {param} substitution; falls back to `fallback[key]`, then the key. */
export function translate(dict, key, params, fallback) {
  const s = has(dict, key) ? dict[key] : has(fallback, key) ? fallback[key] : key;
  return params ? s.replace(/\{(\w+)\}/g, (m, n) => (params[n] === undefined ? m : String(params[n]))) : s;
}

export const pickLang = (l) => (LANGS.includes(l) ? l : DEFAULT_LANG);
export const otherLang = (l) => (l === 'en' ? 'zh-CN' : 'en');

let lang = DEFAULT_LANG;
try { lang = pickLang(localStorage.getItem('cf-lang')); } catch (e) { /* private mode */ }
export const currentLang = () => lang;

export function storeLang(l) {
  lang = pickLang(l);
  try { localStorage.setItem('cf-lang', lang); } catch (e) { /* private mode */ }
  document.cookie = `cf_lang=${lang}; path=/; max-age=31536000; samesite=lax`;
  document.documentElement.lang = lang;
}

/** The chosen language's half of a server message ('中文 / English'). */
export function localMsg(m) {
  const s = String(m || '');
  const i = s.indexOf(' / ');
  return i < 0 ? s : (lang === 'en' ? s.slice(i + 3) : s.slice(0, i)).trim();
}

/** t(key, params) over a page's dictionaries; t.load() fetches a lazy one when chosen. */
export function strings(dicts) {
  const t = (key, params) => translate(typeof dicts[lang] === 'object' && dicts[lang], key, params, dicts[DEFAULT_LANG]);
  /** More dictionaries of the same shape (another page's words). */
  t.add = (more) => {
    for (const l of LANGS) {
      const d = dicts[l];
      dicts[l] = typeof d === 'function' ? () => d().then((m) => ({ default: { ...m.default, ...more[l] } })) : { ...d, ...more[l] };
    }
  };
  t.load = async () => { if (typeof dicts[lang] === 'function') dicts[lang] = (await dicts[lang]()).default; };
  return t;
}

/** A button labelled t(key) that switches language, then calls onChange. */
export function langButton(t, key, onChange, cls = 'btn small') {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = cls;
  b.id = 'lang-switch';
  b.textContent = t(key);
  b.addEventListener('click', async () => {
    storeLang(otherLang(lang));
    await t.load();
    b.textContent = t(key);
    if (onChange) onChange();
  });
  return b;
}
