// One migration into the agent: its own directory (<work dir>/<id>: the images, lazy-pages.socket, the logs),
// its own `lazyd lazy-pages` and `criu restore`, so several migrations at once never share anything.
//   hello → welcome (or refuse), and `lazyd lazy-pages` starts on the empty directory (it reads the images only
//   when the restore hands over: the engine is ready long before the restore needs it) → with --pre-copy, each
//   iteration's files between pre-dump and pre-dump-end, into a sibling directory (pre-dump-dirs.ts), answered
//   by pre-dump-stored → the final files → restore (the final directory linked to the last iteration):
//   [pre-restore hook] → lazy-pages ready → criu restore -d → `restored` (the source's point of no return) →
//   lazy-pages exits 0 → `done`.
// Losing the source (control link silent for its --link-timeout, closed, or an abort) before `done` ends the
// migration here: the hook and the restore are killed, lazy-pages gets SIGTERM and kills the restored tasks
// (--on-failure kill), because the source resumes the original (src/migrate/client.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Channel, CHANNEL_VERSION, type SourceMessage } from '../migrate/channel.js';
import { lazyPagesTotals, lastLine, runRestore, startLazyPages, type LazyPagesChild } from './restore.js';
import { imageCompatibility } from '../migrate/criu-host.js';
import { PreDumpDirs } from './pre-dump-dirs.js';
import { LINK_FILE_NAME, LINK_VERSION } from '../link/capability-file.js';
import type { Logger } from '../log.js';

export interface AgentHost {
  criuPath: string;
  criuVersion: string;
  pageSize: number;
  /** Why this host cannot restore lazily (userfaultfd), or null. */
  uffdProblem: string | null;
  workDir: string;
  /** The TLS flags to hand on to lazy-pages (empty: plain). */
  lazyPagesTlsArgs: string[];
  preRestoreHook?: string;
  keepDirs: boolean;
}

const IMAGE_NAME = /^[\w.-]+\.img$/;

export class MigrationSession {
  private dir: string | undefined;
  private state: 'hello' | 'receive' | 'restoring' | 'pages' | 'done' | 'ended' = 'hello';
  private hook: ChildProcess | undefined;
  private restore: ChildProcess | undefined;
  private lazyPages: LazyPagesChild | undefined;
  /** Started on hello; resolves once it listens for the restore's hand-over. */
  private lazyPagesReady: Promise<LazyPagesChild> | undefined;
  private lazyPagesStartedAt = 0;
  private files = 0;
  private bytes = 0;
  /** The source sent lazyd-link.json: lazy-pages opens with the lazyd link. */
  private linkReceived = false;
  private preDumps: PreDumpDirs | undefined;
  readonly channel: Channel;

  constructor(
    readonly id: string,
    socket: import('node:net').Socket,
    private readonly host: AgentHost,
    private readonly logger: Logger,
    private readonly onEnd: (session: MigrationSession) => void,
  ) {
    this.channel = new Channel(socket, (name) => this.fileTarget(name));
    this.channel.on('message', (message: SourceMessage) => this.onMessage(message));
    this.channel.on('error', (error: Error) => this.lost(error.message));
    this.channel.on('close', () => this.lost('the source closed the control connection'));
  }

  get phase(): string {
    return this.state;
  }

  private fileTarget(name: string): string {
    if (this.state !== 'receive' || !this.dir) throw new Error(`a file (${name}) before the migration was accepted`);
    // lazyd-link.json: the relay's link token, read by lazy-pages at the hand-over (docs/protocol.md §7).
    if (name === LINK_FILE_NAME) {
      this.files++;
      this.linkReceived = true;
      return path.join(this.dir, name);
    }
    if (!IMAGE_NAME.test(name)) throw new Error(`refusing the file name ${JSON.stringify(name)}: not a CRIU image name`);
    const preDump = this.preDumps?.target(name);
    if (preDump) return preDump;
    this.files++;
    return path.join(this.dir, name);
  }

  private onMessage(message: SourceMessage): void {
    switch (message.t) {
      case 'hello':
        return this.onHello(message);
      case 'file':
        this.bytes += message.size;
        return;
      case 'pre-dump':
        return this.onPreDump(message.n);
      case 'pre-dump-end':
        return this.onPreDumpEnd(message.n, message.files);
      case 'restore':
        void this.onRestore(message);
        return;
      case 'abort':
        this.lost(`the source aborted: ${message.reason}`);
        return;
      case 'bye':
        this.finish('complete');
        return;
    }
  }

