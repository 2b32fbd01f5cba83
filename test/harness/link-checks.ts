// What the lazyd link's end-to-end tests (link.test.ts, relay-link.test.ts) check a restore with: the workload's
// data area (where the flipping relay flips a bit), and the checksum-mismatch counter scraped from the destination
// daemon's metrics once its restore is done.
import fs from 'node:fs';
import path from 'node:path';
import { readPagemap, PE_LAZY } from '../../src/images/index.js';
import { E2E_TIMEOUTS as timeouts, pollFor, processAlive, type RestoreOptions } from './index.js';

export const CHECKSUM_METRIC = 'lazyd_page_checksum_mismatches_total';

/** The value of a counter in the Prometheus text at url, or undefined (not listening, no such sample). */
export async function scrapeCounter(url: string, name: string): Promise<number | undefined> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
    const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(await response.text());
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The largest lazy pagemap entry of the images in dir: the workload's data area (read and checked by the restored workload). */
export async function dataArea(dir: string): Promise<{ start: bigint; end: bigint }> {
  const file = fs.readdirSync(dir).find((f) => /^pagemap-\d+\.img$/.test(f))!;
  const pagemap = await readPagemap(path.join(dir, file), { checkPages: false });
  const lazy = pagemap.entries.filter((e) => e.flags & PE_LAZY).sort((a, b) => b.nrPages - a.nrPages)[0];
  return { start: BigInt(lazy.vaddr), end: BigInt(lazy.vaddr) + BigInt(lazy.nrPages) * 4096n };
}

/**
 * The daemon arguments and hook of a `lazyd lazy-pages` whose final CHECKSUM_METRIC is read: scraped once the
 * restore is done, then the metrics linger is ended (SIGTERM after a completed restore: exit 0). `mismatches()`
 * resolves with the count once the lazyRestore() that got the hook has returned.
 */
export function checksumScrape(): Pick<RestoreOptions, 'daemonArgs' | 'onDaemonReady'> & { mismatches(): Promise<number | undefined> } {
  let scraping: Promise<number | undefined> | undefined;
  return {
    daemonArgs: ['--metrics-address', '127.0.0.1:0', '--metrics-linger', '60'],
    onDaemonReady: (daemon, dstDir) => {
      const log = path.join(dstDir, 'lazy-pages.log');
      const url = /Metrics on (http:\/\/\S+\/metrics)/.exec(fs.readFileSync(log, 'utf8'))![1];
      scraping = (async () => {
        await pollFor('the restore done, or the daemon gone', timeouts.allPagesMs, async () =>
          fs.readFileSync(log, 'utf8').includes('Lazy pages done') || !processAlive(daemon.pid) ? true : undefined,
        );
        const count = await scrapeCounter(url, CHECKSUM_METRIC);
        daemon.kill('SIGTERM');
        return count;
      })();
      scraping.catch(() => daemon.kill('SIGKILL'));
    },
    mismatches: async () => scraping,
  };
}
