// Length measurement, pixel-spacing aware. Pure.

/** Length in mm between two source-pixel points; spacing = [row, col] mm or null. */
export function lengthMm(p, q, spacing) {
  if (!spacing) return null;
  const dx = (q.x - p.x) * spacing[1];
  const dy = (q.y - p.y) * spacing[0];
  return Math.hypot(dx, dy);
}

export function lengthPx(p, q) {
  return Math.hypot(q.x - p.x, q.y - p.y);
}

/** Label: "12.3 mm", or "45 px" when the image has no pixel spacing. */
export function formatLength(p, q, spacing) {
  const mm = lengthMm(p, q, spacing);
  if (mm === null) return `${Math.round(lengthPx(p, q))} px`;
  return `${mm.toFixed(1)} mm`;
}
