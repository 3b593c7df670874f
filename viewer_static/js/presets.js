// Window/level: CT presets, drag → window, and the instant CSS approximation of a window
// change applied to an image rendered with another window. Pure.

export const CT_PRESETS = [
  { id: 'default', key: 'preset.default' },
  { id: 'lung', key: 'preset.lung', c: -600, w: 1500 },
  { id: 'mediastinum', key: 'preset.mediastinum', c: 40, w: 400 },
  { id: 'bone', key: 'preset.bone', c: 400, w: 1800 },
  { id: 'brain', key: 'preset.brain', c: 40, w: 80 },
  { id: 'abdomen', key: 'preset.abdomen', c: 50, w: 350 },
];

export function presetsFor(modality) {
  return modality === 'CT' ? CT_PRESETS : CT_PRESETS.slice(0, 1);
}

/** The window of a preset; 'default' is the file's own (fileWindow {c, w} or null). */
export function presetWindow(id, fileWindow) {
  if (id === 'default') return fileWindow ? { ...fileWindow } : null;
  const p = CT_PRESETS.find((x) => x.id === id);
  return p ? { c: p.c, w: p.w } : null;
}

/**
 * Window after a drag of (dx, dy) CSS px from `start`: right widens, down raises the centre
 * (as on most workstations). Sensitivity follows the width so fine windows stay controllable.
 */
export function dragWindow(start, dx, dy, sensitivity = 1) {
  const k = (Math.max(start.w, 10) / 300) * sensitivity;
  const w = Math.max(1, start.w + dx * 2 * k);
  const c = start.c + dy * k;
  return { c: Math.round(c * 10) / 10, w: Math.round(w * 10) / 10 };
}

/**
 * Linear map that turns pixels displayed with window `from` into (approximately) window `to`:
 * v' = slope * v + offset, with v in 0..1. Exact where `from` did not clip.
 */
export function windowMap(from, to) {
  const slope = from.w / to.w;
  const offset = (from.c - to.c) / to.w + (1 - slope) / 2;
  return { slope, offset };
}

/**
 * CSS filter that approximates `to` on an image rendered with `from`; inversion too.
 * contrast(k) then brightness(b): v → b·(k·v + (1−k)/2) = slope·v + offset with
 * b = slope + 2·offset and k = slope / b.
 */
export function cssFilter(from, to, renderedInvert = false, wantInvert = false) {
  const parts = [];
  if (renderedInvert !== wantInvert) parts.push('invert(1)');
  if (from && to && (from.c !== to.c || from.w !== to.w)) {
    let { slope, offset } = windowMap(from, to);
    if (wantInvert) offset = 1 - slope - offset; // invert(1) runs first: map the inverted image
    const b = slope + 2 * offset;
    if (b > 0.001) {
      parts.push(`contrast(${round4(slope / b)})`, `brightness(${round4(b)})`);
    } else {
      parts.push('brightness(0)');
    }
  }
  return parts.length ? parts.join(' ') : 'none';
}

function round4(x) {
  return Math.round(x * 10000) / 10000;
}

export function windowParam(win) {
  return win ? `${round1(win.c)},${round1(win.w)}` : '';
}

function round1(x) {
  return Math.round(x * 10) / 10;
}

export function sameWindow(a, b) {
  if (!a || !b) return !a && !b;
  return Math.abs(a.c - b.c) < 0.05 && Math.abs(a.w - b.w) < 0.05;
}
