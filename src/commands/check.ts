// `lazyd check`: can this host run each of lazyd's roles? Every fact is asked of the kernel or of CRIU itself
// (nothing is assumed from versions), and every failure names its fix. Exit 0 when every role can run.
//
//   role         what runs on the host                                  needs
//   page-server  criu dump, then lazyd --page-server (migration source)  privileges, criu, fs.pipe-max-size
//   staging      criu dump --page-server into lazyd (diskless source)    privileges, criu, fs.pipe-max-size, memfd
//   lazy-pages   criu restore --lazy-pages + lazyd lazy-pages (dest.)    privileges, criu, userfaultfd, uffd features
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { loadNative, type HostProbe } from '../native.js';

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface CheckItem {
  name: string;
  status: CheckStatus;
  detail: string;
  fix?: string;
}

export interface RoleResult {
  role: string;
  what: string;
  ok: boolean;
  failing: string[];
}

export interface CheckReport {
  items: CheckItem[];
  roles: RoleResult[];
  ok: boolean;
}

const ROLES: { role: string; what: string; needs: string[] }[] = [
  { role: 'page-server', what: 'migration source: criu dump, then lazyd --page-server', needs: ['privileges', 'criu', 'fs.pipe-max-size'] },
  { role: 'staging', what: 'diskless source: criu dump --page-server into lazyd', needs: ['privileges', 'criu', 'fs.pipe-max-size', 'memfd'] },
  {
    role: 'lazy-pages',
    what: 'destination: criu restore --lazy-pages with lazyd lazy-pages',
    needs: ['privileges', 'criu', 'userfaultfd', 'uffd features', 'criu uffd-noncoop'],
  },
];

const CAP_SYS_ADMIN = 21n;
const CAP_SYS_PTRACE = 19n;
const CAP_CHECKPOINT_RESTORE = 40n;
/** The kernel's default fs.pipe-max-size; criu's page pipes grow up to it. */
const PIPE_MAX_MIN = 1024 * 1024;
/** What `criu page-server --lazy-pages` needs to serve a lazy restore (see test/harness/criu.ts). */
const PIPE_MAX_CRIU_LAZY = 4 * 1024 * 1024;

function errnoName(errno: number): string {
  const names = os.constants.errno as Record<string, number>;
  return Object.keys(names).find((k) => names[k] === errno) ?? `errno ${errno}`;
}

