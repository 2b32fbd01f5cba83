// A bounded mutation fuzzer for test/fuzz/images.fuzz.ts: libFuzzer-style mutations (bit flips, byte and
// integer edits at interesting values, erase/insert/duplicate runs, truncation, cross-over of two inputs) of
// seed images from the real CRIU dumps, for a given time. Not coverage-guided: Jazzer.js, the coverage-guided
// choice, cannot run on this Debian (its 4.0.0 prebuilt addon needs glibc 2.38, bookworm has 2.36; 2.1.0
// downloads compiler-rt at install). Usage: node dist/test/fuzz/run-images.js <seconds> <corpus dir> <out dir>
// Exits 1 and writes crash-<sha1> on the first input that throws anything but an ImageError, takes over 10 s
// twice in a row (libFuzzer's -timeout, as for the native targets), or grows the heap past 512 MiB.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fuzz } from './images.fuzz.js';

const [secondsArg, corpusDir, outDir] = process.argv.slice(2);
const seconds = Number(secondsArg ?? 60);
const seeds: Buffer[] = fs.readdirSync(corpusDir).map((f) => fs.readFileSync(path.join(corpusDir, f)));
if (seeds.length === 0) throw new Error(`no seeds in ${corpusDir}`);

let rng = 0x9e3779b9 ^ Date.now();
function rand(n: number): number {
  rng ^= rng << 13;
  rng ^= rng >>> 17;
  rng ^= rng << 5;
  return (rng >>> 0) % n;
}
const INTERESTING = [0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff];

function mutate(input: Buffer): Buffer {
  let b = Buffer.from(input);
  const rounds = 1 + rand(4);
  for (let r = 0; r < rounds; r++) {
    const at = b.length ? rand(b.length) : 0;
    switch (rand(9)) {
      case 0:
        if (b.length) b[at] ^= 1 << rand(8);
        break;
      case 1:
        if (b.length) b[at] = rand(256);
        break;
      case 2: {
        const v = INTERESTING[rand(INTERESTING.length)];
        const width = [1, 2, 4][rand(3)];
        if (at + width <= b.length) b.writeUIntLE(v % 2 ** (8 * width), at, width);
        break;
      }
      case 3: // a protobuf varint of an interesting size
        if (at + 5 <= b.length) b.set([0xff, 0xff, 0xff, 0xff, 0x0f], at);
        break;
      case 4:
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rand(64)))]);
        break;
      case 5:
        b = Buffer.concat([b.subarray(0, at), Buffer.from(Array.from({ length: 1 + rand(16) }, () => rand(256))), b.subarray(at)]);
        break;
      case 6: {
        const len = 1 + rand(32);
        b = Buffer.concat([b.subarray(0, at), b.subarray(at, at + len), b.subarray(at)]);
        break;
      }
      case 7:
        b = b.subarray(0, rand(b.length + 1));
        break;
      default: {
        const other = seeds[rand(seeds.length)];
        const from = rand(other.length + 1);
        b = Buffer.concat([b.subarray(0, at), other.subarray(from, from + 1 + rand(256))]);
      }
    }
  }
  if (rand(8) === 0 && b.length) b[0] = rand(256); // another parser for the same bytes
  return b;
}

function save(input: Buffer, why: string): never {
  const name = path.join(outDir, `crash-${createHash('sha1').update(input).digest('hex')}`);
  fs.writeFileSync(name, input);
  console.error(`run-images: ${why}\n  input written to ${name}`);
  process.exit(1);
}

const deadline = performance.now() + seconds * 1000;
let executions = 0;
let slowest = 0;
const SLOW_MS = 10_000;
const corpus: Buffer[] = [...seeds];
for (const seed of seeds) fuzz(seed);
while (performance.now() < deadline) {
  const input = mutate(corpus[rand(corpus.length)]);
  const started = performance.now();
  try {
    fuzz(input);
  } catch (error) {
    save(input, `uncaught ${(error as Error).name}: ${(error as Error).message}\n${(error as Error).stack ?? ''}`);
  }
  executions++;
  const took = performance.now() - started;
  slowest = Math.max(slowest, took);
  if (took > SLOW_MS) {
    // On a shared machine a pause (GC, another job) is not a hang: the input is a finding only if it is slow again.
    const again = performance.now();
    try {
      fuzz(input);
    } catch {
      // judged above
    }
    if (performance.now() - again > SLOW_MS) save(input, `one input took over ${SLOW_MS / 1000} s, twice`);
  }
  if ((executions & 1023) === 0 && process.memoryUsage().heapUsed > 512 * 1024 * 1024) save(input, 'heap over 512 MiB');
  // Keep some mutants as parents (a cheap stand-in for coverage feedback: inputs that parse stay interesting).
  if (rand(64) === 0 && corpus.length < 4096) corpus.push(input);
}
console.log(`stat::number_of_executed_units: ${executions}`);
console.log(`run-images: ${executions} executions in ${seconds}s, ${seeds.length} seeds, slowest input ${slowest.toFixed(0)} ms, no finding`);
