// systemd Type=notify: READY=1 once lazyd serves, STATUS=<one line> as its state changes, STOPPING=1 when it
// drains, RELOADING is not used (SIGHUP only reopens the log file). The datagram goes to $NOTIFY_SOCKET through the
// native sd_notify_send() (Node's dgram module cannot send on unix datagram sockets). Without NOTIFY_SOCKET
// every call is a no-op.
import { loadNative } from '../native.js';
import type { Logger } from '../log.js';

export class SystemdNotifier {
  private readonly socket: string | undefined;
  private lastStatus = '';
  private warned = false;

  constructor(
    private readonly logger?: Logger,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    this.socket = env.NOTIFY_SOCKET || undefined;
  }

  get enabled(): boolean {
    return this.socket !== undefined;
  }

  ready(status?: string): void {
    if (status !== undefined) this.lastStatus = status;
    this.send(`READY=1\nMAINPID=${process.pid}` + (status !== undefined ? `\nSTATUS=${status}` : ''));
  }

  /** Sent only when the text changed. */
  status(text: string): void {
    if (text === this.lastStatus) return;
    this.lastStatus = text;
    this.send(`STATUS=${text}`);
  }

  stopping(status?: string): void {
    this.send('STOPPING=1' + (status !== undefined ? `\nSTATUS=${status}` : ''));
  }

  private send(text: string): void {
    if (!this.socket) return;
    try {
      loadNative().notify(this.socket, text);
    } catch (error) {
      // systemd gone or the socket unreachable: the service still runs; say so once.
      if (this.warned) return;
      this.warned = true;
      this.logger?.warn(`cannot notify systemd at NOTIFY_SOCKET=${this.socket}: ${(error as Error).message} — readiness and status updates are lost`);
    }
  }
}
