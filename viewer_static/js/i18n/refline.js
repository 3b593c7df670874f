// Strings of the reference lines, the MPR of two exams and the rotatable crosshair (issue 18).
export default {
  'zh-CN': {
    'ws.reflines': '参考线', 'tip.reflines': '参考线：在同一坐标系的其他窗格中画出本图像平面的位置 (G)',
    'help.k.reflines': '显示/隐藏参考线',
    'mpr.oblique': '斜位', 'mpr.angle.reset': '复位角度',
    'tip.mpr.rotate': '拖动十字线上的圆点（或按住 Shift 拖动）旋转冠状/矢状平面；点击复位角度恢复正交',
    'mpr.exam': '检查 {date}{offset}', 'mpr.offset': '（偏移 {mm} mm）',
  },
  en: {
    'ws.reflines': 'Reference lines', 'tip.reflines': 'Reference lines: where each pane\'s image plane cuts the other panes of the same frame of reference (G)',
    'help.k.reflines': 'Show/hide the reference lines',
    'mpr.oblique': 'Oblique', 'mpr.angle.reset': 'Reset angle',
    'tip.mpr.rotate': 'Drag a dot on the crosshair (or Shift-drag) to turn the coronal/sagittal planes; Reset angle makes them orthogonal again',
    'mpr.exam': 'Exam {date}{offset}', 'mpr.offset': ' (offset {mm} mm)',
  },
};
