// The restored tasks a lazy-pages daemon serves, by their pids in the daemon's pid namespace, and the failure
// policy for them.
//
// Why kill: once the engine has failed (page server gone or stalled, restore broken), the lazy memory of the
// restored tasks can never be completed. Keeping the uffds open would hang them forever on their next fault;
// closing them (what any daemon exit does) makes the kernel zero-fill every missing page on its next touch:
// silent corruption. So by default lazyd SIGKILLs them: the task tree the restore handed over (pids from the
// hand-overs' SCM_CREDENTIALS), plus every descendant at the time of the failure (children forked after the
// restore reach the daemon as uffd FORK events, which carry no pid). `--on-failure keep` leaves them running
// (criu's behaviour: missing pages then read as zeros); only for salvaging what is there.
import fs from 'node:fs';

interface Tracked {
  vpid: number;
  hostPid: number;
  /** Field 22 of /proc/<pid>/stat when the hand-over arrived: guards against a recycled pid. */
  startTime: string | undefined;
}

function startTimeOf(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm may contain spaces and parentheses: the fields after it start past the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Children of every thread of `pid` (/proc/<pid>/task/<tid>/children). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      for (const word of fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/)) {
        if (word) out.push(Number(word));
      }
    } catch {
      // the thread went away
    }
  }
  return out;
}

/** The host pid in a kTask event: `hostPid` if the binding exports it, else the message "host pid N". */
export function hostPidOf(event: { hostPid?: number; message?: string }): number | undefined {
  if (typeof event.hostPid === 'number' && event.hostPid > 0) return event.hostPid;
  const m = /host pid (\d+)/.exec(event.message ?? '');
  return m ? Number(m[1]) : undefined;
}

export class RestoredTasks {
  private readonly tasks: Tracked[] = [];
  /** Image pids of tasks handed over without a usable host pid. */
  readonly unknown: number[] = [];

  add(vpid: number, hostPid: number | undefined): void {
    if (!hostPid) {
      this.unknown.push(vpid);
      return;
    }
    this.tasks.push({ vpid, hostPid, startTime: startTimeOf(hostPid) });
  }

  get size(): number {
    return this.tasks.length;
  }

  /** Handed-over tasks still alive (same process as at the hand-over), and all their descendants now. */
  victims(): number[] {
    const roots = this.tasks
      .filter((t) => t.startTime !== undefined && startTimeOf(t.hostPid) === t.startTime)
      .map((t) => t.hostPid);
    const seen = new Set<number>();
    const queue = [...roots];
    while (queue.length) {
      const pid = queue.shift()!;
      if (seen.has(pid)) continue;
      seen.add(pid);
      queue.push(...childrenOf(pid));
    }
    return [...seen];
  }

  /**
   * SIGKILLs victims(); returns the pids signalled. The whole list is collected first, so a child reparented
   * by its parent's death is still found. A task blocked on a fault dies without returning to user space.
   */
  killAll(): number[] {
    // Descendants first (reverse breadth-first order): killing a pid namespace's init first would make the
    // kernel reap the rest before we signal them, and they would be missing from the report.
    const victims = this.victims().reverse();
    const killed: number[] = [];
    for (const pid of victims) {
      try {
        process.kill(pid, 'SIGKILL');
        killed.push(pid);
      } catch {
        // already gone
      }
    }
    return killed;
  }

  describe(): string {
    return this.tasks.map((t) => `${t.vpid}→${t.hostPid}`).join(', ');
  }
}
