// What a migration asks of each host's CRIU before anything is frozen: the binary runs and says its version,
// userfaultfd works (destination), memory tracking for --pre-copy (source), and whether the destination's CRIU
// can restore what the source's writes.
import { spawnSync } from 'node:child_process';

export interface CriuHost {
  path: string;
  version: string;
}

/** `criu --version` → "4.2.1"; throws one line naming the binary and the flag that chooses it. */
export function probeCriu(file: string, flagName = '--criu'): CriuHost {
  const run = spawnSync(file, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  const match = /Version:\s*(\d+(?:\.\d+)*)/.exec(run.stdout ?? '');
  if (run.error || run.status !== 0 || !match) {
    const why = run.error ? run.error.message : (run.stderr || `exit ${run.status}`).trim();
    throw new Error(`CRIU not usable: \`${file} --version\` failed (${why}) — install CRIU or point ${flagName} at it`);
  }
  return { path: file, version: match[1] };
}

/** One `criu check --feature F`: undefined when supported, else criu's last line. */
export function criuFeature(file: string, feature: string): string | undefined {
  const run = spawnSync(file, ['check', '--feature', feature], { encoding: 'utf8', timeout: 20_000 });
  if (run.status === 0) return undefined;
  const text = `${run.stdout ?? ''}${run.stderr ?? ''}`.trim().split('\n').pop() ?? '';
  return text || `exit ${run.status}`;
}

function parts(version: string): number[] {
  return version.split('.').map((n) => Number(n));
}

/** Compares two dotted versions: <0, 0, >0. */
export function compareVersions(a: string, b: string): number {
  const x = parts(a);
  const y = parts(b);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? 0) - (y[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/**
 * Whether images written by CRIU `source` can be restored by CRIU `destination`: a newer minor release writes
 * what an older one misreads (4.2 moved the pagemap's page count to a new field, docs/protocol.md §0, so 4.1
 * would see every entry as empty), so source major.minor above destination's is refused. The message says how
 * to fix it.
 */
export function imageCompatibility(source: string, destination: string): string | undefined {
  const [sMajor, sMinor] = parts(source);
  const [dMajor, dMinor] = parts(destination);
  if (sMajor > dMajor || (sMajor === dMajor && (sMinor ?? 0) > (dMinor ?? 0))) {
    return (
      `the source's CRIU ${source} writes images the destination's CRIU ${destination} cannot restore ` +
      `(a newer CRIU's images on an older one) — install CRIU ${sMajor}.${sMinor ?? 0} or later on the destination ` +
      `(lazyd agent --criu), or use an older CRIU on the source (lazyd migrate --criu)`
    );
  }
  return undefined;
}

/** The page-server header layout the source's CRIU speaks (docs/protocol.md §0): 24 bytes up to 4.1, 32 from 4.2. */
export function headerSize(version: string): 24 | 32 {
  return compareVersions(version, '4.2') >= 0 ? 32 : 24;
}
