import test from 'node:test';
import assert from 'node:assert/strict';
import { MAX_PANES, layoutFor, findPrior, bodyParts, primaryModality } from '../../viewer_static/js/hanging.js';

const study = (uid, date, modality, parts, nSeries = 1) => ({
  study_uid: uid, exam_date: date, modality,
  series: parts.length ? parts.map((p) => ({ body_part: p })) : Array.from({ length: nSeries }, () => ({ body_part: '' })),
});

test('hanging: N exams → 1×1, 1×2, 2×2, at most 4 panes', () => {
  assert.equal(MAX_PANES, 4);
  assert.deepEqual([1, 2, 3, 4].map(layoutFor), ['1x1', '1x2', '2x2', '2x2']);
});

test('hanging: modality and body parts as the catalog stores them', () => {
  assert.equal(primaryModality({ modality: 'CT\\SR' }), 'CT');
  assert.deepEqual([...bodyParts({ series: [{ body_part: ' chest ' }, { body_part: '' }, { body_part: 'CHEST' }] })], ['CHEST']);
});

test('hanging: prior = newest earlier exam of the same modality and body part', () => {
  const cur = study('c', '2026-10-20', 'CT', ['CHEST']);
  const old1 = study('o1', '2025-01-02', 'CT', ['CHEST']);
  const old2 = study('o2', '2026-03-12', 'CT', ['CHEST', 'ABDOMEN']);
  const mr = study('m', '2026-06-01', 'MR', ['CHEST']);
  const head = study('h', '2026-07-01', 'CT', ['HEAD']);
  const later = study('l', '2026-11-01', 'CT', ['CHEST']);
  const all = [cur, old1, old2, mr, head, later];
  assert.equal(findPrior(cur, all), old2);
  assert.equal(findPrior(old2, all), old1);
  assert.equal(findPrior(old1, all), null, 'the oldest has no prior');
  assert.equal(findPrior(head, all), null, 'other body part');
  assert.equal(findPrior(mr, all), null, 'other modality');
});

test('hanging: no body part or no date or no images: no prior (no guess)', () => {
  const cur = study('c', '2026-10-20', 'CT', []);
  const old = study('o', '2026-03-12', 'CT', []);
  assert.equal(findPrior(cur, [cur, old]), null);
  const dated = study('d', '2026-10-20', 'CT', ['CHEST']);
  assert.equal(findPrior(dated, [dated, { ...study('x', null, 'CT', ['CHEST']) }]), null);
  assert.equal(findPrior(dated, [dated, { ...study('y', '2026-01-01', 'CT', ['CHEST']), series: [] }]), null);
  assert.equal(findPrior(dated, [dated, study('z', '2026-10-20', 'CT', ['CHEST'])]), null, 'same day: not a prior');
});
