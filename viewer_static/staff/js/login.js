// Sign-in page: password, then (if the account has one or its role requires one) the second
// factor, then a forced password change when the account must change it; finally back to
// the page that sent the user here, if that is a path of this site.
import { api, setCsrf, show, el } from './common.js';
import { safeNext } from './next.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const next = safeNext(params.get('next'), location.origin);
const msg = $('msg');
const forms = ['login-form', 'totp-form', 'enrol-form', 'recovery', 'change-form'];
let ticket = '';
let afterRecovery = null;

function only(id) {
  for (const f of forms) $(f).classList.toggle('hidden', f !== id);
  const first = $(id).querySelector('input');
  if (first) first.focus();
}

function go() { location.assign(next); }

async function signedIn(result) {
  setCsrf(result.csrf_token);
  const finish = () => {
    if (result.user && result.user.must_change_password) {
      showChange('首次登录或密码已被重置/过期，请先设置新密码。');
    } else {
      go();
    }
  };
  if (result.recovery_codes && result.recovery_codes.length) {
    $('recovery-codes').replaceChildren(...result.recovery_codes.map((c) => el('li', {}, c)));
    afterRecovery = finish;
    only('recovery');
    return;
  }
  finish();
}

async function showChange(why) {
  show(msg, '', '');
  if (why) { $('change-why').textContent = why; $('change-why').classList.remove('hidden'); }
  try {
    const nav = await api('GET', '/api/staff/nav');
    setCsrf(nav.csrf_token);
    const r = nav.password_rules;
    $('rules').textContent = `密码至少 ${r.min_length} 位，包含大写字母、小写字母、数字、符号中的至少 ${r.min_classes} 类，不能包含用户名。`;
  } catch (e) { /* rules stay unknown; the server still checks */ }
  only('change-form');
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  show(msg, '', '');
  $('login-submit').disabled = true;
  try {
    const r = await api('POST', '/api/auth/login', { username: $('username').value.trim(), password: $('password').value });
    $('password').value = '';
    if (r.second_factor === 'totp') {
      ticket = r.ticket;
      only('totp-form');
    } else if (r.second_factor === 'enrol') {
      ticket = r.ticket;
      const e = await api('POST', '/api/auth/totp/enrol', { ticket });
      // qr_svg is already a data: URI (data:image/svg+xml;base64,…); wrapping it again gave a
      // broken image. Raw SVG markup (as the share APIs answer) is wrapped here.
      const qr = String(e.qr_svg || '');
      $('enrol-qr').src = qr.startsWith('data:') ? qr : `data:image/svg+xml;charset=utf-8,${encodeURIComponent(qr)}`;
      $('enrol-secret').textContent = e.secret;
      only('enrol-form');
    } else {
      await signedIn(r);
    }
  } catch (e) {
    show(msg, 'error', e.message);
  } finally {
    $('login-submit').disabled = false;
  }
});

$('totp-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const v = $('totp-code').value.trim();
  const body = /^[0-9]{6}$/.test(v) ? { ticket, code: v } : { ticket, recovery_code: v };
  try {
    await signedIn(await api('POST', '/api/auth/totp', body));
  } catch (e) {
    show(msg, 'error', e.message);
    if (e.status === 401) only('login-form');
  }
});

$('enrol-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    await signedIn(await api('POST', '/api/auth/totp/confirm', { ticket, code: $('enrol-code').value.trim() }));
  } catch (e) {
    show(msg, 'error', e.message);
  }
});

$('recovery-done').addEventListener('click', () => { if (afterRecovery) afterRecovery(); });

$('change-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if ($('new-password').value !== $('new-password2').value) {
    show(msg, 'error', '两次输入的新密码不一致');
    return;
  }
  $('change-submit').disabled = true;
  try {
    await api('POST', '/api/auth/password', { old_password: $('old-password').value, new_password: $('new-password').value });
    show(msg, 'ok', '密码已修改');
    go();
  } catch (e) {
    show(msg, 'error', e.message);
  } finally {
    $('change-submit').disabled = false;
  }
});

async function start() {
  let me = null;
  try { me = await api('GET', '/api/auth/me'); } catch (e) { me = null; }
  if (me && me.kind === 'staff') {
    setCsrf(me.csrf_token);
    if (me.user.must_change_password) return showChange('首次登录或密码已被重置/过期，请先设置新密码。');
    if (params.get('change') === '1') return showChange('');
  }
  if (params.get('expired') === '1') show(msg, 'info', '登录已过期，请重新登录。');
  only('login-form');
}

start();
