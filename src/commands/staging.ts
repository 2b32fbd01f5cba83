// `lazyd staging list|release` — talks to a running `lazyd --page-server --control-socket PATH`.
import { sendStagingCommand } from '../staging/control.js';

export interface StagingCommandOptions {
  action: 'list' | 'release';
  controlSocket: string;
  /** release: the checkpoint id (as `list` shows it)... */
  id?: number;
  /** ...or a pid it holds. */
  pid?: number;
  json?: boolean;
}

interface ListedCheckpoint {
  id: number;
  pids: number[];
  bytes: number;
  restores: number;
  stagedAt: string;
}

export async function runStaging(options: StagingCommandOptions): Promise<number> {
  let command: string;
  if (options.action === 'list') {
    command = 'list';
  } else if ((options.id === undefined) === (options.pid === undefined)) {
    process.stderr.write('lazyd staging release: give a checkpoint id or --pid (one of them)\n');
    return 1;
  } else {
    command = options.pid !== undefined ? `release pid ${options.pid}` : `release ${options.id}`;
  }
  let answer: string;
  try {
    answer = await sendStagingCommand(options.controlSocket, command);
  } catch (error) {
    process.stderr.write(`lazyd staging: ${(error as Error).message}\n`);
    return 1;
  }
  if (!answer.startsWith('ok')) {
    process.stderr.write(`lazyd staging: ${answer.replace(/^error /, '')}\n`);
    return 1;
  }
  const body = answer.slice(2).trim();
  if (options.action === 'list' && !options.json) {
    const list = JSON.parse(body) as ListedCheckpoint[];
    if (!list.length) process.stdout.write('no staged checkpoint\n');
    for (const c of list) {
      const mib = (c.bytes / (1024 * 1024)).toFixed(1);
      process.stdout.write(`#${c.id}  pids ${c.pids.join(',')}  ${mib} MiB  ${c.restores} restores  staged ${c.stagedAt}\n`);
    }
  } else {
    process.stdout.write(body + '\n');
  }
  return 0;
}
