// The alternative a user has today for keeping a standby: copy a whole CRIU image directory to the other host
// over one plain TCP stream (what scp or `tar | nc` would do, without encryption or compression). Run as a
// process of its own inside a network namespace:
//   node dir-copy.js recv PORT ROOT      prints "ready PORT"; each copy lands in ROOT/incoming, is renamed to
//                                        ROOT/copy-N once complete (the previous copy removed) and acked
//   node dir-copy.js send DIR HOST PORT N   prints {"bytes":…,"ms":…} (connect → the receiver's ack)
// Stream: per file u32 name length, name, u64 size, bytes; a name length 0 ends it; the ack is one byte.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

async function send(dir: string, host: string, port: number, n: number): Promise<void> {
  const started = performance.now();
  const socket = net.connect(port, host);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const ack = new Promise<void>((resolve, reject) => socket.once('data', () => resolve()).once('error', reject));
  const write = (chunk: Buffer) => (socket.write(chunk) ? Promise.resolve() : new Promise<void>((resolve) => socket.once('drain', resolve)));
  let bytes = 0;
  const head = Buffer.alloc(4);
  head.writeUInt32LE(n);
  await write(head);
  for (const name of fs.readdirSync(dir)) {
    const file = path.join(dir, name);
    const size = fs.statSync(file).size;
    const header = Buffer.alloc(4 + Buffer.byteLength(name) + 8);
    header.writeUInt32LE(Buffer.byteLength(name));
    header.write(name, 4);
    header.writeBigUInt64LE(BigInt(size), header.length - 8);
    await write(header);
    for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) await write(chunk as Buffer);
    bytes += header.length + size;
  }
  await write(Buffer.alloc(4));
  await ack;
  socket.destroy();
  process.stdout.write(`${JSON.stringify({ bytes: bytes + 8, ms: performance.now() - started })}\n`);
}

function recv(port: number, root: string): void {
  const server = net.createServer((socket) => {
    let buffer: Buffer = Buffer.alloc(0);
    let n: number | undefined;
    let file: { fd: number; left: number } | undefined;
    const incoming = path.join(root, 'incoming');
    fs.rmSync(incoming, { recursive: true, force: true });
    fs.mkdirSync(incoming, { recursive: true });
    socket.on('data', (chunk: Buffer) => {
      buffer = buffer.length ? Buffer.concat([buffer, chunk]) : chunk;
      for (;;) {
        if (file) {
          const take = Math.min(file.left, buffer.length);
          fs.writeSync(file.fd, buffer, 0, take);
          file.left -= take;
          buffer = buffer.subarray(take);
          if (file.left > 0) return;
          fs.closeSync(file.fd);
          file = undefined;
        }
        if (n === undefined) {
          if (buffer.length < 4) return;
          n = buffer.readUInt32LE(0);
          buffer = buffer.subarray(4);
        }
        if (buffer.length < 4) return;
        const length = buffer.readUInt32LE(0);
        if (length === 0) {
          const done = path.join(root, `copy-${n}`);
          fs.renameSync(incoming, done);
          if (n > 1) fs.rmSync(path.join(root, `copy-${n - 1}`), { recursive: true, force: true });
          socket.end(Buffer.from([1]));
          return;
        }
        if (buffer.length < 4 + length + 8) return;
        const name = buffer.subarray(4, 4 + length).toString();
        const size = Number(buffer.readBigUInt64LE(4 + length));
        buffer = buffer.subarray(4 + length + 8);
        file = { fd: fs.openSync(path.join(incoming, path.basename(name)), 'w', 0o600), left: size };
        if (size === 0) {
          fs.closeSync(file.fd);
          file = undefined;
        }
      }
    });
    socket.on('error', () => undefined);
  });
  server.listen(port, () => process.stdout.write(`ready ${(server.address() as net.AddressInfo).port}\n`));
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [mode, ...args] = process.argv.slice(2);
  if (mode === 'send') await send(args[0], args[1], Number(args[2]), Number(args[3]));
  else if (mode === 'recv') recv(Number(args[0]), args[1]);
  else {
    process.stderr.write('usage: dir-copy.js send DIR HOST PORT N | recv PORT ROOT\n');
    process.exit(2);
  }
}
