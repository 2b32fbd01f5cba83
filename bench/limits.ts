// Benchmark "limits": what this machine allows, measured by the suite itself (bench/limits/limits.cc), so that
// every migration figure can be read as a fraction of it:
//   memcpy          single-thread memcpy, GB/s
//   uffd fault      a userfaultfd fault served from local memory by a handler thread with UFFDIO_COPY (4 KiB):
//                   µs per fault (p50/p99) and MB/s when every page of an area faults in order
//   uffd bulk       the drain's install path alone: UFFDIO_COPY of 1 MiB at a time into an area nothing touches, MB/s
//   TCP             one stream between the two network namespaces (netns.ts) at each RTT, and on loopback:
//                   1-byte round trip p50/p99 and MB/s of a single stream for a few seconds
//   TCP + install   the same stream, each MiB received installed with UFFDIO_COPY on the receiving thread: a
//                   post-copy stream with no protocol, checksum or page server, the most a one-thread lazy-pages
//                   daemon can take in (MB/s, best of 3); and with two threads, one receiving, one installing
// The migration benchmark reuses these numbers (measureLimits() is cached per process).
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../src/paths.js';
import type { TwoHosts } from '../test/harness/netns.js';
import { createTwoHosts } from '../test/harness/netns.js';
import { markdownTable } from './lib/report.js';
import type { BenchContext, Benchmark } from './lib/types.js';

export interface TcpLimit {
  where: string;
  rttMs: number;
  rttP50Us: number;
  rttP99Us: number;
  MBs: number;
  /** The same stream received and installed (UFFDIO_COPY) by one thread: best of 3, MB/s. */
  installMBs: number;
  /** The same with one thread receiving and another installing: best of 3, MB/s. */
  install2MBs: number;
}

export interface Limits {
  memcpyGBs: number;
  uffd: { p50Us: number; p99Us: number; meanUs: number; MBs: number; pages: number };
  /** Best of 3 fresh areas, and the first of them alone (on a VM with free page reporting, pages the host must back again). */
  uffdBulk: { MBs: number; firstMBs: number; chunkBytes: number };
  tcp: TcpLimit[];
}

/** Builds bench/limits/limits.cc once per source version into build/limits/. */
export function buildLimits(): string {
  const source = path.join(repoRoot(), 'bench', 'limits', 'limits.cc');
  const hash = createHash('sha256').update(fs.readFileSync(source)).digest('hex').slice(0, 12);
  const binary = path.join(repoRoot(), 'build', 'limits', `limits-${hash}`);
  if (fs.existsSync(binary)) return binary;
  fs.mkdirSync(path.dirname(binary), { recursive: true });
  const tmp = `${binary}.tmp-${process.pid}`;
  execFileSync('g++', ['-O2', '-std=c++17', '-pthread', '-o', tmp, source], { stdio: ['ignore', 'pipe', 'pipe'] });
  fs.renameSync(tmp, binary);
  return binary;
}

function json(args: string[], netns?: string): Record<string, number> {
  const [file, argv] = netns ? ['nsenter', [`--net=/run/netns/${netns}`, '--', ...args]] : [args[0], args.slice(1)];
  const out = execFileSync(file, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
  return JSON.parse(out.trim().split('\n').at(-1)!);
}

/** One TCP measurement from `client` netns to a limits tcp-server in `server` netns (undefined: this netns). */
export async function measureTcp(where: string, rttMs: number, seconds: number, installMiB: number, address: string, server?: string, client?: string): Promise<TcpLimit> {
  const binary = buildLimits();
  const port = 47000 + (process.pid % 1000);
  const args = [binary, 'tcp-server', String(port)];
  const child = server ? spawn('nsenter', [`--net=/run/netns/${server}`, '--', ...args], { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn(args[0], args.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`limits tcp-server not ready: ${out}`)), 10_000);
      child.stdout!.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('ready')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
      child.on('exit', () => reject(new Error(`limits tcp-server exited: ${out}`)));
    });
    const r = json([binary, 'tcp-client', address, String(port), String(seconds)], client);
    const install = (threads: number) => {
      let best = 0;
      for (let i = 0; i < 3; i++) best = Math.max(best, json([binary, 'tcp-uffd-client', address, String(port), String(installMiB), String(threads)], client).MBs);
      return best;
    };
    return { where, rttMs, rttP50Us: r.rttP50Us, rttP99Us: r.rttP99Us, MBs: r.MBs, installMBs: install(1), install2MBs: install(2) };
  } finally {
    child.removeAllListeners('exit');
    child.kill('SIGKILL');
  }
}

let cached: Limits | undefined;

