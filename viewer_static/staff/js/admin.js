// System admin: accounts and roles, API tokens, verification methods, connection settings
// (stored values override conf), integration/outbox status, system health.
import { api, el, show, fmtTime, initPage } from './common.js';

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
let roles = [];
let me = '';

function roleName(r) { return (roles.find((x) => x.role === r) || { name: r }).name; }

function fail(e) { show($('msg'), 'error', e.message); window.scrollTo(0, 0); }
function ok(text) { show($('msg'), 'ok', text); }

async function loadUsers() {
  const r = await api('GET', '/api/staff/users');
  roles = r.roles;
  if (!$('u-role').options.length) {
    $('u-role').replaceChildren(...roles.map((x) => el('option', { value: x.role }, x.name)));
  }
  $('users').tBodies[0].replaceChildren(...r.users.map(userRow));
}

function userRow(u) {
  const state = !u.active ? el('span', { class: 'tag off' }, '已停用')
    : u.locked ? el('span', { class: 'tag off' }, '已锁定')
      : u.must_change_password ? el('span', { class: 'tag' }, '待改密码') : el('span', { class: 'tag on' }, '正常');
  const roleSel = el('select', { 'aria-label': '角色' }, roles.map((x) => el('option', { value: x.role, selected: u.roles.includes(x.role) }, x.name)));
  roleSel.addEventListener('change', () => act(u, { roles: [roleSel.value] }, '角色已修改'));
  const btn = (text, fn, cls) => { const b = el('button', { type: 'button', class: cls || 'secondary' }, text); b.addEventListener('click', fn); return b; };
  const actions = [];
  if (u.username !== me) {
    actions.push(u.active ? btn('停用', () => window.confirm(`停用 ${u.username}？其会话和令牌立即失效。`) && act(u, { active: false }, '账号已停用'), 'danger')
      : btn('启用', () => act(u, { active: true }, '账号已启用')));
    if (!u.service_account) actions.push(btn('重置密码', () => resetPassword(u)));
  }
  if (u.locked) actions.push(btn('解锁', () => act(u, { unlock: true }, '账号已解锁')));
  // tokens go to integration service accounts only (separation of duties)
  if (u.active && u.service_account) actions.push(btn('发令牌', () => issueToken(u)));
  return el('tr', { 'data-user': u.username }, el('td', {}, u.username), el('td', {}, u.display_name),
    el('td', {}, u.username === me ? u.roles.map(roleName).join('、') : roleSel), el('td', {}, state),
    el('td', {}, fmtTime(u.last_sign_in)), el('td', {}, u.active_tokens), el('td', { class: 'row' }, actions));
}

async function act(u, changes, text) {
  try {
    await api('PATCH', `/api/staff/users/${enc(u.username)}`, changes);
    ok(`${u.username}：${text}`);
  } catch (e) { fail(e); }
  await loadUsers();
}

async function resetPassword(u) {
  if (!window.confirm(`为 ${u.username} 生成新的临时密码？其当前登录会被结束。`)) return;
  try {
    const r = await api('POST', `/api/staff/users/${enc(u.username)}/password-reset`, {});
    show($('new-pass'), 'ok', `${u.username} 的临时密码：${r.temporary_password}（只显示这一次，首次登录须修改）`);
  } catch (e) { fail(e); }
  await loadUsers();
}

async function issueToken(u) {
  const name = window.prompt(`给 ${u.username} 的令牌用途（如：夜间导入脚本）：`);
  if (name === null) return;
  const days = Number(window.prompt('有效天数（1-365）：', '90'));
  try {
    const r = await api('POST', `/api/staff/users/${enc(u.username)}/tokens`, { name, days });
    show($('new-token'), 'ok', `令牌（只显示这一次）：${r.token}`);
  } catch (e) { fail(e); }
  await Promise.all([loadUsers(), loadTokens()]);
}

const TOKEN_STATE = { active: '有效', revoked: '已吊销', expired: '已过期' };
async function loadTokens() {
  const r = await api('GET', '/api/staff/tokens');
  $('tokens').tBodies[0].replaceChildren(...r.tokens.map((t) => {
    const b = t.state === 'active' ? el('button', { type: 'button', class: 'danger' }, '吊销') : '';
    if (b) b.addEventListener('click', async () => {
      try { await api('POST', `/api/staff/tokens/${t.id}/revoke`, {}); ok('令牌已吊销'); } catch (e) { fail(e); }
      await Promise.all([loadTokens(), loadUsers()]);
    });
    return el('tr', {}, el('td', {}, t.username), el('td', {}, t.name), el('td', {}, fmtTime(t.created_at)),
      el('td', {}, fmtTime(t.expires_at)), el('td', {}, TOKEN_STATE[t.state] || t.state), el('td', {}, b));
  }));
}

