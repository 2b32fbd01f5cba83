// Two "hosts" on one machine: network namespaces lzb-src-<id> and lzb-dst-<id> joined by a veth pair
// (10.77.0.1 on the source, 10.77.0.2 on the destination), with a delay of RTT/2 on each end's way out, so every
// round trip between them costs what it would between real hosts (loopback hides it). Processes are put into a
// namespace with CommandSpec.netns (nsenter --net). Addresses are private to each pair of namespaces, so several
// pairs can exist at once. Every pair is deleted by destroy(), and on exit or SIGINT/SIGTERM of this process.
//
// The delay: `tc qdisc ... netem delay` where the kernel has sch_netem; otherwise (this project's CI kernel has
// no netem) an iptables NFQUEUE rule on the output hook of each veth end queues every packet to bench/netdelay/netdelay.c
// (NFQUEUE), which accepts it after the delay. Either way TCP itself is the kernel's. Packets held by netdelay
// stay charged to their socket, so tcp_limit_output_bytes (TCP small queues) is raised in both namespaces to let
// a whole delay's worth of data be in flight, as netem allows.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../../src/paths.js';

export const SOURCE_ADDRESS = '10.77.0.1';
export const DESTINATION_ADDRESS = '10.77.0.2';

export interface WireBytes {
  /** Bytes the source's veth sent (pages, replies) and received (requests), as the kernel counts them. */
  sourceTx: number;
  sourceRx: number;
}

export interface TwoHosts {
  source: string;
  destination: string;
  sourceAddress: string;
  destinationAddress: string;
  /** Current round-trip delay (ms). */
  readonly rttMs: number;
  /** How the delay is made: 'netem' or 'nfqueue' (netdelay), once setRtt() has set one. */
  readonly delayer: 'netem' | 'nfqueue' | undefined;
  /** Sets the delay to rttMs/2 on each veth end's way out (0: no delay at all). */
  setRtt(rttMs: number): Promise<void>;
  /** The source veth's byte counters (read them before and after, and subtract). */
  wireBytes(): WireBytes;
  /** Gives one end's veth another address of the /24 (a third "host" for allow-list tests: bind a client to it). */
  addAddress(side: 'source' | 'destination', address: string): void;
  /** Deletes both namespaces (and with them the veth pair). Safe to call twice. */
  destroy(): void;
}

function run(args: string[]): string {
  try {
    return execFileSync(args[0], args.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim();
    throw new Error(`${args.join(' ')} failed: ${stderr || (error as Error).message}`);
  }
}

/** Builds bench/netdelay/netdelay.c once per source version into build/netdelay/; returns the binary. */
export function buildNetdelay(): string {
  const source = path.join(repoRoot(), 'bench', 'netdelay', 'netdelay.c');
  const hash = createHash('sha256').update(fs.readFileSync(source)).digest('hex').slice(0, 12);
  const binary = path.join(repoRoot(), 'build', 'netdelay', `netdelay-${hash}`);
  if (fs.existsSync(binary)) return binary;
  fs.mkdirSync(path.dirname(binary), { recursive: true });
  const tmp = `${binary}.tmp-${process.pid}`;
  try {
    execFileSync('gcc', ['-O2', '-Wall', '-o', tmp, source, '-lnetfilter_queue', '-lnfnetlink'], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    throw new Error(
      `cannot build ${source}: ${(error as { stderr?: Buffer }).stderr?.toString().trim() || (error as Error).message} — ` +
        'install libnetfilter-queue-dev (scripts/setup.sh does)',
    );
  }
  fs.renameSync(tmp, binary);
  return binary;
}

let netemKnown: boolean | undefined;

/** Whether this kernel has sch_netem (asked once, by adding it to a scratch namespace's lo). */
function hasNetem(probeNs: string): boolean {
  if (netemKnown === undefined) {
    try {
      run(['ip', 'netns', 'exec', probeNs, 'tc', 'qdisc', 'add', 'dev', 'lo', 'root', 'netem', 'delay', '1ms']);
      run(['ip', 'netns', 'exec', probeNs, 'tc', 'qdisc', 'del', 'dev', 'lo', 'root']);
      netemKnown = true;
    } catch {
      netemKnown = false;
    }
  }
  return netemKnown;
}

/** Starts netdelay in a namespace and resolves once it is bound to its queue. */
async function startNetdelay(ns: string, queue: number, delayUs: number): Promise<ChildProcess> {
  const binary = buildNetdelay();
  const child = spawn('nsenter', [`--net=/run/netns/${ns}`, '--', binary, String(queue), String(delayUs)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`netdelay in ${ns} did not get ready: ${output}`)), 10_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`netdelay in ${ns} exited (${code ?? signal}): ${output.trim()}`));
    });
  });
  child.removeAllListeners('exit');
  child.unref();
  return child;
}

const live = new Set<TwoHosts>();
let hooked = false;

/** Deletes every live pair when the process exits or is interrupted. */
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  const destroyAll = () => {
    for (const hosts of [...live]) hosts.destroy();
  };
  process.on('exit', destroyAll);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      destroyAll();
      process.exit(signal === 'SIGINT' ? 130 : 143);
    });
  }
}

/**
 * Creates the pair of namespaces and the veth between them (needs root, iproute2 and the sch_netem module).
 * `id` makes the names unique (default: this process's pid).
 */
