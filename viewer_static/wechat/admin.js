// WeChat status for system admins: configured (what is missing), working (shared access
// token valid, last error), notifications by state, the URLs to enter in the WeChat console.
import { el, call, setCsrf } from '../share/common.js';

const $ = (id) => document.getElementById(id);

function rows(box, pairs) {
  box.replaceChildren(...pairs.flatMap(([k, v]) => [el('dt', '', k), el('dd', '', v === undefined || v === null || v === '' ? '—' : String(v))]));
}

function render(s) {
  const tok = s.access_token || {};
  const notes = Object.entries(s.notifications || {}).map(([k, v]) => `${k}: ${v}`).join('，');
  rows($('status'), [
    ['已配置 / configured', s.configured ? '是 / yes' : `否 / no：${(s.problems || []).join('；')}`],
    ['工作正常 / working', s.working ? '是 / yes' : '否 / no'],
    ['提醒 / warnings', (s.warnings || []).join('；')],
    ['AppID', s.app_id],
    ['消息加密 / message mode', s.message_mode],
    ['access_token', tok.valid ? `有效，剩余 ${Math.round(tok.expires_in_s / 60)} 分钟（已刷新 ${tok.refreshes} 次）` : '无 / none'],
    ['最近错误 / last error', tok.last_error],
    ['模板ID / template ID', s.template_id_set ? '已设置 / set' : '未设置 / not set'],
    ['报告通知 / notices', s.notify_enabled ? '开 / on' : '关 / off'],
    ['已绑定 / bindings', s.bindings],
    ['通知 / notifications', notes],
    ['最近消息 / last callback', s.last_callback ? `${s.last_callback.kind} ${s.last_callback.at}` : ''],
  ]);
  rows($('urls'), [
    ['菜单链接 / menu URL', s.menu_url],
    ['服务器地址 / server URL (URL)', s.callback_url],
    ['网页授权域名 / OAuth domain', s.oauth_domain],
    ['JS接口安全域名 / JS-SDK domain', s.oauth_domain],
  ]);
}

async function load() {
  const s = await call('GET', '/api/admin/wechat');
  render(s);
}

$('check').addEventListener('click', async () => {
  $('msg').classList.remove('ok');
  try {
    const r = await call('POST', '/api/admin/wechat/check', {});
    render(r.status);
    $('msg').textContent = r.check.ok ? `正常 / OK（${r.check.ms} ms）` : `失败 / failed: ${r.check.error}`;
    $('msg').classList.toggle('ok', !!r.check.ok);
  } catch (e) { $('msg').textContent = e.message; }
});

(async () => {
  try {
    const me = await call('GET', '/api/auth/me');
    setCsrf(me.csrf_token);
    await load();
  } catch (e) {
    if (e.status === 401) { location.replace('/login?next=/wechat/admin'); return; }
    $('msg').textContent = e.message;
  }
})();
