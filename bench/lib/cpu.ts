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
