// The agent's one listener serves migrations and replication: the first line of a connection says which
// (replication's message types all start with "replica-", src/replicate/protocol.ts). The bytes read to decide
// are put back, so the chosen handler reads the connection from its first byte.
import type { Socket } from 'node:net';
import { REPLICA_LINE_PREFIX } from '../replicate/protocol.js';

export function routeConnection(socket: Socket, replica: (socket: Socket) => void, migration: (socket: Socket) => void): void {
  let seen: Buffer = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    seen = seen.length ? Buffer.concat([seen, chunk]) : chunk;
    if (seen.length < REPLICA_LINE_PREFIX.length && !seen.includes(0x0a)) return;
    socket.off('data', onData);
    socket.off('close', onClose);
    socket.pause();
    socket.unshift(seen);
    if (seen.subarray(0, REPLICA_LINE_PREFIX.length).toString('latin1') === REPLICA_LINE_PREFIX) replica(socket);
    else migration(socket);
    socket.resume(); // paused explicitly above: a new 'data' listener alone would not restart it
  };
  const onClose = () => socket.off('data', onData);
  socket.on('data', onData);
  socket.on('close', onClose);
  socket.on('error', () => undefined);
}
