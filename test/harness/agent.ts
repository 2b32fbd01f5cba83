// `lazyd migrate` between two hosts made of network namespaces (netns.ts): a `lazyd agent` in the destination
// namespace, the self-verifying workload and `lazyd migrate` in the source namespace; the link between them can
// be cut (every packet between the two addresses dropped on the way in, on both ends). Also the certificates a
// migration's TLS needs: both addresses in every certificate, since each end checks the other's name.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { lazydBin } from './page-server.js';
import { Proc, pollFor, runCommand, startWithStatusFd } from './process.js';
import { DESTINATION_ADDRESS, SOURCE_ADDRESS, type TwoHosts } from './netns.js';
import {
  buildWorkload,
  instanceDirs,
  killWorkload,
  lastPassSum,
  logOffset,
  nowNs,
  waitForAllPasses,
  type PassLine,
  type Workload,
  type WorkloadOptions,
  startWorkload,
} from './workload.js';
import type { MigrationReport } from '../../src/migrate/report.js';

export interface Agent {
  proc: Proc;
  address: string;
  port: number;
  stateDir: string;
  logFile: string;
  stop(): Promise<void>;
}

export interface AgentOptions {
  /** The destination host's network namespace; without one, the agent runs in this host's. */
  netns?: string;
  address?: string;
  criu: string;
  stateDir: string;
  extraArgs?: string[];
  /** Run it in a mount namespace of its own with an empty tmpfs over this directory (the host lacks those files). */
  hideDir?: string;
}

/** Starts `lazyd agent --listen ADDR:0` and resolves once it listens (its --status-fd byte), with the port it printed. */
export async function startAgent(options: AgentOptions): Promise<Agent> {
  const address = options.address ?? DESTINATION_ADDRESS;
  fs.mkdirSync(options.stateDir, { recursive: true });
  const logFile = path.join(options.stateDir, 'agent.log');
  const agentArgs = [
    lazydBin(), 'agent', '--listen', `${address}:0`, '--criu', options.criu, '--state-dir', options.stateDir,
    '-o', logFile, '--log-format', 'json', '-v4', '--status-fd', '3', ...(options.extraArgs ?? []),
  ];
  let stdout = '';
  const spec = options.hideDir
    ? {
        name: 'lazyd agent',
        file: 'unshare',
        args: ['-m', '--propagation', 'private', '--', 'sh', '-c', 'mount -t tmpfs lazyd-hidden "$1" && shift && exec "$@"', 'sh', options.hideDir, process.execPath, ...agentArgs],
      }
    : { name: 'lazyd agent', file: process.execPath, args: agentArgs };
  const proc = await startWithStatusFd({ ...spec, cwd: options.stateDir, logFile, netns: options.netns }, 20_000, (text) => (stdout += text));
  const port = await pollFor('the agent to print its port', 5000, () => {
    const m = /^(\d+)$/m.exec(stdout);
    return m ? Number(m[1]) : undefined;
  });
  return {
    proc,
    address,
    port,
    stateDir: options.stateDir,
    logFile,
    async stop() {
      await proc.stop(15_000);
    },
  };
}

/** A running `lazyd migrate`: its progress lines as they come, and its report once it exits. */
export interface MigrateRun {
  proc: Proc;
  /** Progress and note objects (stderr JSON lines), as they arrive. */
  events: Record<string, unknown>[];
  /** stderr lines that are not JSON (the outcome line). */
  lines: string[];
  /** Resolves once an event matching `test` has arrived (rejects when lazyd migrate exits first). */
  waitForEvent(what: string, test: (event: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Resolves with its exit code and the parsed --json report. */
  finished: Promise<{ code: number | null; report: MigrationReport; stderr: string }>;
}

export function runMigrate(options: { netns: string; pid: number; agent: Agent; criu: string; dumpDir: string; extraArgs?: string[] }): MigrateRun {
  const args = [
    lazydBin(), 'migrate', '--pid', String(options.pid), '--to', `${options.agent.address}:${options.agent.port}`,
    '--criu', options.criu, '--dump-dir', options.dumpDir, '--json', ...(options.extraArgs ?? []),
  ];
  const proc = new Proc({ name: 'lazyd migrate', file: process.execPath, args, netns: options.netns }, ['ignore', 'pipe', 'pipe']);
  const events: Record<string, unknown>[] = [];
  const lines: string[] = [];
  let stdout = '';
  let stderr = '';
  let partial = '';
  const waiters: { test: (event: Record<string, unknown>) => boolean; resolve: (event: Record<string, unknown>) => void }[] = [];
  proc.child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  proc.child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    partial += chunk.toString();
    const all = partial.split('\n');
    partial = all.pop()!;
    for (const line of all) {
      let event: Record<string, unknown> | undefined;
      try {
        event = JSON.parse(line) as Record<string, unknown>;
      } catch {
        lines.push(line);
        continue;
      }
      events.push(event);
      for (const waiter of [...waiters]) {
        if (waiter.test(event)) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve(event);
        }
      }
    }
  });
  const finished = proc.exited.then((exit) => {
    let report: MigrationReport;
    try {
      report = JSON.parse(stdout) as MigrationReport;
    } catch {
      throw new Error(`lazyd migrate (exit ${exit.code ?? exit.signal}) printed no JSON report; stderr:\n${stderr}\nstdout:\n${stdout}`);
    }
    return { code: exit.code, report, stderr };
  });
  return {
    proc,
    events,
    lines,
    finished,
    waitForEvent(what, test, timeoutMs = 60_000) {
      const seen = events.find(test);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for lazyd migrate's ${what}; stderr:\n${stderr}`)), timeoutMs);
        waiters.push({
          test,
          resolve: (event) => {
            clearTimeout(timer);
            resolve(event);
          },
        });
        void proc.exited.then(() => {
          clearTimeout(timer);
          reject(new Error(`lazyd migrate exited before its ${what}; stderr:\n${stderr}`));
        });
      });
    },
  };
}

