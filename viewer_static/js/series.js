// A series as a stack of frames to scroll through. Pure.
import { dot, sliceNormal } from './viewport_math.js';

/**
 * Items [{sop, frame (1-based), instance, position [x,y,z]|null}] of a series, ordered by
 * position along the slice normal, head first (descending), when every instance has a
 * position and they share an orientation; else by instance number. Multi-frame instances
 * contribute one item per frame.
 */
export function buildStack(series) {
  const insts = [...(series.instances || [])];
  const normal = insts.length ? sliceNormal(insts[0].image_orientation) : null;
  const positional = normal && insts.length > 1 && insts.every((i) => i.image_position && i.frames === 1);
  if (positional) {
    insts.sort((a, b) => dot(b.image_position, normal) - dot(a.image_position, normal)
      || a.instance_number - b.instance_number);
  } else {
    insts.sort((a, b) => (a.instance_number ?? 0) - (b.instance_number ?? 0));
  }
  const items = [];
  for (const inst of insts) {
    const n = Math.max(1, inst.frames || 1);
    for (let f = 1; f <= n; f++) {
      items.push({ sop: inst.sop_uid, frame: f, instance: inst, position: n === 1 ? inst.image_position : null });
    }
  }
  return { items, normal: positional ? normal : null, multiframe: insts.length === 1 && (insts[0].frames || 1) > 1 };
}

/** Geometry of an item for viewport math. */
export function imageGeometry(inst) {
  const sp = inst.pixel_spacing;
  return { cols: inst.columns, rows: inst.rows, aspect: sp && sp[1] > 0 ? sp[0] / sp[1] : 1 };
}

export function isColor(inst) {
  return !/^MONOCHROME/.test(inst.photometric || '');
}

/** Series sorted for a strip: by series number. */
export function sortedSeries(study) {
  return [...(study.series || [])].sort((a, b) => (a.series_number ?? 0) - (b.series_number ?? 0));
}

/** Exams of a patient by date, newest first (R1.9: records listed by time). */
export function byDateDesc(studies) {
  return [...studies].sort((a, b) => String(b.exam_date || '').localeCompare(String(a.exam_date || '')));
}
