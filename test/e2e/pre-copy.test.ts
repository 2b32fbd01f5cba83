// End-to-end: what `lazyd migrate --pre-copy` hands a `lazyd agent`, restored by real CRIU 4.1.1 and 4.2.1, with
// the self-verifying workload. `criu pre-dump` cannot run on this kernel (soft-dirty off: it aborts, README
// "--pre-copy"), and without tracking the final dump writes no in-parent page, so both are stood in for by what
// they would write, made from a real dump of the workload: the plain dump's images are iteration 1 (a pre-dump's
// images: every page with its data), and test/harness/pre-copy-chain.ts derives iteration 2 from them (half of
// every lazy-capable entry in the parent, half written again) and the final lazy dump from iteration 2 (what was
// in the parent stays there, half of the rest too, the other half lazy). The source side is this process: the real
// iteration driver and channel (src/migrate/pre-copy.ts, channel.ts) into a real `lazyd agent` (--keep), whose
// `lazyd lazy-pages` fetches the lazy half from `lazyd --page-server` serving the plain dump. Checked: the agent's
// sibling directories and relative parent links, criu restore reading the in-parent pages through both levels, lazy-pages
// fetching exactly the lazy pages (none of the parent's), and the restored workload verifying all its memory.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { before, test } from 'node:test';
import { CRIU_VERSIONS, findCriu, killPidNamespace, pollFor, processAlive, requireHost, runCriu, startPageServer, withRunDir } from '../harness/index.js';
import { startAgent, startSourceWorkload, stopSourceWorkload, verifyRunning } from '../harness/agent.js';
import { dumpOnParent } from '../harness/pre-copy-chain.js';
import { Channel, CHANNEL_VERSION, type AgentMessage } from '../../src/migrate/channel.js';
import { preCopy, sendIteration } from '../../src/migrate/pre-copy.js';
import { PRE_COPY_LIMITS } from '../../src/migrate/pre-copy-rules.js';

const PAGE = 4096;

before(() => requireHost());

/** The first agent message of type `t`; a refusal or failure throws its reason. */
function awaitMessage<T extends AgentMessage['t']>(
  messages: AgentMessage[],
  t: T,
  which: (m: Extract<AgentMessage, { t: T }>) => boolean = () => true,
  timeoutMs = 30_000,
): Promise<Extract<AgentMessage, { t: T }>> {
  return pollFor(`the agent's ${t}`, timeoutMs, () => {
    const bad = messages.find((m) => m.t === 'refuse' || m.t === 'failed');
    if (bad) throw new Error(`the agent: ${JSON.stringify(bad)}`);
    return messages.find((m) => m.t === t && which(m as Extract<AgentMessage, { t: T }>)) as Extract<AgentMessage, { t: T }> | undefined;
  });
}

