// Strings: lookup with {name} parameters, language choice. The functions live in ui.js (the
// pages load it anyway); this module names them for code that wants only the strings.
export { LANGS, DEFAULT_LANG, translate, pickLang, otherLang } from './ui.js';
