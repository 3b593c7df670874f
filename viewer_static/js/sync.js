// Linked viewports: position of a slice along the stack's normal (Image Position Patient ·
// normal, not the index), nearest slice to a position, offsets between frames of reference.
// Pure.

import { cross, dot, normalize, sliceNormal } from './viewport_math.js';

export { cross, dot, normalize, sliceNormal };

export function positionsAlong(positions, normal) {
  return positions.map((p) => (p && normal ? dot(p, normal) : null));
}

/** Index of the slice nearest to `target` mm; -1 when no slice has a position. */
export function nearestIndex(positions, target) {
  let best = -1;
  let bestD = Infinity;
  for (let i = 0; i < positions.length; i++) {
    const p = positions[i];
    if (p === null || p === undefined) continue;
    const d = Math.abs(p - target);
    if (d < bestD) {
      bestD = d;
      best = i;
    }
  }
  return best;
}

/** True when two normals are (anti)parallel: the stacks can be synchronised by position. */
export function parallel(n1, n2, tol = 0.02) {
  if (!n1 || !n2) return false;
  return Math.abs(Math.abs(dot(n1, n2)) - 1) < tol;
}

/**
 * The slice a linked viewport should show. The leader shows a slice at `leaderPos` (3-vector);
 * the follower has slice positions `followerPositions` (3-vectors) and its own `offset` (mm
 * along the leader's normal, for frames of reference that differ). Index-free: both are
 * projected on the leader's normal.
 */
export function syncIndex(leaderPos, leaderNormal, leaderOffset, followerPositions, followerOffset) {
  if (!leaderPos || !leaderNormal) return -1;
  const target = dot(leaderPos, leaderNormal) - (leaderOffset || 0) + (followerOffset || 0);
  return nearestIndex(positionsAlong(followerPositions, leaderNormal), target);
}

/** Offset that makes the follower's current slice correspond to the leader's current one. */
export function alignOffset(leaderPos, leaderNormal, leaderOffset, followerPos) {
  return dot(followerPos, leaderNormal) - dot(leaderPos, leaderNormal) + (leaderOffset || 0);
}
