// Strings: lookup with {name} parameters, language choice. The dictionaries live in
// i18n/zh-CN.js (default) and i18n/en.js.

export const LANGS = ['zh-CN', 'en'];
export const DEFAULT_LANG = 'zh-CN';

/** `dict[key]` with {param} substitution; falls back to `fallback[key]`, then the key. */
export function translate(dict, key, params, fallback) {
  let s = dict && Object.prototype.hasOwnProperty.call(dict, key) ? dict[key] : undefined;
  if (s === undefined && fallback) s = fallback[key];
  if (s === undefined) return key;
  if (!params) return s;
  return s.replace(/\{(\w+)\}/g, (m, name) => (params[name] === undefined ? m : String(params[name])));
}

/** The language to use: a stored choice if valid, else Chinese (the hospital's default). */
export function pickLang(stored) {
  return LANGS.includes(stored) ? stored : DEFAULT_LANG;
}

export function otherLang(lang) {
  return lang === 'en' ? 'zh-CN' : 'en';
}
