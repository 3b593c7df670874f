// The string functions, for code that wants only them (the node tests): they live in lang.js.
export { LANGS, DEFAULT_LANG, translate, pickLang, otherLang } from './lang.js';
