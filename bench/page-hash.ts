// Benchmark "page-hash" (opt-in: `npm run bench -- --only page-hash`): lazyd replicate's per-epoch hashing of a
// pages image — a SHA-256 of every 4 KiB page and of the whole file — on one 512 MiB file of random bytes in
// /dev/shm (tmpfs, where --dump-dir belongs), alternating per round:
//   node-crypto  what replicate did before: node:crypto, one createHash per page (test/harness/page-hashes-reference.ts)
//   native       the addon's hashPages (native/core/util/page_hashes.h): GnuTLS/nettle SHA-256, 4 MiB preads,
//                on a libuv worker thread
// Each run hashes the file once and checks the result equals the other configuration's; the figures: MB/s of file
// (10^6 bytes per second of wall time), the run time, and the CPU time of the whole process (every thread: the
// addon's two) with MB per CPU-second — on a shared machine the wall rate is what the CPU left over allows, the
// CPU figure is the cost. --quick: 64 MiB, 2 rounds.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { hashPages } from '../src/replicate/page-delta.js';
import { hashPagesNodeCrypto } from '../test/harness/page-hashes-reference.js';
import { runAlternating } from './lib/alternate.js';
import { makeComparison, markdownTable, toRunRecords, type FigureDef, type FigureValues } from './lib/report.js';
import type { Benchmark } from './lib/types.js';

const CONFIGS = ['node-crypto', 'native'] as const;
type Config = (typeof CONFIGS)[number];
const PAGE = 4096;

const FIGURES: FigureDef[] = [
  { key: 'mbPerS', label: 'hash rate', unit: 'MB/s', digits: 0, lowerIsBetter: false },
  { key: 'ms', label: 'one file', unit: 'ms', digits: 0 },
  { key: 'cpuMs', label: 'CPU time, all threads', unit: 'ms', digits: 0 },
  { key: 'mbPerCpuS', label: 'per CPU-second', unit: 'MB', digits: 0, lowerIsBetter: false },
];

function writeRandomFile(file: string, bytes: number): void {
  const fd = fs.openSync(file, 'w', 0o600);
  try {
    for (let done = 0; done < bytes; done += 16 << 20) fs.writeSync(fd, randomBytes(Math.min(16 << 20, bytes - done)));
  } finally {
    fs.closeSync(fd);
  }
}

export const pageHashBenchmark: Benchmark = {
  name: 'page-hash',
  description: "lazyd replicate's page hashing of a 512 MiB pages image: node:crypto per page vs the addon's native SHA-256, alternating",
  optIn: true,
  estimate: (ctx) => (ctx.quick ? '~10 s' : '~1 min'),
  async run(ctx) {
    const mib = ctx.quick ? 64 : 512;
    const rounds = ctx.quick ? 2 : Math.max(ctx.pairs, 5);
    const dir = fs.mkdtempSync(path.join('/dev/shm', 'lazyd-bench-page-hash-'));
    try {
      const file = path.join(dir, 'pages-1.img');
      writeRandomFile(file, mib << 20);
      const results = new Map<Config, string>();
      const outcomes = await runAlternating<FigureValues, Config>({
        configs: CONFIGS,
        rounds,
        log: ctx.log,
        settleMs: 200,
        describe: (v) => `${v.figures.mbPerS?.toFixed(0)} MB/s, ${v.figures.ms?.toFixed(0)} ms, CPU ${v.figures.cpuMs?.toFixed(0)} ms`,
        run: async (config) => {
          const cpu = process.cpuUsage();
          const started = performance.now();
          const h = config === 'native' ? await hashPages(file, PAGE) : hashPagesNodeCrypto(file, PAGE);
          const ms = performance.now() - started;
          const used = process.cpuUsage(cpu);
          const cpuMs = (used.user + used.system) / 1000;
          const digest = `${h.sha256}/${h.hashes.toString('base64').length}/${h.hashes.subarray(0, 64).toString('hex')}`;
          results.set(config, digest);
          const other = results.get(config === 'native' ? 'node-crypto' : 'native');
          if (other !== undefined && other !== digest) throw new Error(`${config} hashed the file differently from the other configuration`);
          const mb = (mib * 1048576) / 1e6;
          return { figures: { mbPerS: mb / (ms / 1000), ms, cpuMs, mbPerCpuS: mb / (cpuMs / 1000) } };
        },
      });
      const comparison = makeComparison({
        title: `${mib} MiB of random bytes on tmpfs, 4 KiB pages`,
        params: { mib, pageSize: PAGE, rounds },
        configs: [...CONFIGS],
        figures: FIGURES,
        runs: toRunRecords(outcomes),
      });
      const row = (key: string, label: string) => {
        const f = comparison.summary.find((s) => s.key === key)!;
        return [label, f.perConfig['node-crypto'].median.toFixed(0), f.perConfig.native.median.toFixed(0), f.ratioOfMedians.toFixed(2)];
      };
      const summary = markdownTable(
        [`${mib} MiB`, 'node:crypto per page', 'native', 'native ÷ node:crypto'],
        [row('mbPerS', 'rate (MB/s)'), row('mbPerCpuS', 'MB per CPU-second')],
        ['l', 'r', 'r', 'r'],
      );
      return {
        name: 'page-hash',
        description: pageHashBenchmark.description,
        comparisons: [comparison],
        summary: `Medians over the rounds:\n\n${summary}`,
        notes: [
          'Each run: a SHA-256 of every 4 KiB page and of the whole file, as one lazyd replicate epoch does per pages image in --tracking compare; the file is in the page cache (tmpfs), so this is hashing and copying, no disk.',
          'Both configurations produce the same digests (checked every run).',
          'CPU time: process.cpuUsage() around the run (user + system, every thread of the process).',
        ],
      };
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
};
