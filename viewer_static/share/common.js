// Shared helpers of the share and portal pages: their strings (zh-CN default, en; the
// lookup and language choice are js/lang.js), small DOM helpers. JSON calls are js/api.js's
// request(), re-exported as call(). No third-party code, no inline script or style.
import { strings, langButton as switcher } from '../js/lang.js';

export { currentLang, localMsg } from '../js/lang.js';
export { request as call, setCsrf, ApiError as HttpError } from '../js/api.js';

const STRINGS = {
  'zh-CN': {
    'title.share': '云胶片分享', 'title.portal': '我的云胶片', 'title.desk': '创建分享 · 打印凭条',
    'code.label': '请输入6位访问码', 'code.open': '打开', 'code.format': '访问码应为6位数字',
    'share.expires': '有效期至 {t}', 'share.reportonly': '此分享仅包含报告',
    'share.opens': '已打开 {o}/{m} 次', 'share.opening': '正在打开影像…',
    'share.portal': '验证身份，查看我的检查', 'share.card': '点击查看检查报告与影像（需访问码）', 'entry.title': '我的云胶片', 'entry.portal': '我的云胶片（验证身份）',
    'entry.link': '输入分享链接或分享码', 'entry.go': '打开分享', 'entry.bad': '请粘贴完整的分享链接（以 /s/ 开头的网址）',
    'entry.staff': '医护人员登录', 'entry.hint': '扫描检查凭条上的二维码，或粘贴收到的分享链接',
    'share.view': '查看报告与影像', 'share.download': '下载原始影像（DICOM）',
    'share.reverify': '下载前请再次输入访问码', 'share.confirm': '确认',
    'verify.title': '验证身份', 'verify.hint': '可用的验证方式：{c}',
    'verify.phone': '手机号', 'verify.sms': '短信验证码', 'verify.send': '获取验证码',
    'verify.resend': '{s} 秒后重发', 'verify.id': '身份证号', 'verify.acc': '检查号',
    'verify.submit': '验证', 'verify.again': '下载原始影像前请重新验证身份（10分钟内有效）',
    'me.info': '个人信息', 'me.exams': '我的检查（按时间）', 'me.shares': '我的分享',
    'me.downloads': '我的下载记录', 'me.logout': '退出',
    'exam.view': '查看', 'exam.report': '报告PDF', 'exam.download': '下载', 'exam.share': '分享',
    'exam.noimages': '影像已关闭', 'exam.noreport': '报告未出',
    'shares.none': '暂无分享', 'shares.opens': '已打开 {o}/{m} 次', 'shares.revoke': '撤销',
    'shares.revoked': '已撤销', 'shares.expired': '已过期', 'shares.exhausted': '次数已用完',
    'shares.locked': '访问码输错过多，暂时锁定', 'shares.locked.desk': '访问码输错过多，需核实身份后解锁',
    'shares.unlock': '解锁',
    'shares.new': '分享已创建：访问码 {code}', 'downloads.none': '暂无下载',
    'downloads.done': '完成', 'downloads.aborted': '未完成',
    'desk.opens': '可打开次数', 'desk.expires': '有效期', 'desk.images': '包含影像',
    'desk.download': '允许下载原始影像', 'desk.create': '创建分享', 'desk.print': '打印凭条',
    'desk.switch.on': '影像已开放（点击关闭）', 'desk.switch.off': '影像已关闭（点击开放）',
    'slip.title': '云胶片查看凭条', 'slip.scan': '微信或手机相机扫码，输入访问码查看',
    'slip.code': '访问码', 'slip.expires': '有效期至', 'slip.exam': '检查',
    'days': '{n} 天', 'lang': 'English', 'error': '出错了：{m}',
  },
  en: {
    'title.share': 'Cloud film share', 'title.portal': 'My cloud films', 'title.desk': 'Create a share · print the slip',
    'code.label': 'Enter the 6-digit access code', 'code.open': 'Open', 'code.format': 'The code has 6 digits',
    'share.expires': 'Valid until {t}', 'share.reportonly': 'This share holds the report only',
    'share.opens': 'Opened {o} of {m} times', 'share.opening': 'Opening the images…',
    'share.portal': 'Verify your identity to see my exams', 'share.card': 'Open to see the report and images (access code needed)', 'entry.title': 'My cloud films', 'entry.portal': 'My cloud films (verify identity)',
    'entry.link': 'Paste a share link', 'entry.go': 'Open the share', 'entry.bad': 'Paste the whole share link (an address containing /s/)',
    'entry.staff': 'Staff sign-in', 'entry.hint': 'Scan the QR code on your exam slip, or paste the share link you received',
    'share.view': 'View report and images', 'share.download': 'Download original images (DICOM)',
    'share.reverify': 'Enter the access code again to download', 'share.confirm': 'Confirm',
    'verify.title': 'Verify your identity', 'verify.hint': 'Accepted: {c}',
    'verify.phone': 'Mobile number', 'verify.sms': 'SMS code', 'verify.send': 'Send code',
    'verify.resend': 'Resend in {s} s', 'verify.id': 'National ID number', 'verify.acc': 'Accession number',
    'verify.submit': 'Verify', 'verify.again': 'Verify again before downloading (valid 10 minutes)',
    'me.info': 'Personal information', 'me.exams': 'My exams (by time)', 'me.shares': 'My shares',
    'me.downloads': 'My downloads', 'me.logout': 'Sign out',
    'exam.view': 'View', 'exam.report': 'Report PDF', 'exam.download': 'Download', 'exam.share': 'Share',
    'exam.noimages': 'Images switched off', 'exam.noreport': 'No report yet',
    'shares.none': 'No shares', 'shares.opens': 'Opened {o}/{m} times', 'shares.revoke': 'Revoke',
    'shares.revoked': 'Revoked', 'shares.expired': 'Expired', 'shares.exhausted': 'Used up',
    'shares.locked': 'Locked for a while after wrong codes',
    'shares.locked.desk': 'Locked after wrong codes: unlock once you have checked who is asking',
    'shares.unlock': 'Unlock',
    'shares.new': 'Share created: access code {code}', 'downloads.none': 'No downloads',
    'downloads.done': 'completed', 'downloads.aborted': 'incomplete',
    'desk.opens': 'Opens allowed', 'desk.expires': 'Valid for', 'desk.images': 'Include images',
    'desk.download': 'Allow original DICOM download', 'desk.create': 'Create share', 'desk.print': 'Print slip',
    'desk.switch.on': 'Images on (click to switch off)', 'desk.switch.off': 'Images off (click to switch on)',
    'slip.title': 'Cloud film slip', 'slip.scan': 'Scan with WeChat or the camera, then enter the access code',
    'slip.code': 'Access code', 'slip.expires': 'Valid until', 'slip.exam': 'Exam',
    'days': '{n} days', 'lang': '中文', 'error': 'Error: {m}',
  },
};

export const t = strings(STRINGS);

/** The language button of the share, portal and desk pages. */
export const langButton = (onChange) => switcher(t, 'lang', onChange);

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

/** 'YYYY-MM-DD HH:MM' in China standard time for a UTC ISO string. */
export function localTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const c = new Date(d.getTime() + 8 * 3600 * 1000);
  const p = (n) => String(n).padStart(2, '0');
  return `${c.getUTCFullYear()}-${p(c.getUTCMonth() + 1)}-${p(c.getUTCDate())} ${p(c.getUTCHours())}:${p(c.getUTCMinutes())}`;
}

export function codeInput(id) {
  const i = el('input', 'code-input');
  i.id = id;
  i.type = 'text';
  i.inputMode = 'numeric';
  i.autocomplete = 'one-time-code';
  i.maxLength = 6;
  i.pattern = '[0-9]{6}';
  return i;
}
