// Hanging protocols of the comparison workspace. Pure.
//  - N exams chosen for comparison: 1 → 1×1, 2 → 1×2, 3–4 → 2×2 (at most MAX_PANES).
//  - One exam opened alone: current | prior when the patient has an earlier exam of the same
//    modality and body part (the series' Body Part Examined, as the catalog stores it).

export const MAX_PANES = 4;

/** Layout name for `n` panes (more than MAX_PANES are not shown: the caller caps). */
export function layoutFor(n) {
  if (n <= 1) return '1x1';
  if (n === 2) return '1x2';
  return '2x2';
}

/** First component of a study's modality ("CT\\SR" → "CT"), upper case. */
export function primaryModality(study) {
  return String((study && study.modality) || '').split('\\')[0].trim().toUpperCase();
}

/** Body parts of a study: the non-empty Body Part Examined of its series, upper case. */
export function bodyParts(study) {
  const out = new Set();
  for (const se of (study && study.series) || []) {
    const p = String(se.body_part || '').trim().toUpperCase();
    if (p) out.add(p);
  }
  return out;
}

/**
 * The prior of `study` among `studies` (the same patient's exams): the newest exam dated
 * before it with the same modality and a body part in common, that has a series to show;
 * null when there is none. Exams without a date or a body part never match (no guess).
 */
export function findPrior(study, studies) {
  const mine = bodyParts(study);
  const mod = primaryModality(study);
  if (!study || !study.exam_date || !mod || !mine.size) return null;
  let best = null;
  for (const s of studies || []) {
    if (!s || s === study || s.study_uid === study.study_uid || !s.exam_date) continue;
    if (!(s.exam_date < study.exam_date) || primaryModality(s) !== mod) continue;
    if (![...bodyParts(s)].some((p) => mine.has(p))) continue;
    if (!(s.series && s.series.length)) continue;
    if (!best || s.exam_date > best.exam_date) best = s;
  }
  return best;
}
