// Film view entry: ask for the study JSON at once, while the view's modules (preloaded by
// film.html) are still arriving, so the first image waits for one round trip less.
import { api } from './api.js';

const uid = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
const study = api.study(uid, undefined, 'high');
study.catch(() => {}); // film_view.js reports the failure
import('./film_view.js').then((m) => m.main(study), () => {
  // the view's code did not arrive (network gone): say so instead of a blank page
  const box = document.getElementById('viewport');
  if (box) box.textContent = '加载失败，请检查网络后刷新页面 / Loading failed: check the network and reload';
});
