// src/lazy-pages/image-preload.ts: the images are read ahead of the restore when they are there (at start, or once
// they are written), and what was read is used at hand-over only while no image file changed since.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { imagesSignature, ImagePreloader } from '../../src/lazy-pages/image-preload.js';
import { pollFor } from '../harness/process.js';

function imagesDir(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-preload-'));
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  return dir;
}

/** body in a fresh dir holding files, removed afterwards. */
async function inImagesDir(files: Record<string, string>, body: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = imagesDir(files);
  try {
    await body(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const IMAGES = { 'inventory.img': 'inv', 'pstree.img': 'tree', 'pagemap-1.img': 'pm' };

/** A preloader whose reads return the read's number and the inventory's bytes. */
function counting(dir: string) {
  const reads: string[] = [];
  const kept: number[] = [];
  const preloader = new ImagePreloader(
    dir,
    async () => {
      reads.push(fs.readFileSync(path.join(dir, 'inventory.img'), 'utf8'));
      return reads.length;
    },
    (n) => kept.push(n),
  );
  return { preloader, reads, kept };
}

test('images present at start: read once ahead, and that read is what the hand-over takes', async () => {
  await inImagesDir(IMAGES, async (dir) => {
    const { preloader, reads, kept } = counting(dir);
    preloader.start();
    await pollFor('the read ahead', 5000, () => (kept.length === 1 ? true : undefined));
    // Files that are not images (the log, the socket) change nothing.
    fs.writeFileSync(path.join(dir, 'lazy-pages.log'), 'a line\n');
    assert.equal(await preloader.take(), 1);
    assert.deepEqual(reads, ['inv']);
  });
});

test('an image rewritten after the read ahead: the hand-over gets nothing and reads the images itself', async () => {
  await inImagesDir(IMAGES, async (dir) => {
    const { preloader, kept } = counting(dir);
    preloader.start();
    await pollFor('the read ahead', 5000, () => (kept.length === 1 ? true : undefined));
    preloader.stop();  // no new read ahead: the change below is seen only by take()
    fs.writeFileSync(path.join(dir, 'pagemap-1.img'), 'pm2');
    assert.equal(await preloader.take(), undefined);
  });
});

test('an empty dir at start: nothing is read until the images are written, then they are read ahead', async () => {
  await inImagesDir({}, async (dir) => {
    const { preloader, reads, kept } = counting(dir);
    preloader.start();
    fs.writeFileSync(path.join(dir, 'lazy-pages.log'), 'a line\n');
    for (const [name, text] of Object.entries(IMAGES)) fs.writeFileSync(path.join(dir, name), text);
    await pollFor('the read ahead after the copy', 5000, () => (kept.length > 0 ? true : undefined));
    assert.equal(await preloader.take(), kept.at(-1));
    assert.ok(reads.every((inventory) => inventory === 'inv'));
  });
});

test('a read that fails is dropped; the hand-over reads the images itself', async () => {
  await inImagesDir(IMAGES, async (dir) => {
    let tried = 0;
    const preloader = new ImagePreloader(dir, async () => {
      tried++;
      throw new Error('truncated');
    });
    preloader.start();
    await pollFor('the failed read ahead', 5000, () => (tried > 0 ? true : undefined));
    assert.equal(await preloader.take(), undefined);
  });
});

test('the restore connects before anything was read: take() stops the read ahead and gets nothing', async () => {
  await inImagesDir(IMAGES, async (dir) => {
    const { preloader, reads } = counting(dir);
    assert.equal(await preloader.take(), undefined);
    preloader.start();  // after take(): does nothing
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(reads, []);
  });
});

test('imagesSignature: follows the parent links of a pre-dump chain, and sees a change anywhere in it', () => {
  const parent = imagesDir({ 'inventory.img': 'p', 'pagemap-1.img': 'p' });
  const dir = imagesDir(IMAGES);
  try {
    fs.symlinkSync(path.relative(dir, parent), path.join(dir, 'parent'));
    const before = imagesSignature(dir);
    assert.ok(before.includes(`${parent}/pagemap-1.img `), before);
    fs.writeFileSync(path.join(dir, 'restore.log'), 'not an image');
    assert.equal(imagesSignature(dir), before);
    fs.writeFileSync(path.join(parent, 'pagemap-1.img'), 'q');
    assert.notEqual(imagesSignature(dir), before);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(parent, { recursive: true, force: true });
  }
});
