// The addon's page hashing (native/core/util/page_hashes.h via hashPages, src/replicate/page-delta.ts) against
// node:crypto's, one createHash per page (test/harness/page-hashes-reference.ts): random data of several sizes
// (empty, a partial last page, more than one 4 MiB read), a real pages image of a CRIU 4.1.1 dump, the whole-file
// hash alone, and the errors.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { changedRuns, hashPages, sha256File, sha256FileAsync } from '../../src/replicate/page-delta.js';
import { hashPagesNodeCrypto } from '../harness/page-hashes-reference.js';
import { fixturePath } from '../fixtures/fixtures.js';

const PAGE = 4096;

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-page-hashes-'));
}

test('native page hashes equal node:crypto per page on random data: empty, partial last page, several reads', async () => {
  const dir = tmp();
  try {
    for (const size of [0, 1, PAGE - 1, PAGE, PAGE + 1, 10 * PAGE + 77, (4 << 20) + 3 * PAGE + 5, 9 << 20]) {
      const file = path.join(dir, `r-${size}`);
      fs.writeFileSync(file, randomBytes(size));
      const native = await hashPages(file, PAGE);
      const reference = hashPagesNodeCrypto(file, PAGE);
      assert.equal(native.size, size);
      assert.equal(native.hashes.length, Math.ceil(size / PAGE) * 32, `${size} bytes: one hash per page`);
      assert.ok(native.hashes.equals(reference.hashes), `${size} bytes: the page hashes`);
      assert.equal(native.sha256, reference.sha256, `${size} bytes: the whole-file hash`);
      assert.equal(native.sha256, createHash('sha256').update(fs.readFileSync(file)).digest('hex'));
      assert.equal(await sha256FileAsync(file), native.sha256);
      assert.equal(sha256File(file), native.sha256);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('native page hashes equal node:crypto on a real pages image (CRIU 4.1.1 plain dump), and find one changed page', async () => {
  const file = fixturePath('4.1.1', 'plain-dump', 'images/pages-1.img');
  const native = await hashPages(file, PAGE);
  const reference = hashPagesNodeCrypto(file, PAGE);
  assert.ok(native.size > 100 * PAGE, 'the fixture holds a real amount of memory');
  assert.ok(native.hashes.equals(reference.hashes));
  assert.equal(native.sha256, reference.sha256);
  assert.deepEqual(changedRuns(native, reference), []);
  const dir = tmp();
  try {
    const copy = path.join(dir, 'pages-1.img');
    const bytes = fs.readFileSync(file);
    bytes[57 * PAGE + 9] ^= 0xff;
    fs.writeFileSync(copy, bytes);
    assert.deepEqual(changedRuns(await hashPages(copy, PAGE), native), [[57, 1]]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('native hashing rejects with the errno error naming the file; a bad page size is refused', async () => {
  await assert.rejects(hashPages('/nonexistent/pages-1.img', PAGE), (error: NodeJS.ErrnoException) => error.code === 'ENOENT' && /nonexistent\/pages-1\.img/.test(error.message));
  await assert.rejects(sha256FileAsync(os.tmpdir()), /cannot read/);
  await assert.rejects(hashPages(os.tmpdir(), 0), RangeError);
});
