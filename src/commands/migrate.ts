// `lazyd migrate --pid PID --to HOST:PORT`: one command that moves a running process tree to the host of a
// `lazyd agent`, post-copy (src/migrate/client.ts has the sequence and the point of no return). Prints progress
// on stderr (a live line on a terminal, JSON lines otherwise) and the report on stdout; the exit code says which
// side owns the process (src/migrate/report.ts, EXIT).
import { loadNative } from '../native.js';
import { defaultWorkDir, migrate } from '../migrate/client.js';
import { nodeTlsOptions } from '../migrate/node-tls.js';
import { tlsOptionsFrom } from '../cli/tls-options.js';
import { EXIT, formatReport, MigrationProgress } from '../migrate/report.js';
import { PRE_COPY_LIMITS } from '../migrate/pre-copy-rules.js';
import type { Values } from '../config/flag.js';
import { MIGRATE } from '../config/flags.js';

export type MigrateValues = Values<typeof MIGRATE.flags>;

/** "host:port" or "[v6]:port". */
export function parseHostPort(text: string, flagName: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:[\]]+):(\d+)$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new Error(`${flagName} ${JSON.stringify(text)}: expected HOST:PORT (IPv6: [ADDR]:PORT)`);
  return { host: m[1], port };
}

export async function runMigrate(values: MigrateValues): Promise<number> {
  let to;
  let tls;
  let nativeTls;
  try {
    to = parseHostPort(values.to!, '--to');
    tls = nodeTlsOptions(values);
    nativeTls = tlsOptionsFrom(values, undefined, (message) => process.stderr.write(`lazyd migrate: ${message}\n`));
  } catch (error) {
    process.stderr.write(`lazyd migrate: ${(error as Error).message}\n`);
    return EXIT.untouched;
  }
  const pageSize = loadNative().pageSize;
  const progress = new MigrationProgress(pageSize);
  const report = await migrate({
    pid: values.pid!,
    to,
    criu: values.criu,
    tls,
    nativeTls,
    tlsVerifyName: !values.tlsNoCnVerify,
    linkTimeoutMs: values.linkTimeout * 1000,
    pagePort: values.pagePort,
    preCopy: values.preCopy,
    preCopyLimits: { ...PRE_COPY_LIMITS, maxIterations: values.preCopyMaxIterations },
    workDir: values.dumpDir ?? defaultWorkDir(),
    keepImages: values.keepImages,
    pageSize,
    progress,
  });
  process.stderr.write(`${report.message}\n`);
  process.stdout.write(values.json ? `${JSON.stringify(report)}\n` : `${formatReport(report)}\n`);
  return report.exitCode;
}