for (const version of CRIU_VERSIONS) {
  test(`CRIU ${version}: a final lazy dump on a pre-dump restores through the agent's parent link; in-parent pages are not fetched (two iterations)`, { timeout: 120_000 }, async (t) => {
    await withRunDir(`pre-copy-${version}`, async (runDir, onCleanup) => {
      const criu = findCriu(version);
      const source = await startSourceWorkload(path.join(runDir, 'w'), { mib: 16 });
      onCleanup(() => stopSourceWorkload(source));
      const plain = path.join(runDir, 'plain');
      fs.mkdirSync(plain);
      await runCriu(criu, 'dump', ['-t', String(source.workload.pid), '-D', plain, '-v4', '-o', 'dump.log'], 30_000, { imagesDir: plain });
      await pollFor('the dumped original to be gone', 10_000, () => (processAlive(source.workload.pid) ? undefined : true));

      const agent = await startAgent({ address: '127.0.0.1', criu: criu.path, stateDir: path.join(runDir, 'agent'), extraArgs: ['--keep'] });
      onCleanup(() => agent.stop());
      const server = await startPageServer({ kind: 'lazyd', imagesDir: plain });
      onCleanup(() => server.kill());

      const socket = net.connect(agent.port, '127.0.0.1');
      await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
      const channel = new Channel(socket);
      onCleanup(() => channel.destroy());
      const messages: AgentMessage[] = [];
      channel.on('message', (m: AgentMessage) => messages.push(m));
      channel.send({
        t: 'hello', v: CHANNEL_VERSION, criuVersion: version, pageSize: PAGE, linkTimeoutMs: 10_000, pid: source.workload.pid,
        pageServer: { address: '127.0.0.1', port: server.port },
      });
      const welcome = await awaitMessage(messages, 'welcome');

      // Two iterations through the real driver and channel: the real dump's images (what a first pre-dump
      // writes), then a second pre-dump made from them.
      const encoding = version === '4.1.1' ? '4.1' : '4.2';
      const imagesDir = path.join(runDir, 'src', 'migrate-final');
      fs.mkdirSync(imagesDir, { recursive: true });
      const parents: (string | undefined)[] = [];
      const iterations = await preCopy({
        imagesDir,
        pageSize: PAGE,
        limits: { ...PRE_COPY_LIMITS, maxIterations: 2 },
        dump: async (dir, parent) => {
          parents.push(parent);
          if (!parent) {
            for (const name of fs.readdirSync(plain)) if (name.endsWith('.img')) fs.copyFileSync(path.join(plain, name), path.join(dir, name));
          } else {
            await dumpOnParent(path.resolve(dir, parent), dir, 'pre-dump', encoding);
          }
        },
        send: (n, dir) => sendIteration(channel, n, dir, () => awaitMessage(messages, 'pre-dump-stored', (m) => m.n === n)),
      });
      assert.deepEqual(parents, [undefined, '../migrate-final.pre-1']);
      assert.equal(iterations.stop, 'max-iterations');
      assert.equal(iterations.parent, '../migrate-final.pre-2');
      const made = await dumpOnParent(iterations.dirs[1], imagesDir, 'final', encoding);
      t.diagnostic(`pages written ${iterations.iterations.map((it) => it.pagesWritten).join(', ')}; final: ${JSON.stringify(made)}`);
      const final = await channel.sendImages(imagesDir);
      channel.send({ t: 'restore', files: final.files, bytes: final.bytes, preDumps: 2 });
      const restored = await awaitMessage(messages, 'restored');
      onCleanup(() => killPidNamespace(restored.pid).catch(() => undefined));
      const done = await awaitMessage(messages, 'done', undefined, 45_000);
      channel.send({ t: 'bye' });
      channel.end();

      const dir = path.join(agent.stateDir, welcome.id);
      assert.equal(fs.readlinkSync(path.join(dir, 'parent')), `../${welcome.id}.pre-2`, 'the agent linked the final images, relatively');
      assert.equal(fs.readlinkSync(path.join(agent.stateDir, `${welcome.id}.pre-2`, 'parent')), `../${welcome.id}.pre-1`);
      assert.ok(fs.existsSync(path.join(agent.stateDir, `${welcome.id}.pre-1`, 'pagemap-1.img')), 'iteration 1 in its sibling directory');
      assert.equal(fs.existsSync(path.join(agent.stateDir, `${welcome.id}.pre-1`, 'parent')), false);
      // criu logs "pr<pid>-<id> Read from parent" per page-read that goes up a level: the final one's and iteration 2's.
      const levels = new Set([...fs.readFileSync(path.join(dir, 'restore.log'), 'utf8').matchAll(/pr(\d+-\d+) Read from parent/g)].map((m) => m[1]));
      assert.equal(levels.size, 2, `criu restore read pages from the parents at two levels (${[...levels].join(', ')})`);
      assert.equal(done.total, made.lazyPages, `lazy-pages had only the PE_LAZY pages (${done.summary})`);
      assert.equal(done.installed, made.lazyPages);
      await verifyRunning(source, restored.pid);
    });
  });
}
