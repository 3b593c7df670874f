// Strings of the WeChat pages (zh-CN default, en); the language choice is shared with the
// portal (js/lang.js).
import { strings } from '../js/lang.js';

const STRINGS = {
  'zh-CN': {
    title: '我的检查', people: '就诊人', add: '添加就诊人', current: '当前', switchTo: '切换',
    unbind: '解绑', unbindAsk: '确定解绑该就诊人？解绑后不再收到其报告通知。',
    notifyOn: '通知：开', notifyOff: '通知：关',
    bindTitle: '绑定就诊人', bindNote: '首次使用请验证身份，验证后本微信号即可直接查看检查与报告。',
    verifyTitle: '验证身份', verifyNote: '请验证身份后查看您的检查与报告。',
    hint: '可用的验证方式：{c}', phone: '手机号', sms: '短信验证码', send: '获取验证码',
    resend: '{s} 秒后重发', id: '身份证号', acc: '检查号', submit: '验证并绑定',
    submitPortal: '验证', cancel: '取消', exams: '检查（按时间）', none: '暂无检查',
    view: '查看影像', report: '报告PDF', noreport: '报告未出', noimages: '影像已关闭',
    sendDoctor: '发给医生', logout: '退出',
    sentTitle: '分享链接已生成', sentHow: '点击右上角“···”→“发送给朋友”，把链接发给医生；访问码请另行告知：',
    sentOutside: '把下面的链接和访问码发给医生：', valid: '有效期至 {t}，可打开 {n} 次',
    notConfigured: '本院尚未开通微信公众号功能，请使用身份信息验证。',
    fromMenu: '请从医院公众号菜单进入。', lang: 'English',
  },
  en: {
    title: 'My exams', people: 'Patients', add: 'Add a patient', current: 'current', switchTo: 'Switch',
    unbind: 'Unbind', unbindAsk: 'Unbind this patient? You will no longer get their report notices.',
    notifyOn: 'Notices: on', notifyOff: 'Notices: off',
    bindTitle: 'Bind a patient', bindNote: 'Verify once; afterwards this WeChat account opens the exams and reports directly.',
    verifyTitle: 'Verify your identity', verifyNote: 'Verify your identity to see your exams and reports.',
    hint: 'Accepted: {c}', phone: 'Mobile number', sms: 'SMS code', send: 'Send code',
    resend: 'Resend in {s} s', id: 'National ID number', acc: 'Accession number', submit: 'Verify and bind',
    submitPortal: 'Verify', cancel: 'Cancel', exams: 'Exams (by time)', none: 'No exams',
    view: 'View images', report: 'Report PDF', noreport: 'No report yet', noimages: 'Images switched off',
    sendDoctor: 'Send to a doctor', logout: 'Sign out',
    sentTitle: 'Share link ready', sentHow: 'Tap “···” at the top right → “Send to chat” to send the link to your doctor; tell them the access code separately:',
    sentOutside: 'Send this link and the access code to your doctor:', valid: 'Valid until {t}, {n} opens',
    notConfigured: 'WeChat is not enabled here; verify with your identity data instead.',
    fromMenu: "Open this page from the hospital's WeChat menu.", lang: '中文',
  },
};

/** Lookup and language choice are js/lang.js's (shared with the portal). */
export const t = strings(STRINGS);

export function isWechat(ua) { return /micromessenger/i.test(ua || ''); }

export { STRINGS };
