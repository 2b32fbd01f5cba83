// One epoch's checkpoint on the primary: `criu dump --leave-running` into a directory on tmpfs (memory speed,
// so the tasks are frozen only for the local copy). Resolves with how long criu ran (an upper bound of the
// frozen time: criu freezes right after it starts and thaws just before it exits).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { criuLogErrors } from '../migrate/lazy-dump.js';

/**
 * Tracking for `--tracking dirty` (tracking.ts): --track-mem makes CRIU reset the soft-dirty bits after the dump,
 * and `parent` (the previous epoch's directory, relative to `dir` as --prev-images-dir wants it) makes it write
 * only the pages dirtied since — the others become in-parent pagemap entries.
 */
export interface DumpTracking {
  parent: string | undefined;
}

/** criu's argv for one epoch (without tracking: every page). */
export function epochDumpArgs(pid: number, dir: string, tracking?: DumpTracking): string[] {
  const args = ['dump', '-t', String(pid), '-D', dir, '-v4', '-o', 'dump.log', '--leave-running'];
  if (tracking) args.push('--track-mem', ...(tracking.parent ? ['--prev-images-dir', tracking.parent] : []));
  return args;
}

export function dumpLeaveRunning(criu: string, pid: number, dir: string, tracking?: DumpTracking): Promise<{ ms: number }> {
  const started = performance.now();
  const child = spawn(criu, epochDumpArgs(pid, dir, tracking), { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', (error) => reject(new Error(`cannot run ${criu}: ${error.message} — point --criu at CRIU`)));
    child.on('exit', (code, signal) => {
      if (code === 0) resolve({ ms: performance.now() - started });
      else reject(new Error(`criu dump --leave-running${tracking ? ' --track-mem' : ''} -t ${pid} failed (${signal ?? `exit ${code}`}): ${criuLogErrors(path.join(dir, 'dump.log'))}${stderr.trim() ? ` (${stderr.trim().split('\n').pop()})` : ''}`));
    });
  });
}
