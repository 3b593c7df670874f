// Security admin: password, lock-out, session and two-factor policy, admin allow-list.
import { api, el, show, initPage } from './common.js';

const $ = (id) => document.getElementById(id);
const GROUPS = {
  'f-password': ['password_min_length', 'password_min_classes', 'password_history', 'password_max_age_days'],
  'f-lockout': ['lockout_failures', 'lockout_minutes'],
  'f-session': ['session_idle_minutes', 'session_absolute_hours'],
};
let loaded = null;

async function load() {
  const r = await api('GET', '/api/admin/security');
  loaded = r.policy;
  for (const [box, names] of Object.entries(GROUPS)) {
    $(box).replaceChildren(...names.filter((n) => r.limits[n]).map((n) => {
      const l = r.limits[n];
      return el('label', {}, l.label.split(' / ')[0], el('input', { type: 'number', name: n, min: l.min, max: l.max, value: r.policy[n] }),
        el('span', { class: 'muted' }, `${l.min}–${l.max}${l.level3 ? '（等保三级要求）' : ''}`));
    }));
  }
  const floor = r.totp_floor || [];
  $('f-totp').replaceChildren(...r.roles.map((x) => el('label', { class: 'inline' },
    el('input', { type: 'checkbox', name: 'totp', value: x.role, checked: r.policy.totp_required_roles.includes(x.role) || floor.includes(x.role), disabled: floor.includes(x.role) }),
    x.name, floor.includes(x.role) ? '（等保三级必选）' : '')));
  $('allow-list').value = r.policy.admin_allow_list.join('\n');
  $('client-ip').textContent = `您当前的地址：${r.client_ip}（白名单必须包含它）`;
}

$('policy-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const policy = {};
  for (const i of document.querySelectorAll('input[type=number]')) {
    if (String(loaded[i.name]) !== i.value) policy[i.name] = i.value === '' ? null : Number(i.value);
  }
  const totp = [...document.querySelectorAll('input[name=totp]:checked')].map((b) => b.value).sort();
  if (totp.join(',') !== [...loaded.totp_required_roles].sort().join(',')) policy.totp_required_roles = totp;
  const allow = $('allow-list').value.split('\n').map((x) => x.trim()).filter(Boolean);
  if (allow.join(',') !== loaded.admin_allow_list.join(',')) policy.admin_allow_list = allow;
  if (!Object.keys(policy).length) { show($('msg'), 'info', '没有修改。'); return; }
  try {
    const r = await api('PUT', '/api/admin/security', { policy });
    show($('msg'), 'ok', `已保存：${r.changed.join('、') || '无变化'}`);
  } catch (e) {
    show($('msg'), 'error', e.message);
  }
  window.scrollTo(0, 0);
  await load();
});

initPage('security').then(load).catch((e) => { if (e && e.status) show($('msg'), 'error', e.message); });
