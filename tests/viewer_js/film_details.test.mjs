import test from 'node:test';
import assert from 'node:assert/strict';
import { countKind } from '../../viewer_static/js/viewport.js';
import { chinaTime, downloadUrl, cleanCode } from '../../viewer_static/js/film_extras.js';

const inst = (frames = 1) => ({ sop_uid: '1.2', frames });

test('pictures are counted as pictures, cine as frames, stacks as slices', () => {
  for (const m of ['ES', 'SM', 'XC', 'OP', 'GM']) {
    assert.equal(countKind({ modality: m, instances: [inst(), inst()] }), 'picture', m);
    assert.equal(countKind({ modality: m, instances: [inst()] }), 'picture', m);
  }
  assert.equal(countKind({ modality: 'US', instances: [inst(), inst(), inst()] }), 'picture');
  assert.equal(countKind({ modality: 'US', instances: [inst(32)] }), 'frame');
  assert.equal(countKind({ modality: 'CT', instances: [inst(), inst()] }), 'slice');
  assert.equal(countKind({ modality: 'XA', instances: [inst(20)] }), 'frame');
  // the study's modality when the series has none
  assert.equal(countKind({ instances: [inst()] }, 'es'), 'picture');
  assert.equal(countKind({ instances: [] }, 'CT'), 'slice');
});

test('expiry in China time', () => {
  assert.equal(chinaTime('2026-07-15T16:30:00Z'), '2026-07-16 00:30');
  assert.equal(chinaTime('2026-07-15T16:30:00.123456Z'), '2026-07-16 00:30');
  assert.equal(chinaTime('2026-12-31T15:59:59Z'), '2026-12-31 23:59');
  assert.equal(chinaTime('2026-07-15T08:00:00+08:00'), '2026-07-15 08:00');
  assert.equal(chinaTime('2026-07-15T08:00:00'), '2026-07-15 16:00'); // no zone: UTC
  assert.equal(chinaTime('soon'), '');
  assert.equal(chinaTime(null), '');
});

test('download URLs and access codes', () => {
  assert.equal(downloadUrl('study', '1.2.3'), '/api/download/studies/1.2.3.zip');
  assert.equal(downloadUrl('series', '1.2.3', '4.5'), '/api/download/studies/1.2.3/series/4.5.zip');
  assert.equal(downloadUrl('image', '1.2.3', '4.5', '6.7'), '/api/download/studies/1.2.3/series/4.5/instances/6.7.zip');
  assert.equal(cleanCode(' 123 456 '), '123456');
  assert.equal(cleanCode('12345'), null);
  assert.equal(cleanCode('12345a'), null);
});
