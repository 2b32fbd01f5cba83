// Failover's restore on the standby: `lazyd lazy-pages -D <committed epoch>` serving the pages from the standby's
// own images (no page crosses the network), then `criu restore --lazy-pages -d` (src/agent/restore.ts).
import { runRestore, startLazyPages, type LazyPagesChild } from './restore.js';

/** Lazy restore of `dir`; resolves once the tree runs (criu restore -d has returned). */
export async function restoreLocally(criu: string, dir: string): Promise<{ pid: number; lazyPages: LazyPagesChild }> {
  const lazyPages = await startLazyPages(dir, 'local');
  try {
    const { pid } = await runRestore(criu, dir).result;
    return { pid, lazyPages };
  } catch (error) {
    lazyPages.child.kill('SIGTERM');
    throw error;
  }
}
