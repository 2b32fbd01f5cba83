// The link capability file (docs/protocol.md §7): `lazyd-link.json`, written by lazyd's staging page server into
// the images directory of each checkpoint it stages (the dump's -D, which travels to the destination), read by
// `lazyd lazy-pages` from its images at hand-over. Its presence is how the client learns that the page server
// is lazyd, so that it may open with a HELLO; without it the client speaks plain CRIU, byte for byte.
// Mode 0600: the token lets whoever holds it fetch that checkpoint's pages (as the images themselves do).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../images/index.js';

export const LINK_FILE_NAME = 'lazyd-link.json';
/** The link protocol version; native/core/wire/link_ext.h kLinkVersion is its twin. */
export const LINK_VERSION = 1;
/** Features a version-1 link may name (link_ext.h kFeature*). */
export const LINK_FEATURES = ['bind', 'checksum', 'priority', 'resume'] as const;

export interface LinkCapability {
  version: number;
  features: string[];
  /** 32 lower-case hex digits: the staged checkpoint's token. */
  token: string;
  /** The staged checkpoint's id on the server that wrote it (informational). */
  checkpoint: number;
  /**
   * SHA-256 (hex) of the inventory.img beside the file when it was written (relayed checkpoints: the file sits in
   * the dump's -D, which is often reused). Each dump writes its own inventory (it holds the dump's uptime), so a
   * file left by an earlier dump is told from a current one: see linkMatchesImages.
   */
  inventory?: string;
}

const TOKEN_PATTERN = /^[0-9a-f]{32}$/;
const SHA256_PATTERN = /^[0-9a-f]{64}$/;

/** SHA-256 (hex) of dir/inventory.img, or undefined when it cannot be read. */
export function inventoryDigest(dir: string): string | undefined {
  try {
    return createHash('sha256').update(readFileSync(path.join(dir, 'inventory.img'))).digest('hex');
  } catch {
    return undefined;
  }
}

/**
 * False when the capability names an inventory and dir's inventory.img is another: the file was left by an earlier
 * dump into the same directory (its token names a checkpoint that is gone, and the page server may now be a stock
 * `criu dump --lazy-pages`, which must never get a HELLO).
 */
export function linkMatchesImages(capability: LinkCapability, dir: string): boolean {
  return capability.inventory === undefined || capability.inventory === inventoryDigest(dir);
}

export function linkFilePath(dir: string): string {
  return path.join(dir, LINK_FILE_NAME);
}

export async function writeLinkCapability(dir: string, capability: LinkCapability): Promise<string> {
  const file = linkFilePath(dir);
  await writeFileAtomic(file, Buffer.from(`${JSON.stringify(capability)}\n`));
  return file;
}

/**
 * The capability in dir, or null when there is none. A file that is there but not a valid capability throws one
 * line naming the file and the fix: silently falling back to plain CRIU would hide a broken hand-over.
 */
export async function readLinkCapability(dir: string): Promise<LinkCapability | null> {
  const file = linkFilePath(dir);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`${file}: cannot read the link capability (${(err as Error).message}); fix its permissions or remove it to restore as with a stock CRIU page server`);
  }
  return parseLinkCapability(text, file);
}

export function parseLinkCapability(text: string, file = LINK_FILE_NAME): LinkCapability {
  const fix = 'remove it to restore as with a stock CRIU page server, or copy it again from the source';
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`${file}: not JSON; ${fix}`);
  }
  const cap = value as Partial<LinkCapability>;
  if (typeof cap !== 'object' || cap === null || typeof cap.version !== 'number') throw new Error(`${file}: no version; ${fix}`);
  if (typeof cap.token !== 'string' || !TOKEN_PATTERN.test(cap.token)) throw new Error(`${file}: the token is not 32 hex digits; ${fix}`);
  if (!Array.isArray(cap.features) || cap.features.some((f) => typeof f !== 'string')) throw new Error(`${file}: features is not a list of names; ${fix}`);
  if (cap.inventory !== undefined && (typeof cap.inventory !== 'string' || !SHA256_PATTERN.test(cap.inventory))) {
    throw new Error(`${file}: inventory is not 64 hex digits; ${fix}`);
  }
  return {
    version: cap.version,
    features: cap.features,
    token: cap.token,
    checkpoint: Number(cap.checkpoint ?? 0),
    ...(cap.inventory !== undefined ? { inventory: cap.inventory } : {}),
  };
}