function readText(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function effectiveCaps(): bigint {
  const status = readText('/proc/self/status') ?? '';
  const match = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  return match ? BigInt('0x' + match[1]) : 0n;
}

const has = (caps: bigint, cap: bigint) => ((caps >> cap) & 1n) === 1n;

function checkPrivileges(): CheckItem {
  const uid = process.geteuid?.() ?? -1;
  const caps = effectiveCaps();
  const admin = has(caps, CAP_SYS_ADMIN) || has(caps, CAP_CHECKPOINT_RESTORE);
  const ptrace = has(caps, CAP_SYS_PTRACE);
  const detail = `uid ${uid}, CAP_SYS_ADMIN ${has(caps, CAP_SYS_ADMIN) ? 'yes' : 'no'}, CAP_CHECKPOINT_RESTORE ${
    has(caps, CAP_CHECKPOINT_RESTORE) ? 'yes' : 'no'
  }, CAP_SYS_PTRACE ${ptrace ? 'yes' : 'no'}`;
  if (uid === 0 && admin && ptrace) return { name: 'privileges', status: 'ok', detail };
  return {
    name: 'privileges',
    status: 'fail',
    detail,
    fix: 'run lazyd and criu as root with CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE) and CAP_SYS_PTRACE — in a container, grant them',
  };
}

function checkUserfaultfd(probe: HostProbe): CheckItem {
  const unpriv = readText('/proc/sys/vm/unprivileged_userfaultfd');
  const { syscallErrno, deviceErrno } = probe.uffd;
  const ways = [syscallErrno === 0 ? 'the userfaultfd syscall' : undefined, deviceErrno === 0 ? '/dev/userfaultfd' : undefined].filter(Boolean);
  const detail =
    `syscall: ${syscallErrno ? errnoName(syscallErrno) : 'ok'}, /dev/userfaultfd: ${deviceErrno ? errnoName(deviceErrno) : 'ok'}` +
    (unpriv !== undefined ? `, vm.unprivileged_userfaultfd = ${unpriv}` : '');
  if (ways.length) return { name: 'userfaultfd', status: 'ok', detail };
  const fix =
    syscallErrno === 38 /* ENOSYS */ && deviceErrno === 2 /* ENOENT */
      ? 'this kernel has no userfaultfd: boot one built with CONFIG_USERFAULTFD=y'
      : syscallErrno === 1 /* EPERM */
        ? 'run as root with CAP_SYS_PTRACE, or `sysctl -w vm.unprivileged_userfaultfd=1`, or make /dev/userfaultfd readable and writable for this user'
        : 'check the kernel configuration (CONFIG_USERFAULTFD) and seccomp/LSM policies that block userfaultfd';
  return { name: 'userfaultfd', status: 'fail', detail, fix };
}

const FEATURE_NAMES: [number, string][] = [
  [0x2, 'EVENT_FORK'],
  [0x4, 'EVENT_REMAP'],
  [0x8, 'EVENT_REMOVE'],
  [0x40, 'EVENT_UNMAP'],
];

function checkFeatures(probe: HostProbe): CheckItem {
  const { features, noncoopErrno, noncoopFeatures, apiErrno } = probe.uffd;
  const needed = FEATURE_NAMES.filter(([bit]) => (noncoopFeatures & bit) !== 0);
  const missing = needed.filter(([bit]) => (features & bit) === 0).map(([, name]) => name);
  const detail = `needs ${needed.map(([, n]) => n).join(', ')}` + (apiErrno ? `; UFFDIO_API: ${errnoName(apiErrno)}` : '');
  if (apiErrno) return { name: 'uffd features', status: 'fail', detail, fix: 'make userfaultfd work first (see userfaultfd)' };
  if (missing.length) {
    return { name: 'uffd features', status: 'fail', detail: `${detail}; the kernel lacks ${missing.join(', ')}`, fix: 'a Linux kernel >= 4.11 with userfaultfd' };
  }
  if (noncoopErrno) {
    return {
      name: 'uffd features',
      status: 'fail',
      detail: `${detail}; asking for them fails with ${errnoName(noncoopErrno)}`,
      fix:
        noncoopErrno === 1
          ? 'EVENT_FORK needs CAP_SYS_PTRACE: run criu restore and lazyd as root with CAP_SYS_PTRACE (a container needs it granted)'
          : 'check seccomp/LSM policies on the userfaultfd ioctls',
    };
  }
  return { name: 'uffd features', status: 'ok', detail: `${needed.map(([, n]) => n).join(', ')} granted` };
}

export function checkPipeMaxSize(text = readText('/proc/sys/fs/pipe-max-size')): CheckItem {
  const value = Number(text);
  if (text === undefined || !Number.isFinite(value)) {
    return { name: 'fs.pipe-max-size', status: 'fail', detail: 'cannot read /proc/sys/fs/pipe-max-size', fix: 'mount /proc' };
  }
  const fix = `sysctl -w fs.pipe-max-size=${PIPE_MAX_CRIU_LAZY} (and fs.pipe-max-size = ${PIPE_MAX_CRIU_LAZY} in /etc/sysctl.d/ to keep it)`;
  if (value < PIPE_MAX_MIN) {
    return { name: 'fs.pipe-max-size', status: 'fail', detail: `${value} bytes: criu dump's page pipes need at least ${PIPE_MAX_MIN}`, fix };
  }
  if (value < PIPE_MAX_CRIU_LAZY) {
    return {
      name: 'fs.pipe-max-size',
      status: 'warn',
      detail: `${value} bytes: enough for lazyd, but criu's own lazy page server (criu page-server --lazy-pages) needs ${PIPE_MAX_CRIU_LAZY}`,
      fix,
    };
  }
  return { name: 'fs.pipe-max-size', status: 'ok', detail: `${value} bytes` };
}

function checkMemfd(probe: HostProbe): CheckItem {
  if (probe.memfdErrno === 0) return { name: 'memfd', status: 'ok', detail: 'memfd_create with sealing works' };
  return {
    name: 'memfd',
    status: 'fail',
    detail: `memfd_create(MFD_ALLOW_SEALING) + F_ADD_SEALS: ${errnoName(probe.memfdErrno)}`,
    fix: 'a kernel with memfd sealing (Linux >= 3.17) and no seccomp policy blocking memfd_create',
  };
}

export interface CriuFound {
  path: string;
  version?: string;
  error?: string;
  uffdNoncoop?: boolean;
  uffdError?: string;
}

/** Every CRIU this host has: /opt/lazyd-criu/<version>/criu (scripts/install-criu.sh) and `criu` on PATH. */
export function findCriuBinaries(prefix = process.env.LAZYD_CRIU_PREFIX ?? '/opt/lazyd-criu'): string[] {
  const found: string[] = [];
  // 4.1 -> 4.1.1 style symlinks name one binary twice: keep the first name of each.
  const add = (file: string) => {
    const real = fs.realpathSync(file);
    if (!found.some((f) => fs.realpathSync(f) === real)) found.push(file);
  };
  try {
    for (const name of fs.readdirSync(prefix).sort()) {
      const file = path.join(prefix, name, 'criu');
      if (isExecutable(file)) add(fs.realpathSync(file));
    }
  } catch {
    // no private prefix
  }
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (!dir) continue;
    const file = path.join(dir, 'criu');
    if (isExecutable(file)) {
      add(file);
      break;
    }
  }
  return found;
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function probeCriu(file: string): CriuFound {
  const version = spawnSync(file, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  const out: CriuFound = { path: file };
  const match = /Version:\s*(\S+)/.exec(version.stdout ?? '');
  if (version.status !== 0 || !match) {
    out.error = `\`${file} --version\` failed: ${(version.stderr || version.error?.message || `exit ${version.status}`).trim()}`;
    return out;
  }
  out.version = match[1];
  const check = spawnSync(file, ['check', '--feature', 'uffd-noncoop'], { encoding: 'utf8', timeout: 10_000 });
  out.uffdNoncoop = check.status === 0;
  if (!out.uffdNoncoop) {
    const text = `${check.stdout ?? ''}${check.stderr ?? ''}`.trim().split('\n').pop() ?? '';
    out.uffdError = text || `exit ${check.status}`;
  }
  return out;
}

function checkCriu(found: CriuFound[]): CheckItem[] {
  const usable = found.filter((c) => c.version);
  const list = found.map((c) => (c.version ? `${c.version} (${c.path})` : `${c.path}: ${c.error}`)).join(', ');
  const criu: CheckItem = usable.length
    ? { name: 'criu', status: found.length === usable.length ? 'ok' : 'warn', detail: list }
    : {
        name: 'criu',
        status: 'fail',
        detail: found.length ? list : 'no criu in /opt/lazyd-criu/*/criu or on PATH',
        fix: 'install CRIU: `bash scripts/install-criu.sh` (4.1.1 and 4.2.1 into /opt/lazyd-criu) or your distribution\'s criu package',
      };
  const noncoop = usable.filter((c) => c.uffdNoncoop);
  const uffd: CheckItem = noncoop.length
    ? {
        name: 'criu uffd-noncoop',
        status: noncoop.length === usable.length ? 'ok' : 'warn',
        detail: usable.map((c) => `${c.version}: ${c.uffdNoncoop ? 'supported' : c.uffdError}`).join('; '),
      }
    : {
        name: 'criu uffd-noncoop',
        status: 'fail',
        detail: usable.length ? usable.map((c) => `${c.version}: ${c.uffdError}`).join('; ') : 'no usable criu',
        fix: usable.length
          ? '`criu check --feature uffd-noncoop` fails: fix userfaultfd and its features first (see above)'
          : 'install CRIU first',
      };
  return [criu, uffd];
}

export function evaluateRoles(items: readonly CheckItem[]): RoleResult[] {
  return ROLES.map(({ role, what, needs }) => {
    const failing = needs.filter((name) => items.find((i) => i.name === name)?.status === 'fail');
    return { role, what, ok: failing.length === 0, failing };
  });
}

export function runChecks(): CheckReport {
  const probe = loadNative().probeHost();
  const items: CheckItem[] = [
    checkPrivileges(),
    checkUserfaultfd(probe),
    checkFeatures(probe),
    checkPipeMaxSize(),
    checkMemfd(probe),
    ...checkCriu(findCriuBinaries().map(probeCriu)),
  ];
  const roles = evaluateRoles(items);
  return { items, roles, ok: roles.every((r) => r.ok) };
}

export function formatReport(report: CheckReport): string {
  const mark = (s: CheckStatus) => (s === 'ok' ? 'ok  ' : s === 'warn' ? 'warn' : 'FAIL');
  const width = Math.max(...report.items.map((i) => i.name.length));
  const lines = [`lazyd check: Linux ${os.release()} ${os.arch()}`];
  for (const item of report.items) {
    lines.push(`  ${mark(item.status)}  ${item.name.padEnd(width)}  ${item.detail}`);
    if (item.fix && item.status !== 'ok') lines.push(`        ${''.padEnd(width)}  fix: ${item.fix}`);
  }
  lines.push('roles:');
  for (const role of report.roles) {
    lines.push(`  ${role.ok ? 'ok  ' : 'FAIL'}  ${role.role.padEnd(11)}  ${role.what}${role.ok ? '' : ` — fails: ${role.failing.join(', ')}`}`);
  }
  return lines.join('\n') + '\n';
}

export function runCheck(options: { json?: boolean }): number {
  const report = runChecks();
  process.stdout.write(options.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
  return report.ok ? 0 : 1;
}
