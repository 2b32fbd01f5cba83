// A/B of two `lazyd lazy-pages` flag sets in one migration flow, alternating (A B, B A, ...), on the bench's two
// network namespaces, CRIU 4.2.1, a workload reading its memory in order:
//   node dist/bench/flag-ab.js RTT_MS MIB PAIRS 'FLAGS A' 'FLAGS B' [SOURCE (default lazyd-relay)] [WORKLOAD: seq (default),
//   idle, random or hot, as in the migration benchmark]
// Prints each run and the medians of downtime, dump, restore, all pages present (ms) and the daemon-reported fault
// service p50/p99 (µs). For experiments on one flag; `npm run bench` is the suite.
import path from 'node:path';
import { runLazyMigration, type SourceKind, type WorkloadOptions } from '../test/harness/index.js';
import { readLazydLatency } from './lib/daemon.js';
import { createTwoHosts } from '../test/harness/netns.js';
import { median } from './lib/stats.js';

const [rtt, mib, pairs, a = '', b = '', source = 'lazyd-relay', touch = 'seq'] = process.argv.slice(2);
if (!rtt || !mib || !pairs) {
  console.error("usage: node dist/bench/flag-ab.js RTT_MS MIB PAIRS 'FLAGS A' 'FLAGS B' [SOURCE]");
  process.exit(2);
}
type Figures = Record<'down' | 'dump' | 'restore' | 'all' | 'faultP50' | 'faultP99', number>;
const seed = 1000 + Number(mib);
const WORKLOADS: Record<string, WorkloadOptions> = {
  seq: { mib: Number(mib), order: 'seq', seed, intervalMs: 0 },
  idle: { mib: Number(mib), order: 'seq', seed, hotPct: 0, intervalMs: 20 },
  random: { mib: Number(mib), order: 'random', seed, intervalMs: 0 },
  hot: { mib: Number(mib), order: 'random', seed, hotPct: 10, intervalMs: 0 },
};
const workload = WORKLOADS[touch];
if (!workload) {
  console.error(`unknown workload ${touch}: one of ${Object.keys(WORKLOADS).join(', ')}`);
  process.exit(2);
}
const hosts = createTwoHosts();
const runs: Record<'A' | 'B', Figures[]> = { A: [], B: [] };
try {
  await hosts.setRtt(Number(rtt));
  for (let i = 0; i < Number(pairs); i++) {
    const order: ['A' | 'B', string][] = i % 2 ? [['B', b], ['A', a]] : [['A', a], ['B', b]];
    for (const [name, flags] of order) {
      try {
        let lat: ReturnType<typeof readLazydLatency>;
        const r = await runLazyMigration({
          criuVersion: '4.2.1',
          server: source as SourceKind,
          daemon: 'lazyd',
          preStartDaemon: source === 'lazyd-relay',
          daemonArgs: flags.split(' ').filter(Boolean),
          workload,
          onRestored: (restored) => {
            lat = readLazydLatency(path.join(restored.dstDir, 'lazy-pages.log'));
          },
          network: { source: hosts.source, destination: hosts.destination, sourceAddress: hosts.sourceAddress },
          timeouts: { allPagesMs: 60_000, dumpMs: 180_000, passesMs: 120_000, restoreMs: 120_000 },
        });
        const f: Figures = { down: r.resumeGapMs, dump: r.dumpMs, restore: r.restoreMs, all: r.pagesInstalledMs, faultP50: lat?.p50Us ?? NaN, faultP99: lat?.p99Us ?? NaN };
        runs[name].push(f);
        console.log(name, Object.entries(f).map(([k, v]) => `${k}=${Math.round(v)}`).join(' '));
      } catch (error) {
        console.log(name, 'failed:', (error as Error).message.split('\n')[0]);
      }
    }
  }
} finally {
  hosts.destroy();
}
for (const name of ['A', 'B'] as const) {
  const fs = runs[name];
  if (!fs.length) continue;
  const keys = Object.keys(fs[0]!) as (keyof Figures)[];
  console.log(`${name} (${name === 'A' ? a || 'defaults' : b || 'defaults'}) medians:`, keys.map((k) => `${k}=${Math.round(median(fs.map((f) => f[k])))}`).join(' '));
}