/** The workload in the source namespace, healthy (clean passes seen) and with its pre-migration pass sums. */
export interface SourceWorkload {
  workload: Workload;
  dir: string;
  children: number;
  sums: (string | undefined)[];
}

export async function startSourceWorkload(dir: string, options: WorkloadOptions, netns?: string): Promise<SourceWorkload> {
  const binary = await buildWorkload();
  const workload = await startWorkload(binary, dir, options, 15_000, netns);
  const children = options.children ?? 0;
  await waitForAllPasses(dir, children, 1, 20_000, { pid: workload.pid });
  return { workload, dir, children, sums: instanceDirs(dir, children).map((d) => lastPassSum(d)) };
}

/**
 * Clean passes of every instance with the pre-migration sums, begun from now on, by the process `pid` (the
 * restored root on the destination, or the resumed original).
 */
export async function verifyRunning(source: SourceWorkload, pid: number, passes = 2, timeoutMs = 30_000): Promise<PassLine[][]> {
  const offsets = instanceDirs(source.dir, source.children).map((d) => logOffset(d));
  return waitForAllPasses(source.dir, source.children, passes, timeoutMs, { sinceNs: nowNs(), fromOffsets: offsets, expectSums: source.sums, pid });
}

export async function stopSourceWorkload(source: SourceWorkload): Promise<void> {
  await killWorkload(source.workload);
}

function iptables(netns: string, args: string[]): void {
  execFileSync('nsenter', [`--net=/run/netns/${netns}`, '--', 'iptables', '-w', ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
}

/** Cuts the link: every packet from the other host is dropped on arrival, on both ends (no reset, no FIN: silence). */
export function cutLink(hosts: TwoHosts): void {
  iptables(hosts.source, ['-I', 'INPUT', '1', '-s', hosts.destinationAddress, '-j', 'DROP']);
  iptables(hosts.destination, ['-I', 'INPUT', '1', '-s', hosts.sourceAddress, '-j', 'DROP']);
}

/** Undoes cutLink(). */
export function healLink(hosts: TwoHosts): void {
  iptables(hosts.source, ['-D', 'INPUT', '-s', hosts.destinationAddress, '-j', 'DROP']);
  iptables(hosts.destination, ['-D', 'INPUT', '-s', hosts.sourceAddress, '-j', 'DROP']);
}

// ---------------------------------------------------------------- certificates

export interface MigrationPki {
  ca: string;
  source: { cert: string; key: string };
  destination: { cert: string; key: string };
  /** Signed by a CA nobody trusts. */
  untrusted: { cert: string; key: string };
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

async function openssl(dir: string, args: string[]): Promise<void> {
  await runCommand({ name: `openssl ${args[0]}`, file: 'openssl', args, cwd: dir }, 30_000);
}

async function ca(dir: string, name: string): Promise<void> {
  await openssl(dir, [
    'req', '-x509', ...EC, '-keyout', `${name}-key.pem`, '-out', `${name}.pem`, '-days', '7', '-subj', `/CN=lazyd migrate ${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

async function leaf(dir: string, name: string, signer: string, serial: number): Promise<{ cert: string; key: string }> {
  const san = `IP:${SOURCE_ADDRESS},IP:${DESTINATION_ADDRESS},IP:127.0.0.1`;
  fs.writeFileSync(
    path.join(dir, `${name}.ext`),
    `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n`,
  );
  await openssl(dir, ['req', ...EC, '-keyout', `${name}-key.pem`, '-out', `${name}.csr`, '-subj', `/CN=lazyd migrate ${name}`]);
  await openssl(dir, [
    'x509', '-req', '-in', `${name}.csr`, '-CA', `${signer}.pem`, '-CAkey', `${signer}-key.pem`, '-set_serial', String(serial),
    '-days', '7', '-out', `${name}.pem`, '-extfile', `${name}.ext`,
  ]);
  return { cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}-key.pem`) };
}

export async function makeMigrationPki(dir: string): Promise<MigrationPki> {
  fs.mkdirSync(dir, { recursive: true });
  await ca(dir, 'ca');
  await ca(dir, 'other-ca');
  return {
    ca: path.join(dir, 'ca.pem'),
    source: await leaf(dir, 'source', 'ca', 1),
    destination: await leaf(dir, 'destination', 'ca', 2),
    untrusted: await leaf(dir, 'untrusted', 'other-ca', 1),
  };
}

export function migrationTlsArgs(pki: MigrationPki, who: { cert: string; key: string }): string[] {
  return ['--tls', '--tls-cacert', pki.ca, '--tls-cert', who.cert, '--tls-key', who.key];
}
