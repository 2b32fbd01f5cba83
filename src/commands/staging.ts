// `lazyd staging list|release|relay` — talks to a running `lazyd --page-server --control-socket PATH`.
import path from 'node:path';
import { sendStagingCommand, type ListedCheckpoint } from '../staging/control.js';
import type { Values } from '../config/flag.js';
import { parseHostPort, type STAGING_COMMAND, type STAGING_ACTIONS } from '../config/flags.js';
import { wireFormatFromAbi } from '../protocol/criu-abi.js';
import { signalStatusFd } from '../cli/process-control.js';

/** The daemon's connect to the dump: on loopback it is answered at once or refused. */
const RELAY_CONNECT_TIMEOUT_MS = 10_000;

export interface StagingCommandOptions {
  action: (typeof STAGING_ACTIONS)[number];
  controlSocket: string;
  /** release: the checkpoint id (as `list` shows it)... */
  id?: number;
  /** ...or a pid it holds. */
  pid?: number;
  json?: boolean;
  /** relay: the flags' values (src/config/flags.ts, RELAY). */
  relay?: Values<typeof STAGING_COMMAND.flags>;
}

/** The control socket's relay line from the flags; throws one line when --from is missing. */
export function relayCommandLine(values: Values<typeof STAGING_COMMAND.flags>, cwd = process.cwd()): string {
  if (values.from === undefined) throw new Error("relay: give the dump's address with --from HOST:PORT (its --address and --port)");
  const { host, port } = parseHostPort(values.from)!;
  const format = wireFormatFromAbi(values.criuAbi);
  const request = {
    dir: path.resolve(cwd, values.imagesDir),
    host,
    port,
    wait: values.wait,
    listenTimeoutMs: Math.round(values.listenTimeout * 1000),
    tls: values.relayTls,
    ...(format ? { format } : {}),
    requestBytes: values.relayRequestBytes,
    inflightBytes: values.relayInflightBytes,
    stallTimeoutMs: values.relayStallTimeout * 1000,
    connectTimeoutMs: RELAY_CONNECT_TIMEOUT_MS,
  };
  return `relay ${JSON.stringify(request)}`;
}

function listLine(c: ListedCheckpoint): string {
  const mib = (c.bytes / (1024 * 1024)).toFixed(1);
  const relay = c.relay
    ? `  relay ${c.relay.state} ${c.relay.pagesHeld}/${c.relay.pagesTotal} pages from ${c.relay.from}${c.relay.message ? ` (${c.relay.message})` : ''}`
    : '';
  return `#${c.id}  pids ${c.pids.join(',')}  ${mib} MiB  ${c.restores} restores  staged ${c.stagedAt}${relay}\n`;
}

export async function runStaging(options: StagingCommandOptions): Promise<number> {
  let command: string;
  if (options.action === 'list') {
    command = 'list';
  } else if (options.action === 'relay') {
    if (options.id !== undefined) {
      process.stderr.write(`lazyd staging relay: unexpected argument "${options.id}": the checkpoint id comes from the daemon\n`);
      return 1;
    }
    try {
      command = relayCommandLine(options.relay!);
    } catch (error) {
      process.stderr.write(`lazyd staging ${(error as Error).message}\n`);
      return 1;
    }
  } else if ((options.id === undefined) === (options.pid === undefined)) {
    process.stderr.write('lazyd staging release: give a checkpoint id or --pid (one of them)\n');
    return 1;
  } else {
    command = options.pid !== undefined ? `release pid ${options.pid}` : `release ${options.id}`;
  }
  let answer: string;
  try {
    // A relay answers when the pull is complete: as long as that takes (the daemon's stall timeout bounds it).
    // Its first line says that the pull runs: from then on restores of the checkpoint are served (--status-fd).
    const onLine = (line: string) => {
      if (line.startsWith('relaying ')) signalStatusFd(options.relay?.statusFd);
    };
    answer = await sendStagingCommand(options.controlSocket, command, options.action === 'relay' ? 0 : undefined, onLine);
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
    for (const c of list) process.stdout.write(listLine(c));
  } else {
    if (options.action === 'relay' && !options.relay?.wait) signalStatusFd(options.relay?.statusFd);
    process.stdout.write(body + '\n');
  }
  return 0;
}
