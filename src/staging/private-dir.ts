// The staging directory holds process memory at rest (the eager pages of every upload, and with --persist the lazy
// ones): only lazyd's own user (root) may enter it. Checked once at start, before the first upload can arrive.
//
// lazyd changes the mode only of a directory that is plainly a checkpoint's (empty, or holding CRIU images): a
// shared directory (/tmp, a home, /var/lib, the directory lazyd was started in) is refused, never chmod-ed,
// since other programs depend on its mode. A missing directory is left alone (an upload then fails naming it).
import fs from 'node:fs';
import path from 'node:path';

/** What ensurePrivateDir did, for the log: tightened its mode (from), or nothing. */
export type PrivateDirOutcome = { action: 'tightened'; fromMode: number } | { action: 'none' };

const octal = (mode: number) => mode.toString(8).padStart(4, '0');

/** What a checkpoint directory holds: CRIU's images, statistics and caches, and the logs, pidfiles and sockets of a dump or restore. */
const CHECKPOINT_FILE = /^(.*\.(img|log|pid|socket|sock|tmp)|stats-(dump|restore)|irmap-cache|\..*)$/;

/** A directory that holds nothing but a checkpoint's files, or nothing at all. */
function holdsOnlyImages(dir: string): boolean {
  return fs.readdirSync(dir).every((name) => CHECKPOINT_FILE.test(name));
}

/**
 * Makes `dir` a directory only this user can enter: sets a checkpoint directory that others can enter (group or
 * other read/search bits) to 0700. Throws an Error with one line when it is a symbolic link, not a directory,
 * another user's, writable by others (a shared directory), or holds other files than images while others can
 * enter it.
 */
export function ensurePrivateDir(dir: string, flag = '--staging-dir'): PrivateDirOutcome {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { action: 'none' };
    throw new Error(`${flag} ${dir}: ${(error as Error).message}`);
  }
  const fix = `give lazyd a directory of its own (mkdir -m 0700 DIR; ${flag} DIR and criu dump -D DIR)`;
  if (stat.isSymbolicLink()) throw new Error(`${flag} ${dir} is a symbolic link: name the directory itself (staged images hold process memory)`);
  if (!stat.isDirectory()) throw new Error(`${flag} ${dir} is not a directory`);
  const uid = process.geteuid?.() ?? 0;
  if (stat.uid !== uid) {
    throw new Error(`${flag} ${dir} belongs to uid ${stat.uid}, not to lazyd's uid ${uid}: staged images hold process memory — ${fix}`);
  }
  const mode = stat.mode & 0o7777;
  if ((mode & 0o077) === 0) return { action: 'none' };
  if ((mode & 0o022) !== 0 || (mode & 0o1000) !== 0) {
    throw new Error(`${flag} ${dir} is mode ${octal(mode)}: other users can write to it (a shared directory) and read what lazyd stages there (process memory) — ${fix}`);
  }
  if (path.resolve(dir) === path.parse(path.resolve(dir)).root || !holdsOnlyImages(dir)) {
    throw new Error(
      `${flag} ${dir} is mode ${octal(mode)}: other users can enter it and read what lazyd stages there (process memory), and it holds other files than checkpoint images, so lazyd leaves its mode alone — chmod 0700 it, or ${fix}`,
    );
  }
  fs.chmodSync(dir, mode & 0o7700);
  return { action: 'tightened', fromMode: mode };
}
