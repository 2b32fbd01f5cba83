// The addon's declared surface (src/native.ts) against what the loaded binding exports: every declared class,
// method, function and value exists, and nothing exported is undeclared.
import { OPEN_ACCESS } from '../../src/page-server/access.js';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import net from 'node:net';
import { PAGE_SERVER } from '../../src/config/flags.js';
import { defaultValues, pageServerOptions } from '../../src/config/resolve.js';
import { loadNative, NATIVE_CLASSES, NATIVE_FUNCTIONS, NATIVE_VALUES, type PageServerEvent, type RelayOptions } from '../../src/native.js';

const sorted = (names: Iterable<string>) => [...names].sort();

test('the binding exports exactly the declared classes, functions and values', () => {
  const addon = loadNative() as unknown as Record<string, unknown>;
  assert.deepEqual(sorted(Object.keys(addon)), sorted([...Object.keys(NATIVE_CLASSES), ...NATIVE_FUNCTIONS, ...NATIVE_VALUES]));
  for (const name of NATIVE_FUNCTIONS) assert.equal(typeof addon[name], 'function', name);
  assert.equal(typeof addon.pageSize, 'number');
  assert.equal(typeof addon.constants, 'object');
});

test('each native class has exactly the declared methods', () => {
  const addon = loadNative() as unknown as Record<string, { prototype: object }>;
  for (const [name, methods] of Object.entries(NATIVE_CLASSES)) {
    const cls = addon[name];
    assert.equal(typeof cls, 'function', `${name} is a class`);
    const own = Object.getOwnPropertyNames(cls.prototype).filter((m) => m !== 'constructor');
    assert.deepEqual(sorted(own), sorted(methods), `${name}'s methods`);
    for (const method of methods) {
      assert.equal(typeof (cls.prototype as Record<string, unknown>)[method], 'function', `${name}.${method}`);
    }
  }
});

// startRelay's refusals (native/binding/relay.cc): one line each, with the code the control plane switches on; a
// connection it made is reset (the dump resumes the tasks), which test/e2e/relay.test.ts checks with real CRIU and
// native/tests/relay_test.cc on the wire.
test('startRelay refuses with one line and a code: not staging, connection refused, the memory cap, bad options', async () => {
  const addon = loadNative();
  const servers: { stop(ms: number): void }[] = [];
  const stopped: Promise<void>[] = [];
  const start = (staging: boolean, stagingMaxBytes: number) => {
    let done!: () => void;
    stopped.push(new Promise<void>((resolve) => (done = resolve)));
    const server = new addon.PageServer({
      ...pageServerOptions(PAGE_SERVER, defaultValues(PAGE_SERVER)),
      staging,
      stagingMaxBytes,
      tls: undefined,
      access: OPEN_ACCESS,
      onEvent: (event: PageServerEvent) => event.type === 'stopped' && done(),
    });
    server.listen('127.0.0.1', 0);
    server.start();
    servers.push(server);
    return server;
  };
  // A listener that takes the connection and says nothing, as a dump's lazy page server before the first GET.
  const ends: string[] = [];
  const dump = net.createServer((socket) => {
    socket.on('error', (error: NodeJS.ErrnoException) => ends.push(error.code ?? 'error'));
    socket.on('end', () => ends.push('EOF'));
  });
  await new Promise<void>((resolve) => dump.listen(0, '127.0.0.1', resolve));
  const port = (dump.address() as net.AddressInfo).port;
  const options = (overrides: Partial<RelayOptions> = {}): RelayOptions => ({
    host: '127.0.0.1',
    port,
    connectTimeoutMs: 2000,
    format: 32,
    tasks: [{ pid: 4242, ranges: [{ vaddr: 0x7f0000000000n, nrPages: 256 }] }],
    requestPages: 256,
    inflightBytes: 1 << 20,
    stallTimeoutMs: 5000,
    ...overrides,
  });
  try {
    const plain = start(false, 1 << 30);
    assert.throws(() => plain.startRelay(options()), (error: Error & { code?: string }) => {
      assert.match(error.message, /^cannot relay the dump at 127\.0\.0\.1:\d+: relay staging needs lazyd --page-server --staging; its connection was reset/);
      assert.equal(error.code, 'ERELAY');
      return true;
    });
    const small = start(true, 64 * 4096);
    assert.throws(() => small.startRelay(options()), (error: Error & { code?: string }) => {
      assert.match(error.message, /needs 1 MiB of staging memory, but only 0 MiB of the 0 MiB cap are free \(--staging-max-bytes\)/);
      assert.equal(error.code, 'ECAP');
      assert.ok(!error.message.includes('\n'));
      return true;
    });
    assert.throws(() => small.startRelay(options({ port: 1 })), { code: 'ECONNREFUSED' });
    assert.throws(() => small.startRelay(options({ format: 0 as 24 })), { name: 'TypeError', message: 'startRelay: option format must be 24 or 32' });
    assert.throws(() => small.startRelay({ ...options(), tasks: [{ pid: 1, ranges: [{ vaddr: -1n, nrPages: 1 }] }] }), { name: 'TypeError' });
    // Both connections it made ended with a reset, never an EOF (an EOF would tell a dump the transfer is done).
    for (let i = 0; i < 200 && ends.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.deepEqual(ends, ['ECONNRESET', 'ECONNRESET']);
  } finally {
    for (const server of servers) server.stop(0);
    await Promise.all(stopped);
    dump.close();
  }
});
