// CPU time of a process we do not reap ourselves (the harness does): sampled from /proc/<pid>/stat while it
// runs. utime+stime there cover every thread, dead ones included, plus children it has waited for
// (cutime+cstime). The last sample before the exit is the figure: what the process spent after it (its
// exit itself, at most one interval) is lost. Resolution: one clock tick (10 ms at USER_HZ 100).
import fs from 'node:fs';
import { clockTicks } from './host.js';

/** CPU ms (user+system, own threads and reaped children) of a live process, or undefined once it is gone. */
export function readCpuMs(pid: number): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Fields after "(comm)": state is field 3, utime 14, stime 15, cutime 16, cstime 17.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = rest[0];
  if (state === 'Z' || state === 'X') return undefined;
  const field = (n: number) => Number(rest[n - 3]);
  const ticks = field(14) + field(15) + field(16) + field(17);
  return Number.isFinite(ticks) ? (ticks * 1000) / clockTicks() : undefined;
}

export interface CpuSampler {
  /** CPU ms at the first sample (taken at once by sampleCpu). */
  readonly firstMs: number | undefined;
  /** CPU ms at the latest sample while the process was alive. */
  readonly lastMs: number | undefined;
  readonly samples: number;
  /** Stops sampling (takes one more sample if the process is still alive) and returns lastMs. */
  stop(): number | undefined;
}

export function sampleCpu(pid: number, intervalMs = 20): CpuSampler {
  let firstMs: number | undefined;
  let lastMs: number | undefined;
  let samples = 0;
  const sample = () => {
    const value = readCpuMs(pid);
    if (value === undefined) return;
    samples++;
    if (firstMs === undefined) firstMs = value;
    lastMs = value;
  };
  sample();
  const timer = setInterval(sample, intervalMs);
  timer.unref();
  return {
    get firstMs() {
      return firstMs;
    },
    get lastMs() {
      return lastMs;
    },
    get samples() {
      return samples;
    },
    stop() {
      clearInterval(timer);
      sample();
      return lastMs;
    },
  };
}

/** The whole machine's CPU time (/proc/stat's first line), sampled with the harness's clock (nowNs). */
export interface MachineCpuSampler {
  /**
   * Of the CPU time all CPUs had between two moments (the nearest samples outside them), the shares that were busy
   * (user, nice, system, irq, softirq) and stolen by the hypervisor; undefined without two samples around them.
   */
  shares(fromNs: bigint, toNs: bigint): { busy: number; steal: number } | undefined;
  stop(): void;
}

function readMachineTicks(): { busy: number; steal: number; total: number } | undefined {
  let line: string;
  try {
    line = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  } catch {
    return undefined;
  }
  // cpu user nice system idle iowait irq softirq steal guest guest_nice (guest time is inside user already).
  const [user, nice, system, idle, iowait, irq, softirq, steal] = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const busy = user! + nice! + system! + irq! + softirq!;
  return { busy, steal: steal!, total: busy + idle! + iowait! + steal! };
}

/** /proc/stat counts in clock ticks (10 ms): sample often, and read shares over windows of hundreds of ms. */
export function sampleMachineCpu(nowNs: () => bigint, intervalMs = 5): MachineCpuSampler {
  const samples: { ns: bigint; busy: number; steal: number; total: number }[] = [];
  const sample = () => {
    const ticks = readMachineTicks();
    if (ticks) samples.push({ ns: nowNs(), ...ticks });
  };
  sample();
  const timer = setInterval(sample, intervalMs);
  timer.unref();
  return {
    shares(fromNs, toNs) {
      const before = samples.filter((s) => s.ns <= fromNs).at(-1);
      const after = samples.find((s) => s.ns >= toNs);
      if (!before || !after || after.total <= before.total) return undefined;
      const total = after.total - before.total;
      return { busy: (after.busy - before.busy) / total, steal: (after.steal - before.steal) / total };
    },
    stop() {
      clearInterval(timer);
      sample();
    },
  };
}
