// What criu does around a long-running action: --status-fd readiness, --pidfile.
import fs from 'node:fs';

/** Writes one '\0' byte to the fd and closes it, as criu's status_ready() does. */
export function signalStatusFd(fd: number | undefined): void {
  if (fd === undefined) return;
  try {
    fs.writeSync(fd, Buffer.from([0]));
    fs.closeSync(fd);
  } catch (error) {
    throw new Error(`--status-fd ${fd}: cannot write the readiness byte (${(error as Error).message}) — pass an fd open for writing`);
  }
}

export function writePidfile(file: string | undefined, pid = process.pid): void {
  if (!file) return;
  fs.writeFileSync(file, `${pid}`);
}