$('user-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    const service = $('u-service').checked;
    const r = await api('POST', '/api/staff/users', { username: $('u-name').value.trim(), display_name: $('u-display').value.trim(), roles: [$('u-role').value], service_account: service });
    show($('new-pass'), 'ok', service ? `已新建集成服务账号 ${r.user.username}（${r.user.roles.map(roleName).join('、')}），没有密码，请用“发令牌”`
      : `已新建 ${r.user.username}（${r.user.roles.map(roleName).join('、')}），临时密码：${r.temporary_password}（只显示这一次，首次登录须修改）`);
    $('u-service').checked = false;
    $('u-name').value = ''; $('u-display').value = '';
    show($('msg'), '', '');
  } catch (e) { fail(e); }
  await loadUsers();
});

// verification methods (the patient-access API) ------------------------------------------
let verifyNames = {};
async function loadVerification() {
  try {
    const r = await api('GET', '/api/admin/verification');
    verifyNames = r.names || {};
    $('verify-methods').replaceChildren(...r.known_methods.map((m) => el('label', { class: 'inline' },
      el('input', { type: 'checkbox', value: m, checked: !!r.methods[m] }), verifyNames[m] || m)));
    $('verify-combos').value = r.combinations.map((c) => c.join('+')).join('\n');
  } catch (e) {
    $('verify-methods').replaceChildren(el('span', { class: 'muted' }, e.message));
  }
}
$('verify-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const methods = {};
  for (const b of $('verify-methods').querySelectorAll('input')) methods[b.value] = b.checked;
  const combinations = $('verify-combos').value.split('\n').map((l) => l.trim()).filter(Boolean).map((l) => l.split('+').map((x) => x.trim()));
  try { await api('PUT', '/api/admin/verification', { methods, combinations }); ok('验证方式已保存，立即生效'); } catch (e) { fail(e); }
  await loadVerification();
});

// connection settings ----------------------------------------------------------------------
async function loadSettings() {
  const r = await api('GET', '/api/admin/settings');
  $('settings').replaceChildren(...r.groups.map((g) => el('fieldset', {}, el('legend', {}, g.label),
    el('div', { class: 'row' }, g.settings.map((s) => {
      let input;
      if (s.type === 'bool') input = el('select', { name: s.name }, el('option', { value: 'true', selected: s.value === true }, '开'), el('option', { value: 'false', selected: s.value === false }, '关'));
      else if (s.choices.length) input = el('select', { name: s.name }, s.choices.map((c) => el('option', { value: c, selected: c === s.value }, c)));
      else input = el('input', { name: s.name, value: s.value, type: s.type === 'int' ? 'number' : 'text', min: s.minimum, max: s.maximum });
      input.dataset.type = s.type;
      input.dataset.original = String(s.value);
      return el('label', { title: s.help }, `${s.name}${s.stored ? '（已覆盖）' : ''}`, input);
    })))));
}
$('settings-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const settings = {};
  for (const i of $('settings').querySelectorAll('[name]')) {
    if (i.value === i.dataset.original) continue;
    if (i.value === '' && i.dataset.type !== 'str') settings[i.name] = null;
    else settings[i.name] = i.dataset.type === 'int' ? Number(i.value) : i.dataset.type === 'bool' ? i.value === 'true' : i.value;
  }
  if (!Object.keys(settings).length) { show($('msg'), 'info', '没有修改。'); return; }
  try { const r = await api('PUT', '/api/admin/settings', { settings }); ok(`已保存 ${r.changed.length} 项设置`); } catch (e) { fail(e); }
  await loadSettings();
});

// trusted integration peers -----------------------------------------------------------------
const KIND_NAMES = { hl7: 'HL7', dicom: 'DICOM', import: '导入接口' };
async function loadPeers() {
  const r = await api('GET', '/api/admin/peers');
  $('peers').tBodies[0].replaceChildren(...r.peers.map((p) => {
    const del = el('button', { type: 'button', class: 'danger' }, '删除');
    del.addEventListener('click', async () => {
      if (!window.confirm(`删除对端 ${p.name}？其后发来的消息将被拒绝。`)) return;
      try { await api('DELETE', `/api/admin/peers/${enc(p.name)}`); ok(`已删除 ${p.name}`); } catch (e) { fail(e); }
      await loadPeers();
    });
    return el('tr', {}, el('td', {}, p.name), el('td', {}, KIND_NAMES[p.kind] || p.kind),
      el('td', {}, p.addresses.join(', ') || '任意'), el('td', {}, p.ae_title),
      el('td', {}, p.allowed.join(', ') || '全部'), el('td', {}, p.may_change_identity ? '是' : ''),
      el('td', {}, p.charset), el('td', {}, el('span', { class: `tag ${p.enabled ? 'on' : 'off'}` }, p.enabled ? '启用' : '停用')),
      el('td', {}, del));
  }));
}
$('peer-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const list = (v) => v.split(',').map((x) => x.trim()).filter(Boolean);
  const peer = {
    name: $('p-name').value.trim(), kind: $('p-kind').value, addresses: list($('p-addresses').value),
    ae_title: $('p-ae').value.trim(), allowed: list($('p-allowed').value), charset: $('p-charset').value.trim(),
    may_change_identity: $('p-identity').checked, enabled: $('p-enabled').checked,
  };
  try { const r = await api('POST', '/api/admin/peers', peer); ok(`${r.peer.name}：${r.created ? '已添加' : '已更新'}，5 秒内生效`); } catch (e) { fail(e); }
  await loadPeers();
});

