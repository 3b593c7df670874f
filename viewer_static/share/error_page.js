// Refusal pages written by the server: when this browser opened the exam through a share
// link, the first next step is that link's code page again.
import { shareFor } from '../js/hospital.js';
import { storeLang } from '../js/lang.js';

const data = JSON.parse(document.body.dataset.error || '{}');
const steps = document.getElementById('next-steps');
const link = data.study ? shareFor(data.study) : null;
if (steps && link && (data.status === 401 || data.status === 403) && /^\/s\/[A-Za-z0-9_-]+$/.test(link)) {
  const a = document.createElement('a');
  a.id = 'next-code';
  a.className = 'btn primary wide';
  a.href = link;
  a.textContent = document.documentElement.lang === 'en' ? 'Enter the access code again' : '重新输入访问码';
  for (const b of steps.querySelectorAll('.primary')) b.classList.remove('primary');
  steps.prepend(a);
}
const lang = document.createElement('button');
lang.type = 'button';
lang.className = 'btn small';
lang.id = 'lang-switch';
lang.textContent = document.documentElement.lang === 'en' ? '中文' : 'English';
lang.addEventListener('click', () => { storeLang(document.documentElement.lang === 'en' ? 'zh-CN' : 'en'); location.reload(); });
const bar = document.querySelector('header.bar');
if (bar) bar.append(lang);
