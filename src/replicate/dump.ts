// One epoch's checkpoint on the primary: `criu dump --leave-running` into a directory on tmpfs (memory speed,
// so the tasks are frozen only for the local copy). Resolves with how long criu ran (an upper bound of the
// frozen time: criu freezes right after it starts and thaws just before it exits).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { criuLogErrors } from '../migrate/lazy-dump.js';

export function dumpLeaveRunning(criu: string, pid: number, dir: string): Promise<{ ms: number }> {
  const started = performance.now();
  const child = spawn(criu, ['dump', '-t', String(pid), '-D', dir, '-v4', '-o', 'dump.log', '--leave-running'], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', (error) => reject(new Error(`cannot run ${criu}: ${error.message} — point --criu at CRIU`)));
    child.on('exit', (code, signal) => {
      if (code === 0) resolve({ ms: performance.now() - started });
      else reject(new Error(`criu dump --leave-running -t ${pid} failed (${signal ?? `exit ${code}`}): ${criuLogErrors(path.join(dir, 'dump.log'))}${stderr.trim() ? ` (${stderr.trim().split('\n').pop()})` : ''}`));
    });
  });
}
