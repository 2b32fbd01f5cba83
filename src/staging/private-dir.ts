// The staging directory holds process memory at rest (the eager pages of every upload, and with --persist the lazy
// ones): only lazyd's own user (root) may enter it. Checked once at start, before the first upload can arrive.
import fs from 'node:fs';

/** What ensurePrivateDir did, for the log: created it, tightened its mode (from), or nothing. */
export type PrivateDirOutcome = { action: 'created' } | { action: 'tightened'; fromMode: number } | { action: 'none' };

/**
 * Makes `dir` a directory only this user can enter: creates it 0700 when missing, sets an existing one that
 * others can enter (any group or other bit) to 0700. Throws an Error with one line when it is not a directory,
 * is a symbolic link, or belongs to another user (lazyd will not take over someone else's directory).
 */
export function ensurePrivateDir(dir: string, flag = '--staging-dir'): PrivateDirOutcome {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`${flag} ${dir}: ${(error as Error).message}`);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.chmodSync(dir, 0o700); // mkdir's mode passes through the umask; and recursive parents keep theirs
    return { action: 'created' };
  }
  if (stat.isSymbolicLink()) throw new Error(`${flag} ${dir} is a symbolic link: give the directory itself (staged images hold process memory)`);
  if (!stat.isDirectory()) throw new Error(`${flag} ${dir} is not a directory`);
  const uid = process.geteuid?.() ?? 0;
  if (stat.uid !== uid) {
    throw new Error(
      `${flag} ${dir} belongs to uid ${stat.uid}, not to lazyd's uid ${uid}: staged images hold process memory, so lazyd keeps them only in a directory of its own user — chown ${uid} ${dir} or pick another ${flag}`,
    );
  }
  const mode = stat.mode & 0o7777;
  if ((mode & 0o077) === 0) return { action: 'none' };
  fs.chmodSync(dir, mode & 0o7700);
  return { action: 'tightened', fromMode: mode };
}
