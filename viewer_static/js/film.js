// Film view entry: ask for the study JSON at once, while the view's modules (preloaded by
// film.html) are still arriving, so the first image waits for one round trip less.
// /film/{study_uid} or /film/exam/{id} (an exam whose images have not arrived: no UID yet).
import { api, getJSON } from './api.js';

const parts = location.pathname.split('/').filter(Boolean);
const byId = parts[1] === 'exam' && /^[0-9]{1,12}$/.test(parts[2] || '');
const uid = byId ? '' : decodeURIComponent(parts.pop() || '');

/** The study JSON the code page received with the share's opening (sessionStorage, used
 *  once: a reload asks the server again). */
function handedOver() {
  if (!uid) return null;
  try {
    const key = `cf-study:${uid}`;
    const raw = sessionStorage.getItem(key);
    if (!raw) return null;
    sessionStorage.removeItem(key);
    const { at, study } = JSON.parse(raw);
    return study && study.study_uid === uid && Date.now() - at < 60000 ? study : null;
  } catch (e) { return null; }
}

const early = handedOver();
const study = early ? Promise.resolve(early)
  : byId ? getJSON(`/api/exams/${parts[2]}`, undefined, 'high') : api.study(uid, undefined, 'high');
study.catch(() => {}); // film_view.js reports the failure
import('./film_view.js').then((m) => m.main(study), () => {
  // the view's code did not arrive (network gone): say so instead of a blank page
  const box = document.getElementById('viewport');
  if (box) box.textContent = '加载失败，请检查网络后刷新页面 / Loading failed: check the network and reload';
});
