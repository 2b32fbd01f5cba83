// A raw page-server client run inside a network namespace (`nsenter --net=/run/netns/NS node netns-client.js
// JSON`): the test process lives in the host's namespace, so a peer on one of the two "hosts" of netns.ts is a
// process of its own. Prints one JSON line: what rawSession() (hostile.ts) saw, the bytes as hex.
//   JSON: {"host": "10.77.0.1", "port": 9876, "from": "10.77.0.3", "request": "<hex>", "timeoutMs": 10000}
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { rawSession, type RawResult } from './hostile.js';

export interface NetnsSession {
  host: string;
  port: number;
  from?: string;
  request: Buffer;
  timeoutMs?: number;
}

/** Runs one raw session from inside network namespace `netns`. */
export async function rawSessionIn(netns: string, session: NetnsSession): Promise<RawResult> {
  const script = fileURLToPath(import.meta.url);
  const spec = JSON.stringify({ ...session, request: session.request.toString('hex') });
  const { stdout } = await promisify(execFile)('nsenter', [`--net=/run/netns/${netns}`, '--', process.execPath, script, spec], {
    timeout: (session.timeoutMs ?? 10_000) + 10_000,
  });
  const parsed = JSON.parse(stdout) as Omit<RawResult, 'received'> & { received: string };
  return { ...parsed, received: Buffer.from(parsed.received, 'hex') };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const spec = JSON.parse(process.argv[2] ?? '{}') as Omit<NetnsSession, 'request'> & { request: string };
  const result = await rawSession({ host: spec.host, port: spec.port }, Buffer.from(spec.request, 'hex'), {
    from: spec.from,
    timeoutMs: spec.timeoutMs ?? 10_000,
  });
  process.stdout.write(`${JSON.stringify({ ...result, received: result.received.toString('hex') })}\n`);
}