  private onHello(hello: Extract<SourceMessage, { t: 'hello' }>): void {
    if (this.state !== 'hello') return this.refuse('a second hello');
    const refuse = (reason: string) => this.refuse(reason);
    if (hello.v !== CHANNEL_VERSION) return refuse(`migration protocol ${hello.v}; this agent speaks ${CHANNEL_VERSION}`);
    if (this.host.uffdProblem) {
      // The source refuses with this line; the welcome carries it so both ends log the same cause.
      this.logger.warn(`migration ${this.id} from pid ${hello.pid}: this host cannot restore lazily: ${this.host.uffdProblem}`);
    }
    this.dir = path.join(this.host.workDir, this.id);
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.preDumps = new PreDumpDirs(this.host.workDir, this.id);
    this.state = 'receive';
    this.channel.keepAlive(Math.max(1000, hello.linkTimeoutMs));
    this.logger.info(`migration ${this.id}: pid ${hello.pid} with CRIU ${hello.criuVersion} from ${this.channel.socket.remoteAddress}, into ${this.dir}`);
    this.channel.send({
      t: 'welcome',
      v: CHANNEL_VERSION,
      id: this.id,
      criuVersion: this.host.criuVersion,
      criuPath: this.host.criuPath,
      pageSize: this.host.pageSize,
      uffd: this.host.uffdProblem,
      link: LINK_VERSION,
    });
    // The source refuses on these itself; for the rest, the engine starts now, while the dump and the copy run.
    if (this.host.uffdProblem || hello.pageSize !== this.host.pageSize || imageCompatibility(hello.criuVersion, this.host.criuVersion)) return;
    this.prestartLazyPages(this.dir, hello.pageServer);
  }

  private prestartLazyPages(dir: string, pageServer: { address: string; port: number }): void {
    this.lazyPagesStartedAt = performance.now();
    const ready = startLazyPages(dir, { pageServer, tlsArgs: this.host.lazyPagesTlsArgs });
    this.lazyPagesReady = ready;
    ready.then(
      (lazyPages) => {
        this.lazyPages = lazyPages;
        if (this.isEnded) lazyPages.child.kill('SIGTERM');
        else {
          this.logger.info(
            `migration ${this.id}: lazy-pages ready in ${(performance.now() - this.lazyPagesStartedAt).toFixed(0)} ms, started on hello ` +
              `(${this.files} image files here by then; it reads them at the restore's hand-over)`,
          );
        }
      },
      () => undefined, // reported by onRestore, which waits for it
    );
  }

  private onPreDump(n: number): void {
    if (this.state !== 'receive' || !this.preDumps) return this.refuse(`pre-dump ${n} before the migration was accepted`);
    if (this.files > 0) return this.fail('receive', `pre-dump ${n} after the final images had begun`);
    try {
      this.preDumps.begin(n);
    } catch (error) {
      return this.fail('receive', (error as Error).message);
    }
  }

  private onPreDumpEnd(n: number, files: number): void {
    if (this.state !== 'receive' || !this.preDumps) return this.refuse(`pre-dump-end ${n} before the migration was accepted`);
    let bytes: number;
    try {
      bytes = this.preDumps.end(n, files);
    } catch (error) {
      return this.fail('receive', (error as Error).message);
    }
    this.logger.info(`migration ${this.id}: pre-dump ${n} stored (${files} files, ${bytes} bytes) in ${this.preDumps.dirs[n - 1]}`);
    this.channel.send({ t: 'pre-dump-stored', n, files, bytes });
  }

  private refuse(reason: string): void {
    this.logger.warn(`migration ${this.id}: refused: ${reason}`);
    this.channel.send({ t: 'refuse', reason });
    this.channel.end();
    this.finish('refused');
  }

