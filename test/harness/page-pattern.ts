// The page pattern of the workload (test/workload/workload.c), which the recorded fixtures of test/fixtures hold
// (their session.json gives the seed): word w of page p of the data area is a splitmix-style mix of (seed, p, w).
// Tests recompute it to check served bytes.
const M64 = (1n << 64n) - 1n;
const PAGE = 4096;

/** Word w of page p for seed. */
export function patternWord(seed: bigint, p: bigint, w: bigint): bigint {
  let z = (seed * 0x9e3779b97f4a7c15n + p * 0xbf58476d1ce4e5b9n + w * 0x94d049bb133111ebn + 1n) & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}

const pageCache = new Map<string, Buffer>();
/** Page p of the data area of a workload started with `seed`. */
export function dataPage(p: number, seed: bigint): Buffer {
  const key = `${seed}:${p}`;
  let page = pageCache.get(key);
  if (!page) {
    page = Buffer.alloc(PAGE);
    for (let w = 0; w < PAGE / 8; w++) page.writeBigUInt64LE(patternWord(seed, BigInt(p), BigInt(w)), w * 8);
    pageCache.set(key, page);
  }
  return page;
}
