// lazyd replicate --tracking: how each epoch finds the pages that changed since the committed one.
//   dirty    the kernel's soft-dirty bits through CRIU (`criu dump --leave-running --track-mem`, from the second
//            epoch on with --prev-images-dir ../epoch-<previous>): CRIU writes only the dirtied pages, the rest
//            are pagemap entries flagged in-parent; the primary flattens the epoch onto the previous one
//            (flatten.ts) and the pagemap says which pages changed — nothing is hashed per page.
//   compare  every epoch dumps all memory; a SHA-256 per page against the committed epoch (page-delta.ts).
//   full     every page, every epoch (the baseline).
//   auto     dirty where `criu check --feature mem_dirty_track` passes, else compare.
// The probe is criu-host.ts's criuFeature, the one `lazyd migrate --pre-copy` uses.
import type { REPLICATE_TRACKING } from '../config/flags.js';

export type TrackingFlag = (typeof REPLICATE_TRACKING)[number];
export type TrackingMode = 'dirty' | 'compare' | 'full';

export interface TrackingChoice {
  mode: TrackingMode;
  /** The one line that says which mode runs, and why when --tracking auto chose. */
  line: string;
}

const DESCRIBE: Record<TrackingMode, string> = {
  dirty: "dirty-page tracking (criu dump --track-mem on the previous epoch: CRIU writes only the pages dirtied since)",
  compare: 'page comparison (every epoch reads all memory; SHA-256 per page against the committed epoch)',
  full: 'full (every page, every epoch)',
};

/**
 * The mode --tracking asks for on this host. `probe` runs `criu check --feature mem_dirty_track` (undefined: the
 * kernel tracks dirty memory; else criu's last line) and is called only for auto and dirty. Throws one line when
 * dirty was asked for and the kernel cannot.
 */
export function chooseTracking(flag: TrackingFlag, probe: () => string | undefined): TrackingChoice {
  if (flag === 'compare' || flag === 'full') return { mode: flag, line: `mode: ${DESCRIBE[flag]} (--tracking ${flag})` };
  const missing = probe();
  if (missing === undefined) return { mode: 'dirty', line: `mode: ${DESCRIBE.dirty} (--tracking ${flag}: criu check --feature mem_dirty_track passes)` };
  if (flag === 'dirty') {
    throw new Error(
      `--tracking dirty: this kernel does not track dirty memory (criu check --feature mem_dirty_track: ${missing}) — ` +
        'use --tracking compare (or auto), or a kernel built with CONFIG_MEM_SOFT_DIRTY',
    );
  }
  return { mode: 'compare', line: `mode: ${DESCRIBE.compare} (--tracking auto: this kernel does not track dirty memory, criu check --feature mem_dirty_track: ${missing})` };
}
