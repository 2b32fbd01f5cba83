// The lazyd link of a relayed checkpoint (docs/protocol.md §7.1): the native relay draws its token when the pull
// starts (startRelay), and this module writes it as lazyd-link.json (0600, atomic) into the dump's -D, beside the
// images that travel to the destination (`lazyd staging relay`), or into the images `lazyd migrate` ships to its
// agent. A destination `lazyd lazy-pages` that finds it opens with HELLO (bound to the checkpoint, every page
// checksummed where lazyd's store reads it); `criu lazy-pages` ignores it.
//
// A directory is often reused for the next dump, and `criu dump` leaves files it does not know: a file with a
// token that names nothing makes the next `lazyd lazy-pages` send a HELLO — to a stock `criu dump --lazy-pages`
// that is an unknown command, which fails its transfer. So a relay that has no token to write removes the file it
// finds, a released checkpoint's file is removed if it still holds that checkpoint's token, and the file names the
// dump's inventory.img (a SHA-256): `lazyd lazy-pages` ignores a file whose inventory is not the one beside it.
import fs from 'node:fs';
import path from 'node:path';
import { inventoryDigest, LINK_FEATURES, LINK_VERSION, linkFilePath, type LinkCapability } from '../link/capability-file.js';

export interface RelayLinkResult {
  /** The file written, or undefined. */
  file?: string;
  /** Why not (one line, for a warning): the checkpoint is then restored with CRIU's bytes only. */
  warning?: string;
}

/**
 * Writes dir/lazyd-link.json for relayed checkpoint #checkpoint with token (32 hex digits; "" when the native
 * side drew none), atomically (a temporary file renamed over it), mode 0600. Synchronous, on purpose: the relay's
 * events (its end, a release) must not run between the pull's start and the file, so that whoever is told the
 * pull runs finds the file, and a release finds it to remove. Never throws: without the file the checkpoint is
 * still served, to restores speaking plain CRIU.
 */
export function writeRelayLink(dir: string, checkpoint: number, token: string): RelayLinkResult {
  const file = linkFilePath(dir);
  if (!token) {
    removeQuietly(file);
    return { warning: `no link token could be drawn (getrandom failed): no ${file}, restores speak plain CRIU (no per-page checksums)` };
  }
  // The dump's inventory, so that a file left in a reused -D is not taken for the next dump's (linkMatchesImages).
  const inventory = inventoryDigest(dir);
  const capability: LinkCapability = { version: LINK_VERSION, features: [...LINK_FEATURES], token, checkpoint, ...(inventory ? { inventory } : {}) };
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${checkpoint}.tmp`);
  try {
    fs.writeFileSync(tmp, `${JSON.stringify(capability)}\n`, { mode: 0o600, flag: 'wx' });
    fs.renameSync(tmp, file);
    return { file };
  } catch (error) {
    removeQuietly(tmp);
    // A stale file from an earlier dump would name a dead token: better none.
    removeQuietly(file);
    return {
      warning:
        `cannot write ${file} (${(error as Error).message}): restores of this checkpoint speak plain CRIU (no ` +
        "per-page checksums); let the daemon write into the dump's -D to use the lazyd link",
    };
  }
}

/** A file that cannot be removed either stays; the caller's warning says restores speak plain CRIU. */
function removeQuietly(file: string): void {
  try {
    fs.rmSync(file, { force: true });
  } catch {
    // as above
  }
}

/** Removes file if it still holds token (a newer relay of the same directory may have replaced it). */
export async function removeRelayLink(file: string, token: string): Promise<boolean> {
  try {
    const text = await fs.promises.readFile(file, 'utf8');
    if ((JSON.parse(text) as { token?: unknown }).token !== token) return false;
    await fs.promises.rm(file, { force: true });
    return true;
  } catch {
    return false;
  }
}
