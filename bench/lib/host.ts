// What the benchmark ran on: kernel, CPU, memory, node, the CRIU builds, lazyd's commit. Every probe is
// best-effort: a missing tool gives "unknown", never a failure.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { repoRoot } from '../../src/paths.js';
import { criuPath, type CriuVersion } from '../../test/harness/index.js';

export interface HostInfo {
  hostname: string;
  kernel: string;
  arch: string;
  cpuModel: string;
  cores: number;
  memoryMiB: number;
  loadAverage: number[];
  node: string;
  /** Per requested version: the first line of `criu --version` (or why it could not run). */
  criu: Record<string, string>;
  /** USER_HZ: the unit of utime/stime in /proc/<pid>/stat. */
  clockTicks: number;
  pipeMaxSize: number | null;
  git: { commit: string | null; dirty: boolean | null };
}

function run(file: string, args: string[], cwd?: string): string | null {
  try {
    return execFileSync(file, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 }).trim();
  } catch {
    return null;
  }
}

function cpuModel(): string {
  try {
    const m = fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.+)$/m);
    if (m) return m[1].trim();
  } catch {
    // not Linux?
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

let ticks: number | undefined;

/** USER_HZ from `getconf CLK_TCK` (100 when it cannot be asked). */
export function clockTicks(): number {
  if (ticks === undefined) {
    const value = Number(run('getconf', ['CLK_TCK']));
    ticks = Number.isInteger(value) && value > 0 ? value : 100;
  }
  return ticks;
}

export function describeHost(criuVersions: readonly CriuVersion[]): HostInfo {
  const criu: Record<string, string> = {};
  for (const version of criuVersions) {
    const text = run(criuPath(version), ['--version']);
    criu[version] = text ? text.split('\n').map((l) => l.trim()).filter(Boolean).join(', ') : `not runnable at ${criuPath(version)}`;
  }
  const root = repoRoot();
  const status = run('git', ['status', '--porcelain', '--untracked-files=no'], root);
  let pipeMaxSize: number | null = null;
  try {
    pipeMaxSize = Number(fs.readFileSync('/proc/sys/fs/pipe-max-size', 'utf8').trim());
  } catch {
    // not Linux
  }
  return {
    hostname: os.hostname(),
    kernel: `${os.release()} (${os.version()})`,
    arch: os.arch(),
    cpuModel: cpuModel(),
    cores: os.cpus().length,
    memoryMiB: Math.round(os.totalmem() / 1048576),
    loadAverage: os.loadavg(),
    node: process.version,
    criu,
    clockTicks: clockTicks(),
    pipeMaxSize,
    git: { commit: run('git', ['rev-parse', '--short=12', 'HEAD'], root), dirty: status === null ? null : status.length > 0 },
  };
}
