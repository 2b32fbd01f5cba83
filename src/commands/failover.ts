// `lazyd failover ID --to HOST:PORT`: asks the standby's agent to restore replica ID's last committed epoch,
// lazily from its own images (src/agent/replica.ts); prints the restored pid and the decision → running time.
import { askAgent } from './replicate.js';
import type { Values } from '../config/flag.js';
import { FAILOVER } from '../config/flags.js';

export type FailoverValues = Values<typeof FAILOVER.flags>;

export async function runFailover(id: string | undefined, values: FailoverValues): Promise<number> {
  try {
    if (!id) throw new Error('which replica? `lazyd failover ID --to HOST:PORT` (`lazyd replicate status --to HOST:PORT` lists them)');
    const answer = await askAgent(values, { t: 'replica-failover', id }, ['replica-failed-over']);
    if (answer.t !== 'replica-failed-over') throw new Error(`the standby did not fail over: ${(answer as { reason?: string }).reason}`);
    if (values.json) process.stdout.write(`${JSON.stringify(answer)}\n`);
    else process.stdout.write(`${id}: epoch ${answer.epoch} restored as pid ${answer.pid}, running ${answer.decisionToRunningMs.toFixed(0)} ms after the decision\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`lazyd failover: ${(error as Error).message}\n`);
    return 1;
  }
}
