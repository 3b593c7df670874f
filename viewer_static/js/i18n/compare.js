// Strings of the workspace's comparison of N exams, hanging protocol and per-pane reports:
// added to the viewer's t() by workspace.js.
export default {
  'zh-CN': {
    'cmp.current': '本次',
    'cmp.prior': '既往',
    'cmp.report.exam': '所属检查',
    'cmp.capped': '最多可同时对比 {max} 个检查，已显示前 {max} 个（共选 {n} 个）。',
  },
  en: {
    'cmp.current': 'Current',
    'cmp.prior': 'Prior',
    'cmp.report.exam': 'Exam',
    'cmp.capped': 'At most {max} exams can be compared at once: showing the first {max} of {n}.',
  },
};
