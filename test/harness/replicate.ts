// `lazyd replicate` between two netns hosts (netns.ts): the epochs workload (test/workload/epochs.c: memory that
// changes by generation, verified for the generation it is in) on the primary, its `lazyd replicate` with the
// progress events it prints, and readers of the workload's log.
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { lazydBin } from './page-server.js';
import { Proc, pollFor, runCommand, type ExitInfo } from './process.js';
import { childrenOf, killPidNamespace } from './workload.js';
import { repoRoot } from '../../src/paths.js';

export async function buildEpochsWorkload(): Promise<string> {
  const source = path.join(repoRoot(), 'test', 'workload', 'epochs.c');
  const hash = createHash('sha256').update(fs.readFileSync(source)).digest('hex').slice(0, 12);
  const binary = path.join(repoRoot(), 'build', 'workload', `epochs-${hash}`);
  if (fs.existsSync(binary)) return binary;
  fs.mkdirSync(path.dirname(binary), { recursive: true });
  const tmp = `${binary}.tmp-${process.pid}`;
  await runCommand({ name: 'gcc (epochs)', file: 'gcc', args: ['-O2', '-Wall', '-o', tmp, source] }, 120_000);
  fs.renameSync(tmp, binary);
  return binary;
}

export interface EpochsWorkload {
  dir: string;
  unshare: Proc;
  /** Host pid of the workload: the init of its own pid namespace. */
  pid: number;
  pages: number;
}

/** Starts `epochs <dir> <mib> 1 <classes>` as the init of a new pid namespace in `netns`; waits for its ready file. */
export async function startEpochsWorkload(dir: string, mib: number, classes: number, netns: string, extraArgs: string[] = []): Promise<EpochsWorkload> {
  const binary = await buildEpochsWorkload();
  fs.mkdirSync(dir, { recursive: true });
  const unshare = new Proc(
    { name: 'epochs workload', file: 'unshare', args: ['-p', '-f', '--', 'setsid', binary, dir, String(mib), '1', String(classes), ...extraArgs], cwd: dir, netns },
    'ignore',
    true,
  );
  const pid = await pollFor('the epochs workload (child of unshare)', 10_000, () => {
    if (!unshare.running) throw new Error(`epochs workload exited at once: ${JSON.stringify(unshare.exitInfo)}`);
    return childrenOf(unshare.pid)[0];
  });
  const pages = await pollFor(`${dir}/ready`, 15_000, () => {
    const m = /pages (\d+)/.exec(readOr(path.join(dir, 'ready')));
    return m ? Number(m[1]) : undefined;
  });
  return { dir, unshare, pid, pages };
}

export async function stopEpochsWorkload(w: EpochsWorkload): Promise<void> {
  if (fs.existsSync(`/proc/${w.pid}`)) await killPidNamespace(w.pid);
  w.unshare.kill('SIGKILL');
  await w.unshare.exited;
}

function readOr(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

export interface VerifyLine {
  pid: number;
  gen: number;
  ok: number;
  bad: number;
}

/** The workload's verify lines from byte `from` of its log on. */
export function verifyLines(dir: string, from = 0): VerifyLine[] {
  const text = readOr(path.join(dir, 'log')).slice(from);
  return [...text.matchAll(/^verify pid (\d+) gen (\d+) ok (\d+) bad (\d+)$/gm)].map((m) => ({ pid: Number(m[1]), gen: Number(m[2]), ok: Number(m[3]), bad: Number(m[4]) }));
}

export function logSize(dir: string): number {
  return readOr(path.join(dir, 'log')).length;
}

/** Has the workload write its next generation; resolves once it logged it written. */
export async function nextGeneration(dir: string, gen: number): Promise<void> {
  fs.writeFileSync(path.join(dir, 'do-next'), '');
  const written = new RegExp(`^gen ${gen} written$`, 'm');
  await pollFor(`generation ${gen} written`, 10_000, () => (written.test(readOr(path.join(dir, 'log'))) ? true : undefined));
}

export interface ReplicateRun {
  proc: Proc;
  events: Record<string, unknown>[];
  stderr(): string;
  waitForEvent(what: string, test: (e: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited: Promise<ExitInfo>;
}

export function runReplicate(netns: string, args: string[]): ReplicateRun {
  const proc = new Proc({ name: 'lazyd replicate', file: process.execPath, args: [lazydBin(), 'replicate', ...args], netns }, ['ignore', 'pipe', 'pipe']);
  const events: Record<string, unknown>[] = [];
  let stderr = '';
  let partial = '';
  proc.child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    partial += chunk.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      try {
        events.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // a plain line (lazyd replicate: ...)
      }
    }
  });
  let exited = false;
  void proc.exited.then(() => (exited = true));
  return {
    proc,
    events,
    stderr: () => stderr,
    exited: proc.exited,
    waitForEvent(what, test, timeoutMs = 60_000) {
      return pollFor(`lazyd replicate's ${what}`, timeoutMs, () => {
        const found = events.find(test);
        if (found) return found;
        if (exited) throw new Error(`lazyd replicate exited before its ${what}; stderr:\n${stderr}`);
        return undefined;
      });
    },
  };
}

/** Runs `lazyd <args>` (failover, replicate status) in `netns` to its end: exit code and stdout. */
export async function runLazydOnce(netns: string, args: string[], timeoutMs = 60_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = new Proc({ name: `lazyd ${args[0]}`, file: process.execPath, args: [lazydBin(), ...args], netns }, ['ignore', 'pipe', 'pipe']);
  let stdout = '';
  let stderr = '';
  proc.child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  proc.child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  const info = await proc.exited;
  clearTimeout(timer);
  return { code: info.code, stdout, stderr };
}

/** Scrapes a lazyd /metrics URL from inside `netns` (curl there): the samples without labels, by name. */
export async function scrapeIn(netns: string, url: string): Promise<Map<string, number>> {
  const curl = new Proc({ name: 'curl (metrics)', file: 'curl', args: ['-sSf', url], netns }, ['ignore', 'pipe', 'pipe']);
  await curl.waitOk(10_000);
  const samples = new Map<string, number>();
  for (const m of curl.outputText.matchAll(/^(lazyd_\w+) (\S+)$/gm)) samples.set(m[1], Number(m[2]));
  return samples;
}

/** The /metrics URL a lazyd process wrote in `text` ("metrics on http://…/metrics" or "Metrics on …"). */
export function metricsUrlIn(text: string): string | undefined {
  return /[Mm]etrics on (http:\/\/\S+\/metrics)/.exec(text)?.[1];
}