  private async onRestore(message: Extract<SourceMessage, { t: 'restore' }>): Promise<void> {
    if (this.state !== 'receive' || !this.dir) return this.refuse('a restore request before the images');
    if (message.files !== this.files) return this.fail('receive', `${this.files} image files arrived, the source sent ${message.files}`);
    try {
      this.preDumps?.linkFinal(this.dir, message.preDumps ?? 0);
    } catch (error) {
      return this.fail('receive', (error as Error).message);
    }
    this.state = 'restoring';
    const dir = this.dir;
    try {
      if (this.host.preRestoreHook) {
        this.channel.send({ t: 'phase', phase: 'pre-restore', atMs: performance.now() });
        await this.runHook(this.host.preRestoreHook, dir);
      }
      if (this.isEnded) return;
      this.channel.send({ t: 'phase', phase: 'lazy-pages', atMs: performance.now() });
      if (!this.lazyPagesReady) throw new Error('lazy-pages was not started on hello');
      const lazyPages = await this.lazyPagesReady;
      if (this.isEnded) return;
      this.channel.send({ t: 'phase', phase: 'restore', atMs: performance.now() });
      const restore = runRestore(this.host.criuPath, dir);
      this.restore = restore.child;
      let restored: { pid: number; ms: number };
      try {
        restored = await restore.result;
      } catch (error) {
        lazyPages.child.kill('SIGTERM');
        return this.fail('restore', (error as Error).message);
      } finally {
        this.restore = undefined;
      }
      if (this.isEnded) return;
      this.state = 'pages';
      this.logger.info(
        `migration ${this.id}: restored as pid ${restored.pid} in ${restored.ms.toFixed(0)} ms; the pages follow` +
          (this.linkReceived ? ' over the lazyd link (lazyd-link.json came with the images: bound to the checkpoint, every page checksummed)' : ''),
      );
      this.channel.send({ t: 'restored', pid: restored.pid, restoreMs: restored.ms });
      const code = await lazyPages.exited;
      if (this.isEnded) return;
      if (code !== 0) return this.fail('pages', `lazy-pages failed: ${lastLine(lazyPages.output())}`, true);
      const totals = lazyPagesTotals(lazyPages.output());
      this.state = 'done';
      this.logger.info(`migration ${this.id}: every page present (${totals.line})`);
      this.channel.send({ t: 'done', summary: totals.line, installed: totals.installed, total: totals.total });
    } catch (error) {
      this.lazyPages?.child.kill('SIGTERM');
      this.fail(this.state === 'restoring' ? 'lazy-pages' : 'pages', (error as Error).message);
    }
  }

  private runHook(command: string, dir: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const hook = spawn('/bin/sh', ['-c', command], {
        cwd: dir,
        stdio: ['ignore', 'ignore', 'pipe'],
        detached: true, // its own process group: a lost migration kills the whole hook
        env: { ...process.env, LAZYD_MIGRATION_ID: this.id, LAZYD_MIGRATION_DIR: dir },
      });
      this.hook = hook;
      let stderr = '';
      hook.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      hook.on('error', (error) => reject(new Error(`--pre-restore-hook: ${error.message}`)));
      hook.on('exit', (code, signal) => {
        this.hook = undefined;
        if (code === 0) resolve();
        else reject(new Error(`--pre-restore-hook exited ${signal ?? code}${stderr.trim() ? `: ${lastLine(stderr)}` : ''}`));
      });
    });
  }

  private fail(stage: 'receive' | 'restore' | 'lazy-pages' | 'pages', reason: string, restoredKilled = false): void {
    if (this.isEnded) return;
    const iterations = this.preDumps?.dirs.length ? ` and ${this.dir}.pre-1..${this.preDumps.dirs.length}` : '';
    this.logger.error(`migration ${this.id}: ${stage} failed: ${reason}${this.dir ? ` (files kept in ${this.dir}${iterations})` : ''}`);
    this.channel.send({ t: 'failed', stage, reason, restoredKilled });
    this.channel.end();
    this.finish('failed');
  }

  /** The source is gone or gave up. Before `done` the restored copy must not survive (the source resumes the original). */
  private lost(reason: string): void {
    if (this.isEnded) return;
    if (this.state === 'done') return this.finish('complete');
    const what: string[] = [];
    if (this.hook?.pid) {
      try {
        process.kill(-this.hook.pid, 'SIGKILL');
        what.push('killed the pre-restore hook');
      } catch {
        // already gone
      }
    }
    if (this.restore) {
      this.restore.kill('SIGKILL');
      what.push('killed criu restore');
    }
    if (this.lazyPages && this.lazyPages.child.exitCode === null) {
      // lazy-pages applies its failure policy on SIGTERM: the restored tasks are SIGKILLed.
      this.lazyPages.child.kill('SIGTERM');
      what.push('stopped lazy-pages (it kills the restored tasks)');
    }
    if (this.state !== 'hello') {
      this.logger.error(`migration ${this.id}: ${reason} during ${this.state}; ${what.length ? what.join(', ') : 'nothing had started here'}; the source keeps the process`);
    }
    this.channel.destroy();
    this.finish('lost');
  }

  private get isEnded(): boolean {
    return this.state === 'ended';
  }

  private finish(how: 'complete' | 'refused' | 'failed' | 'lost'): void {
    if (this.state === 'ended') return;
    this.state = 'ended';
    if (how === 'complete' && this.dir && !this.host.keepDirs) {
      fs.rmSync(this.dir, { recursive: true, force: true });
      this.preDumps?.remove();
    }
    if (how === 'complete') this.logger.info(`migration ${this.id}: complete`);
    this.onEnd(this);
  }
}