// integration and health --------------------------------------------------------------------
async function loadIntegration() {
  const box = $('integration');
  try {
    const r = await api('GET', '/api/admin/integration');
    const outbox = Object.entries(r.outbox || {}).map(([k, v]) => `${k}: ${v}`).join('，') || '空';
    const inbound = Object.entries(r.inbound || {}).map(([k, v]) => `${k}: ${v}`).join('，') || '无';
    const dead = (r.dead_letters || []).map((d) => {
      const b = el('button', { type: 'button', class: 'secondary' }, '重发');
      b.addEventListener('click', async () => {
        try { await api('POST', `/api/admin/integration/outbox/${d.id}/resend`, {}); ok('已重新排队'); } catch (e) { fail(e); }
        loadIntegration();
      });
      return el('tr', {}, el('td', {}, d.channel), el('td', {}, d.destination), el('td', {}, d.attempts), el('td', {}, d.last_error), el('td', {}, b));
    });
    box.replaceChildren(el('div', { class: 'kv' }, el('span', {}, '发出队列'), el('span', {}, outbox),
      el('span', {}, '收到消息'), el('span', {}, inbound), el('span', {}, '隔离文件'), el('span', {}, r.quarantine ?? 0)),
    dead.length ? el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, '通道'), el('th', {}, '目标'), el('th', {}, '次数'), el('th', {}, '最后错误'), el('th', {}))), el('tbody', {}, dead)) : el('p', { class: 'muted' }, '没有投递失败的消息。'));
  } catch (e) {
    box.replaceChildren(el('p', { class: 'muted' }, e.message));
  }
}

function bytes(n) { return `${(n / 1024 ** 3).toFixed(1)} GB`; }
async function loadHealth() {
  const h = await api('GET', '/api/admin/health');
  const c = h.caches || {};
  const cache = (x) => (x ? `${(x.bytes / 1024 ** 2).toFixed(0)} / ${(x.max_bytes / 1024 ** 2).toFixed(0)} MB，命中 ${x.hits}，未命中 ${x.misses}` : '—');
  $('health').replaceChildren(
    el('span', {}, '总体'), el('span', {}, el('span', { class: `tag ${h.healthy ? 'on' : 'off'}` }, h.healthy ? '正常' : '需要处理')),
    el('span', {}, '版本'), el('span', {}, h.version),
    el('span', {}, '运行时间'), el('span', {}, `${Math.floor(h.uptime_s / 3600)} 小时 ${Math.floor((h.uptime_s % 3600) / 60)} 分`),
    el('span', {}, '数据库'), el('span', {}, h.database.ok ? `${h.database.backend}，正常（${h.database.ping_ms} ms），结构版本 ${h.database.schema_version}，${h.database.counts.exams} 个检查 / ${h.database.counts.instances} 幅图像` : `无法连接：${h.database.error}`),
    el('span', {}, '磁盘'), el('span', {}, h.disk.total_bytes ? `已用 ${h.disk.used_percent}%，剩余 ${bytes(h.disk.free_bytes)}（${h.disk.path}）` : h.disk.error),
    el('span', {}, '解码缓存'), el('span', {}, cache(c.decoded)),
    el('span', {}, '体数据缓存'), el('span', {}, cache(c.volumes)),
    el('span', {}, '图像缓存'), el('span', {}, cache(c.encoded)),
    el('span', {}, '审计记录'), el('span', {}, h.audit_records));
}

$('integration-refresh').addEventListener('click', loadIntegration);
$('health-refresh').addEventListener('click', () => loadHealth().catch(fail));

initPage('admin').then((nav) => {
  me = nav.username;
  return Promise.all([loadUsers(), loadTokens(), loadVerification(), loadSettings(), loadPeers(), loadIntegration(), loadHealth()]);
}).catch((e) => { if (e && e.status) fail(e); });
