// A harness extension for benchmarks: runLazyMigration() plus what the harness does not measure yet —
// the page server's CPU time (sampled from /proc while it runs), the requests `criu lazy-pages` sent (from its
// -v4 log, the same client whatever the server), and lazyd's own session counters (from its log).
// Candidates for test/harness: the lazy-pages request count (next to readLazyPagesSummary in criu.ts) and a server
// CPU figure in MigrationResult. lazyd's session lines are totalled by test/harness/session-log.ts.
import { readServedSessions, type ServedSessions } from '../../test/harness/session-log.js';
import fs from 'node:fs';
import path from 'node:path';
import { runLazyMigration, type MigrationOptions, type MigrationResult } from '../../test/harness/index.js';
import { sampleCpu, type CpuSampler } from './cpu.js';

export interface LazyPagesRequests {
  /** "Read <addr> <n> pages" lines: one per request the daemon sent to the page server. */
  requests: number;
  pages: number;
  /** Requests of a single page. */
  singlePage: number;
  largest: number;
  /** Requests for a page the daemon had just logged a "#PF at" for (the rest are background requests). */
  faults: number;
  /**
   * Round trips as the daemon's log shows them: from its "Read <addr>" line to the "uffd_copy: <addr>" line that
   * installs the reply (send request, server, receive reply; µs resolution of the log), in µs.
   */
  faultRttUs: number[];
  backgroundRttUs: number[];
}

const LOG_LINE = /^\((\d+)\.(\d+)\) (.*)$/;
const PF_RE = /: #PF at 0x([0-9a-f]+)/;
const READ_RE = /^\S+ Read ([0-9a-f]+) (\d+) pages$/;
const COPY_RE = /: uffd_copy: 0x([0-9a-f]+)\//;

/**
 * Reads the page-server requests of a `criu lazy-pages -v4` log: "(t) prP-N Read <addr> <n> pages" per request,
 * "uffd: ...: #PF at 0x<addr>" before a fault's request, "uffd: ...: uffd_copy: 0x<addr>/<bytes>" once the reply
 * is in. The same lines in CRIU 4.1.1 and 4.2.1.
 */
export function readLazyPagesRequests(logFile: string): LazyPagesRequests {
  const counts: LazyPagesRequests = { requests: 0, pages: 0, singlePage: 0, largest: 0, faults: 0, faultRttUs: [], backgroundRttUs: [] };
  let text: string;
  try {
    text = fs.readFileSync(logFile, 'latin1');
  } catch {
    return counts;
  }
  let lastFault: string | undefined;
  const pending = new Map<string, { us: number; fault: boolean }>();
  for (const line of text.split('\n')) {
    const m = LOG_LINE.exec(line);
    if (!m) continue;
    const us = Number(m[1]) * 1e6 + Number(m[2].padEnd(6, '0').slice(0, 6));
    const body = m[3];
    let r: RegExpExecArray | null;
    if ((r = READ_RE.exec(body))) {
      const n = Number(r[2]);
      const fault = r[1] === lastFault;
      lastFault = undefined;
      counts.requests++;
      counts.pages += n;
      if (n === 1) counts.singlePage++;
      if (n > counts.largest) counts.largest = n;
      if (fault) counts.faults++;
      pending.set(r[1], { us, fault });
    } else if ((r = PF_RE.exec(body))) {
      lastFault = r[1];
    } else if ((r = COPY_RE.exec(body))) {
      const request = pending.get(r[1]);
      if (request) {
        pending.delete(r[1]);
        (request.fault ? counts.faultRttUs : counts.backgroundRttUs).push(us - request.us);
      }
    }
  }
  return counts;
}


export interface MeasuredMigration {
  result: MigrationResult;
  requests: LazyPagesRequests;
  /** Server CPU ms when it was ready (first sample), and at its last sample before exiting. */
  serverCpuReadyMs: number | undefined;
  serverCpuMs: number | undefined;
  cpuSamples: number;
  /** Server pid and the processes it had forked when it was ready (expected: none). */
  serverPid: number | undefined;
  serverChildren: number[];
  lazydSessions: ServedSessions | undefined;
}

function childPids(pid: number): number[] {
  const pids: number[] = [];
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      const text = fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8');
      for (const word of text.split(/\s+/)) if (word) pids.push(Number(word));
    }
  } catch {
    // gone
  }
  return pids;
}

/** runLazyMigration() with the extra figures above; the caller's beforeRestore/afterFinish still run. */
export async function measuredMigration(options: MigrationOptions & { cpuIntervalMs?: number }): Promise<MeasuredMigration> {
  let sampler: CpuSampler | undefined;
  let serverPid: number | undefined;
  let serverChildren: number[] = [];
  let requests: LazyPagesRequests = { requests: 0, pages: 0, singlePage: 0, largest: 0, faults: 0, faultRttUs: [], backgroundRttUs: [] };
  let lazydSessions: ServedSessions | undefined;
  let serverCpuMs: number | undefined;
  try {
    const result = await runLazyMigration({
      ...options,
      beforeRestore: async (server, checkpoint) => {
        serverPid = server.pid;
        sampler = sampleCpu(server.pid, options.cpuIntervalMs ?? 20);
        serverChildren = childPids(server.pid);
        await options.beforeRestore?.(server, checkpoint);
      },
      afterFinish: async (server, checkpoint, restored) => {
        serverCpuMs = sampler?.stop();
        requests = readLazyPagesRequests(path.join(restored.dstDir, 'lazy-pages.log'));
        if (server.kind !== 'criu') lazydSessions = readServedSessions(server.logFile);
        await options.afterFinish?.(server, checkpoint, restored);
      },
    });
    return {
      result,
      requests,
      serverCpuReadyMs: sampler?.firstMs,
      serverCpuMs,
      cpuSamples: sampler?.samples ?? 0,
      serverPid,
      serverChildren,
      lazydSessions,
    };
  } finally {
    sampler?.stop();
  }
}
