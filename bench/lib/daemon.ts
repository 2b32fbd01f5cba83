// Destination-daemon figures the harness does not expose: the lazy-pages daemon's CPU time (found among our
// children by its "lazy-pages" argument, sampled from /proc), the fault service time of `criu lazy-pages` from
// its -v4 log ("#PF at X" → "uffd_copy: X"), and lazyd's histogram line from its -o log.
import fs from 'node:fs';
import { sampleCpu, type CpuSampler } from './cpu.js';

/** Direct children of this process whose argv holds the word "lazy-pages" (criu lazy-pages, lazyd lazy-pages). */
function findDaemonPid(): number | undefined {
  let children: string[] = [];
  try {
    for (const tid of fs.readdirSync(`/proc/${process.pid}/task`)) {
      children.push(...fs.readFileSync(`/proc/${process.pid}/task/${tid}/children`, 'utf8').split(/\s+/).filter(Boolean));
    }
  } catch {
    children = [];
  }
  for (const pid of children) {
    try {
      const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0');
      if (argv.includes('lazy-pages')) return Number(pid);
    } catch {
      // gone
    }
  }
  return undefined;
}

export interface DaemonWatch {
  readonly pid: number | undefined;
  /** Stops watching; CPU ms of the daemon at its last sample (undefined if it was never found). */
  stop(): number | undefined;
}

/** Polls for the daemon (every pollMs) and samples its CPU once found. Start it before the restore. */
export function watchDaemonCpu(pollMs = 5, cpuIntervalMs = 20): DaemonWatch {
  let pid: number | undefined;
  let sampler: CpuSampler | undefined;
  const timer = setInterval(() => {
    if (sampler) return;
    pid = findDaemonPid();
    if (pid !== undefined) {
      sampler = sampleCpu(pid, cpuIntervalMs);
      clearInterval(timer);
    }
  }, pollMs);
  timer.unref();
  return {
    get pid() {
      return pid;
    },
    stop() {
      clearInterval(timer);
      return sampler?.stop();
    },
  };
}

const LOG_LINE = /^\((\d+)\.(\d+)\) (.*)$/;
const PF_RE = /: #PF at 0x([0-9a-f]+)/;
const COPY_RE = /: uffd_copy: 0x([0-9a-f]+)\/(\d+)/;

/**
 * `criu lazy-pages -v4` log: per fault, from its "#PF at 0x<addr>" line to the "uffd_copy: 0x<start>/<bytes>" line
 * whose range covers the address (µs). Faults never followed by a covering copy (their page came some other way)
 * are left out.
 */
export function criuFaultServiceUs(logFile: string): number[] {
  let text: string;
  try {
    text = fs.readFileSync(logFile, 'latin1');
  } catch {
    return [];
  }
  const out: number[] = [];
  const pending = new Map<bigint, number>();
  for (const line of text.split('\n')) {
    const m = LOG_LINE.exec(line);
    if (!m) continue;
    const us = Number(m[1]) * 1e6 + Number(m[2].padEnd(6, '0').slice(0, 6));
    let r: RegExpExecArray | null;
    if ((r = PF_RE.exec(m[3]))) {
      const addr = BigInt('0x' + r[1]) & ~0xfffn;
      if (!pending.has(addr)) pending.set(addr, us);
    } else if ((r = COPY_RE.exec(m[3])) && pending.size) {
      const start = BigInt('0x' + r[1]);
      const end = start + BigInt(r[2]);
      if (Number(r[2]) === 4096) {
        const t = pending.get(start);
        if (t !== undefined) {
          out.push(us - t);
          pending.delete(start);
        }
      } else {
        for (const [addr, t] of pending) {
          if (addr >= start && addr < end) {
            out.push(us - t);
            pending.delete(addr);
          }
        }
      }
    }
  }
  return out;
}

export interface LazydLatency {
  p50Us: number | null;
  p99Us: number | null;
  maxUs: number | null;
  faults: number;
  line: string;
}

/** lazyd's "fault service time: p50 <= X us, p99 <= Y us, max Z us (N faults)" (fine bucket upper bounds, the max exact). */
export function readLazydLatency(logFile: string): LazydLatency | undefined {
  let text: string;
  try {
    text = fs.readFileSync(logFile, 'utf8');
  } catch {
    return undefined;
  }
  const lines = text.split('\n').filter((l) => l.includes('fault service time:'));
  const line = lines.at(-1);
  if (!line) return undefined;
  if (/no faults/.test(line)) return { p50Us: null, p99Us: null, maxUs: null, faults: 0, line };
  // p50 and p99 follow "<=" (bucket upper bounds), the max nothing (exact).
  const q = (name: string) => {
    const v = line.match(new RegExp(`${name} (?:<= )?(\\d+(?:\\.\\d+)?) us`))?.[1];
    return v === undefined ? null : Number(v);
  };
  return { p50Us: q('p50'), p99Us: q('p99'), maxUs: q('max'), faults: Number(line.match(/\((\d+) faults\)/)?.[1] ?? 0), line };
}