export function createTwoHosts(options: { id?: string } = {}): TwoHosts {
  const id = options.id ?? String(process.pid);
  const source = `lzb-src-${id}`;
  const destination = `lzb-dst-${id}`;
  // Interface names are limited to 15 bytes.
  const srcIf = `lzs${id}`.slice(0, 15);
  const dstIf = `lzd${id}`.slice(0, 15);
  let destroyed = false;
  let rttMs = 0;
  let delayer: TwoHosts['delayer'];
  const delayers: ChildProcess[] = [];
  // A fresh queue number per setRtt(): a killed netdelay may still hold its queue for a moment (EPERM otherwise).
  let queue = 0;
  const ends = [
    [source, srcIf],
    [destination, dstIf],
  ] as const;
  const clearDelay = () => {
    for (const [ns, dev] of ends) {
      for (const command of [
        ['ip', 'netns', 'exec', ns, 'tc', 'qdisc', 'del', 'dev', dev, 'root'],
        ['nsenter', `--net=/run/netns/${ns}`, '--', 'iptables', '-w', '-F', 'INPUT'],
      ]) {
        try {
          execFileSync(command[0], command.slice(1), { stdio: 'ignore', timeout: 10_000 });
        } catch {
          // nothing to delete
        }
      }
    }
    const killed = delayers.splice(0);
    for (const child of killed) {
      child.ref(); // keep the event loop alive until it is gone
      child.kill('SIGKILL');
    }
    return Promise.all(killed.map((child) => (child.exitCode !== null || child.signalCode !== null ? undefined : new Promise((r) => child.once('exit', r)))));
  };
  const hosts: TwoHosts = {
    source,
    destination,
    sourceAddress: SOURCE_ADDRESS,
    destinationAddress: DESTINATION_ADDRESS,
    get rttMs() {
      return rttMs;
    },
    get delayer() {
      return delayer;
    },
    async setRtt(ms: number) {
      await clearDelay();
      rttMs = 0;
      delayer = undefined;
      if (ms <= 0) return;
      const delayUs = Math.round((ms * 1000) / 2);
      if (hasNetem(source)) {
        for (const [ns, dev] of ends) {
          // limit: netem queues every packet for the delay; the default 1000 packets would drop at high rates.
          run(['ip', 'netns', 'exec', ns, 'tc', 'qdisc', 'replace', 'dev', dev, 'root', 'netem', 'delay', `${delayUs}us`, 'limit', '100000']);
        }
        delayer = 'netem';
      } else {
        queue = (queue % 60000) + 1;
        for (const [ns, dev] of ends) {
          delayers.push(await startNetdelay(ns, queue, delayUs));
          // iptables' NFQUEUE target: kernels without nft's own queue expression (NFT_QUEUE) have this one.
          run(['nsenter', `--net=/run/netns/${ns}`, '--', 'iptables', '-w', '-A', 'INPUT', '-i', dev, '-j', 'NFQUEUE', '--queue-num', String(queue)]);
        }
        delayer = 'nfqueue';
      }
      rttMs = ms;
    },
    wireBytes() {
      const info = JSON.parse(run(['ip', '-n', source, '-s', '-j', 'link', 'show', 'dev', srcIf]))[0];
      const stats = info.stats64 ?? info.stats;
      return { sourceTx: Number(stats.tx.bytes), sourceRx: Number(stats.rx.bytes) };
    },
    addAddress(side, address) {
      const [ns, dev] = side === 'source' ? [source, srcIf] : [destination, dstIf];
      run(['ip', '-n', ns, 'addr', 'add', `${address}/24`, 'dev', dev]);
    },
    destroy() {
      if (destroyed) return;
      destroyed = true;
      live.delete(hosts);
      for (const child of delayers.splice(0)) child.kill('SIGKILL');
      for (const ns of [source, destination]) {
        try {
          execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10_000 });
        } catch {
          // already gone
        }
      }
    },
  };
  hookExit();
  live.add(hosts);
  try {
    // Left over from a run killed with SIGKILL under the same id?
    for (const ns of [source, destination]) {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        // did not exist
      }
    }
    run(['ip', 'netns', 'add', source]);
    run(['ip', 'netns', 'add', destination]);
    run(['ip', 'link', 'add', srcIf, 'netns', source, 'type', 'veth', 'peer', 'name', dstIf, 'netns', destination]);
    run(['ip', '-n', source, 'addr', 'add', `${SOURCE_ADDRESS}/24`, 'dev', srcIf]);
    run(['ip', '-n', destination, 'addr', 'add', `${DESTINATION_ADDRESS}/24`, 'dev', dstIf]);
    for (const [ns, dev] of [
      [source, srcIf],
      [destination, dstIf],
    ]) {
      run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
      // MTU 64000 (as loopback's 64 KiB): netdelay pays per packet, so big packets keep it off the critical path.
      run(['ip', '-n', ns, 'link', 'set', dev, 'mtu', '64000', 'up']);
      // TCP small queues: let 64 MiB per socket wait in the delay (see the top).
      run(['nsenter', `--net=/run/netns/${ns}`, '--', 'sysctl', '-q', '-w', 'net.ipv4.tcp_limit_output_bytes=67108864']);
    }
  } catch (error) {
    hosts.destroy();
    throw new Error(`cannot create the two network namespaces: ${(error as Error).message}`);
  }
  return hosts;
}
