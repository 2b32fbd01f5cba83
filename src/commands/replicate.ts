// `lazyd replicate --pid PID --to HOST:PORT`: continuous checkpoints of a running tree into a standby `lazyd
// agent` (src/replicate/primary.ts); `lazyd replicate status --to HOST:PORT`: the standby's replicas. Progress:
// one JSON line per epoch on stderr (frozen ms, pages changed, bytes sent, commit ms, lag). Exit codes: 0 done
// (--epochs reached, or SIGTERM/SIGINT), 3 fenced (the standby took over), 1 failed.
import os from 'node:os';
import path from 'node:path';
import { loadNative } from '../native.js';
import { criuFeature, probeCriu } from '../migrate/criu-host.js';
import { nodeTlsOptions } from '../migrate/node-tls.js';
import { Channel, type Message } from '../migrate/channel.js';
import { connectAgentSocket } from '../replicate/connect.js';
import { replicate } from '../replicate/primary.js';
import { replicaIdProblem, sendReplica, type ReplicaMessage } from '../replicate/protocol.js';
import { replicateCounters, type ReplicateCounters } from '../replicate/stats.js';
import { chooseTracking } from '../replicate/tracking.js';
import type { MetricsServer } from '../metrics/server.js';
import { parseHostPort } from './migrate.js';
import type { Values } from '../config/flag.js';
import { REPLICATE } from '../config/flags.js';

export type ReplicateValues = Values<typeof REPLICATE.flags>;

export const REPLICATE_EXIT = { done: 0, failed: 1, fenced: 3 } as const;

function say(line: string): void {
  process.stderr.write(`lazyd replicate: ${line}\n`);
}

/** One request on a fresh connection to the agent and its one answer (status, failover). */
export async function askAgent(
  values: { to?: string; tls: boolean; tlsNoCnVerify: boolean } & Parameters<typeof nodeTlsOptions>[0],
  request: ReplicaMessage,
  answerTypes: string[],
): Promise<ReplicaMessage> {
  const to = parseHostPort(values.to!, '--to');
  const socket = await connectAgentSocket(to, nodeTlsOptions(values), !values.tlsNoCnVerify);
  const channel = new Channel(socket);
  return new Promise((resolve, reject) => {
    channel.on('message', (message: Message) => {
      const m = message as unknown as ReplicaMessage;
      if (answerTypes.includes(m.t) || m.t === 'replica-refuse' || (m as { t: string }).t === 'refuse') {
        channel.end();
        resolve(m);
      }
    });
    channel.on('error', (error: Error) => reject(error));
    channel.on('close', () => reject(new Error(`the agent at ${values.to} closed the connection without an answer`)));
    sendReplica(channel, request);
  });
}

async function status(values: ReplicateValues): Promise<number> {
  const answer = await askAgent(values, { t: 'replica-status' }, ['replica-state']);
  if (answer.t !== 'replica-state') {
    say(`the agent refused: ${(answer as { reason?: string }).reason}`);
    return REPLICATE_EXIT.failed;
  }
  if (values.json) {
    process.stdout.write(`${JSON.stringify(answer.replicas)}\n`);
    return 0;
  }
  if (answer.replicas.length === 0) process.stdout.write('no replicas on this agent\n');
  for (const r of answer.replicas) {
    const lag = r.committedAt ? ` committed ${((Date.now() - r.committedAt) / 1000).toFixed(1)} s ago` : '';
    process.stdout.write(
      `${r.id}: epoch ${r.committed ?? 'none'}${lag}, ${(r.bytes / 1048576).toFixed(1)} MiB, primary ${r.connected ? 'connected' : 'not connected'}${r.failedOver ? `, FAILED OVER (fenced) to epoch ${r.failedOver.epoch}${r.failedOver.pid ? `, pid ${r.failedOver.pid}` : ', restoring'}` : ''}\n`,
    );
  }
  return 0;
}

/** --metrics-address: the primary's epochs at /metrics (prom-client is loaded only then). */
async function serveReplicateMetrics(text: string, counters: ReplicateCounters): Promise<MetricsServer> {
  const { parseMetricsAddress, startMetricsServer } = await import('../metrics/server.js');
  const { createMetricsRegistry } = await import('../metrics/registry.js');
  const server = await startMetricsServer(parseMetricsAddress(text), createMetricsRegistry({ role: 'replicate', criuAbi: 'auto', replicate: () => counters }));
  say(`metrics on ${server.url}`);
  return server;
}

export async function runReplicate(action: string | undefined, values: ReplicateValues): Promise<number> {
  let metrics: MetricsServer | undefined;
  try {
    if (action === 'status') return await status(values);
    if (action !== undefined && action !== 'run') throw new Error(`unknown action ${JSON.stringify(action)}: use \`lazyd replicate --pid PID --to HOST:PORT\` or \`lazyd replicate status --to HOST:PORT\``);
    if (!values.pid) throw new Error('--pid is required: the root of the process tree to replicate');
    const id = values.id ?? `pid-${values.pid}`;
    const problem = replicaIdProblem(id);
    if (problem) throw new Error(`--id: ${problem}`);
    const to = parseHostPort(values.to!, '--to');
    const tls = nodeTlsOptions(values);
    const criu = probeCriu(values.criu);
    const tracking = chooseTracking(values.tracking, () => criuFeature(criu.path, 'mem_dirty_track'));
    const counters = replicateCounters();
    if (values.metricsAddress !== undefined) metrics = await serveReplicateMetrics(values.metricsAddress, counters);
    const stop = new AbortController();
    const onSignal = (signal: string) => {
      say(`got ${signal}: stopping after the epoch in flight`);
      stop.abort();
    };
    process.once('SIGTERM', () => onSignal('SIGTERM'));
    process.once('SIGINT', () => onSignal('SIGINT'));
    say(`replicating pid ${values.pid} as ${id} into ${values.to} every ${values.interval} s; ${tracking.line}`);
    const outcome = await replicate(
      {
        pid: values.pid,
        id,
        to,
        tls,
        tlsVerifyName: !values.tlsNoCnVerify,
        criu: criu.path,
        criuVersion: criu.version,
        pageSize: loadNative().pageSize,
        intervalMs: values.interval * 1000,
        epochs: values.epochs,
        tracking: tracking.mode,
        workDir: path.join(values.dumpDir ?? path.join(os.tmpdir(), 'lazyd-replicate'), id),
        killOnFence: values.killOnFence,
        linkTimeoutMs: values.linkTimeout * 1000,
        failoverAfterMs: values.failoverAfter * 1000,
        progress: (event) => process.stderr.write(`${JSON.stringify(event)}\n`),
        counters,
      },
      stop.signal,
    );
    if (outcome.outcome === 'done') {
      say(`stopped after ${outcome.epochs} committed epochs`);
      return REPLICATE_EXIT.done;
    }
    if (outcome.outcome === 'fenced') {
      say(`fenced: ${outcome.reason}; ${outcome.killed ? `killed pid ${values.pid} (--kill-on-fence)` : `pid ${values.pid} left running — stop it: the standby runs the service now`}`);
      return REPLICATE_EXIT.fenced;
    }
    say(outcome.reason);
    return REPLICATE_EXIT.failed;
  } catch (error) {
    say((error as Error).message);
    return REPLICATE_EXIT.failed;
  } finally {
    await metrics?.close();
  }
}