/** memcpy, uffd and TCP (loopback, and between the namespaces at each RTT asked for); cached per process. */
export async function measureLimits(ctx: BenchContext, rtts: number[], hosts?: TwoHosts): Promise<Limits> {
  if (cached && rtts.every((r) => cached!.tcp.some((t) => t.where === 'veth' && t.rttMs === r))) return cached;
  const binary = buildLimits();
  const seconds = ctx.quick ? 1 : 3;
  const mem = json([binary, 'memcpy', ctx.quick ? '128' : '512']);
  const uffd = json([binary, 'uffd', ctx.quick ? '64' : '256']);
  const bulk = json([binary, 'uffd-bulk', ctx.quick ? '128' : '512', '1024']);
  const installMiB = ctx.quick ? 128 : 512;
  const tcp: TcpLimit[] = [await measureTcp('loopback', 0, seconds, installMiB, '127.0.0.1')];
  const own = hosts ?? createTwoHosts({ id: `l${process.pid}` });
  const before = own.rttMs;
  try {
    for (const rtt of rtts) {
      await own.setRtt(rtt);
      tcp.push(await measureTcp('veth', rtt, seconds, installMiB, own.sourceAddress, own.source, own.destination));
    }
  } finally {
    if (hosts) await own.setRtt(before);
    else own.destroy();
  }
  cached = {
    memcpyGBs: mem.GBs,
    uffd: { p50Us: uffd.p50Us, p99Us: uffd.p99Us, meanUs: uffd.meanUs, MBs: uffd.MBs, pages: uffd.pages },
    uffdBulk: { MBs: bulk.MBs, firstMBs: bulk.firstMBs, chunkBytes: bulk.chunk },
    tcp,
  };
  ctx.log(`limits: memcpy ${mem.GBs.toFixed(1)} GB/s; uffd fault p50 ${uffd.p50Us.toFixed(1)} µs (${uffd.MBs.toFixed(0)} MB/s), bulk ${bulk.MBs.toFixed(0)} MB/s; ${tcp.map((t) => `${t.where} ${t.rttMs} ms: ${t.MBs.toFixed(0)} MB/s (installed ${t.installMBs.toFixed(0)}, two threads ${t.install2MBs.toFixed(0)}) rtt ${t.rttP50Us.toFixed(0)} µs`).join('; ')}`);
  return cached;
}

export function limitsMarkdown(limits: Limits): string {
  const rows = [
    ['memcpy, one thread', `${limits.memcpyGBs.toFixed(2)} GB/s`, ''],
    ['userfaultfd fault from local memory (UFFDIO_COPY 4 KiB)', `p50 ${limits.uffd.p50Us.toFixed(1)} µs, p99 ${limits.uffd.p99Us.toFixed(1)} µs`, `${limits.uffd.MBs.toFixed(0)} MB/s over ${limits.uffd.pages} faults`],
    [`UFFDIO_COPY of ${limits.uffdBulk.chunkBytes / 1024} KiB at a time, nothing faulting (the drain's install alone)`, '', `${limits.uffdBulk.MBs.toFixed(0)} MB/s (best of 3 areas; the first ${limits.uffdBulk.firstMBs.toFixed(0)} MB/s)`],
    ...limits.tcp.map((t) => [
      t.where === 'loopback' ? 'TCP, loopback' : `TCP between the namespaces, ${t.rttMs} ms RTT added`,
      `RTT p50 ${(t.rttP50Us / 1000).toFixed(3)} ms, p99 ${(t.rttP99Us / 1000).toFixed(3)} ms`,
      `${t.MBs.toFixed(0)} MB/s, one stream; ${t.installMBs.toFixed(0)} MB/s received and installed by one thread, ${t.install2MBs.toFixed(0)} MB/s by two`,
    ]),
  ];
  return markdownTable(['limit', 'latency', 'throughput'], rows);
}

export const RTTS_MS = [0, 0.5, 5];

export const limitsBenchmark: Benchmark = {
  name: 'limits',
  description: 'what the machine allows: memcpy, a userfaultfd fault from local memory, bulk UFFDIO_COPY, TCP on loopback and between the namespaces',
  estimate: (ctx) => (ctx.quick ? '~15 s' : '~40 s'),
  async run(ctx) {
    const limits = await measureLimits(ctx, RTTS_MS);
    return {
      name: 'limits',
      description: limitsBenchmark.description,
      comparisons: [],
      summary: limitsMarkdown(limits),
      data: limits,
      notes: [
        'bench/limits/limits.cc; TCP between the namespaces goes over the veth of test/harness/netns.ts with its delay (netem, or netdelay on kernels without sch_netem), MTU 64000.',
      ],
    };
  },
};
