// The TypeScript wire codec (test/harness/wire.ts) against the real CRIU 4.1.1 and 4.2.1 sessions recorded in
// test/fixtures (their transcripts and session.json), and against crafted edge cases (the same table as
// native/tests/wire_test.cc).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { dataPage, patternWord } from '../harness/page-pattern.js';
import {
  GET_REPLY_CMD,
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT,
  PID_MAX_LIMIT,
  PS_IOV_ADD,
  PS_IOV_ADD_F,
  PS_IOV_CLOSE,
  PS_IOV_FORCE_CLOSE,
  PS_IOV_GET,
  PS_IOV_HOLE,
  PS_IOV_OPEN,
  PS_IOV_OPEN2,
  PS_IOV_PARENT,
  PS_TYPE_PID,
  PS_TYPE_SHMEM,
} from '../../src/protocol/constants.js';
import {
  command,
  commandName,
  decodeDstId,
  decodeHeader,
  detectFormat,
  encodeDstId,
  encodeHeader,
  flags,
  makeCmd,
  parseClientStream,
  parseLazyReplies,
  parseUploadReplies,
  WireError,
  type ClientMessage,
  type PsHeader,
  type WireFormat,
} from '../harness/wire.js';
import { dataArea as recordedDataArea, fixturePath, readFixture, sessionFacts, type DataArea, type SessionName } from '../fixtures/fixtures.js';

// ---- the recorded sessions (test/fixtures): fail loudly, never skip ----

const VERSIONS = [
  { version: '4.1.1', format: 24 as WireFormat },
  { version: '4.2.1', format: 32 as WireFormat },
] as const;
const SESSIONS = ['remote-lazy', 'upload'] as const;
const PAGE = 4096;

/** One session's file (the version dir is criu-<version>). */
function readBin(version: string, session: SessionName, ...parts: string[]): Buffer {
  return readFixture(version, session, ...parts);
}

/** What the recorder measured of a session's stream. */
function streamFacts(version: string, session: SessionName) {
  const stream = sessionFacts(version, session).stream;
  assert.ok(stream, `criu-${version}/${session}/session.json has no stream`);
  return stream;
}

test('the recorded sessions are present', () => {
  for (const { version } of VERSIONS) {
    for (const session of SESSIONS) {
      for (const f of ['client-to-server.bin', 'server-to-client.bin', 'transcript.tsv', 'session.json']) {
        fixturePath(version, session, f);
      }
    }
  }
});

// ---- transcript.tsv ----

interface Row {
  idx: number;
  dir: 'c2s' | 's2c';
  off: number;
  hdr_len: number;
  cmd: string;
  op: string;
  flags: string;
  nr_pages: string;
  vaddr: string;
  dst_id: string;
  payload_len: number;
  note: string;
}

function readTranscript(version: string, session: SessionName): Row[] {
  const lines = readBin(version, session, 'transcript.tsv')
    .toString('utf8')
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('#'));
  const columns = lines.shift()!.split('\t');
  assert.deepEqual(columns, [
    'idx', 't_ms', 'dir', 'off', 'hdr_len', 'cmd', 'op', 'flags', 'nr_pages', 'vaddr', 'dst_id', 'payload_len', 'note',
  ]);
  return lines.map((line) => {
    const cells = line.split('\t');
    assert.equal(cells.length, columns.length, `transcript line: ${line}`);
    const r = Object.fromEntries(columns.map((c, i) => [c, cells[i]!]));
    return {
      idx: Number(r.idx),
      dir: r.dir as 'c2s' | 's2c',
      off: Number(r.off),
      hdr_len: Number(r.hdr_len),
      cmd: r.cmd!,
      op: r.op!,
      flags: r.flags!,
      nr_pages: r.nr_pages!,
      vaddr: r.vaddr!,
      dst_id: r.dst_id!,
      payload_len: Number(r.payload_len),
      note: r.note!,
    };
  });
}

const hex = (v: bigint | number) => '0x' + v.toString(16);
const hex8 = (v: number) => '0x' + v.toString(16).padStart(8, '0');

function flagsString(f: number): string {
  if (f === 0) return '0';
  const names: string[] = [];
  if (f & PE_PARENT) names.push('PE_PARENT');
  if (f & PE_LAZY) names.push('PE_LAZY');
  if (f & PE_PRESENT) names.push('PE_PRESENT');
  assert.equal(f & ~(PE_PARENT | PE_LAZY | PE_PRESENT), 0, `unexpected flag bits 0x${f.toString(16)}`);
  return names.join('|');
}

function noteField(note: string, key: string): string | undefined {
  for (const part of note.split(';')) {
    const m = /^\s*([a-z_]+)=(\S+)\s*$/.exec(part);
    if (m && m[1] === key) return m[2];
  }
  return undefined;
}

function replyTo(note: string): number | undefined {
  const m = /reply to #(\d+)/.exec(note);
  return m ? Number(m[1]) : undefined;
}

/** Checks one transcript row that describes a header message. */
function assertHeaderRow(row: Row, format: WireFormat, offset: number, h: PsHeader, payloadLength: number) {
  const where = `transcript #${row.idx}`;
  assert.equal(row.off, offset, `${where}: off`);
  assert.equal(row.hdr_len, format, `${where}: hdr_len`);
  assert.equal(row.cmd, hex8(h.cmd), `${where}: cmd`);
  assert.equal(row.op, commandName(command(h.cmd)), `${where}: op`);
  assert.equal(row.flags, flagsString(flags(h.cmd)), `${where}: flags`);
  assert.equal(row.nr_pages, h.nrPages.toString(), `${where}: nr_pages`);
  assert.equal(row.vaddr, hex(h.vaddr), `${where}: vaddr`);
  assert.equal(row.dst_id, hex(h.dstId), `${where}: dst_id`);
  assert.equal(row.payload_len, payloadLength, `${where}: payload_len`);
  const pad = noteField(row.note, 'pad');
  if (format === 32) assert.equal(pad, hex8(h.pad), `${where}: pad`);
  else assert.equal(pad, undefined, `${where}: a 24-byte header has no pad`);
}

// ---- the page pattern (test/workload/workload.c) ----

const mix = patternWord;
const M64 = (1n << 64n) - 1n;

/** The workload's data area (1 MiB in these recordings), page p at p*4096. */
function expectedDataArea(area: Pick<DataArea, 'pages' | 'seed'>): Buffer {
  const buf = Buffer.alloc(area.pages * PAGE);
  for (let p = 0; p < area.pages; p++) dataPage(p, area.seed).copy(buf, p * PAGE);
  return buf;
}

test('page pattern: mix() and the seed-1 data area match their check values', () => {
  assert.equal(mix(1n, 0n, 0n), 0x910a2dec89025cc1n);
  assert.equal(mix(1n, 0n, 1n), 0x0cc20da17d43669an);
  assert.equal(mix(1n, 0n, 2n), 0x6511b2aff6b7edccn);
  assert.equal(mix(1n, 0n, 3n), 0xeb2da24d7b2ca974n);
  assert.equal(mix(1n, 255n, 511n), 0x042cea06438e4aacn);
  const area = expectedDataArea({ pages: 256, seed: 1n });
  assert.deepEqual([...area.subarray(0, 16)], [
    0xc1, 0x5c, 0x02, 0x89, 0xec, 0x2d, 0x0a, 0x91, 0x9a, 0x66, 0x43, 0x7d, 0xa1, 0x0d, 0xc2, 0x0c,
  ]);
  assert.equal(
    createHash('sha256').update(area).digest('hex'),
    'a9ba08c753fb570ca33f968bb24d468bf78df69ab2e824ba1029c4c735d2adb3',
  );
  let sum = 0n;
  for (let off = 0; off < area.length; off += 8) sum = (sum + area.readBigUInt64LE(off)) & M64;
  assert.equal(sum, 0x28e67e1252d1f17dn);
  // and the recorded workloads ran with this pattern: their checksum and sha256 are these
  for (const { version } of VERSIONS) {
    const recorded = recordedDataArea(version);
    assert.equal(recorded.checksum, sum, `criu-${version}: the workload's checksum`);
    assert.equal(recorded.sha256, createHash('sha256').update(expectedDataArea(recorded)).digest('hex'), `criu-${version}: the data area's sha256`);
  }
});

interface DataMessage {
  vaddr: bigint;
  nrPages: bigint;
  payload: Buffer;
}

/** Checks every data-area page carried by the messages; returns [seen, bad] and asserts each page came once. */
function checkDataPages(messages: DataMessage[], recorded: DataArea): { seen: number; bad: number } {
  const area = expectedDataArea(recorded);
  const count = new Array<number>(recorded.pages).fill(0);
  let bad = 0;
  for (const m of messages) {
    assert.equal(m.payload.length, Number(m.nrPages) * PAGE);
    for (let i = 0; i < Number(m.nrPages); i++) {
      const va = m.vaddr + BigInt(i * PAGE);
      if (va < recorded.start || va >= recorded.end) continue;
      const p = Number((va - recorded.start) / BigInt(PAGE));
      count[p]!++;
      if (!m.payload.subarray(i * PAGE, (i + 1) * PAGE).equals(area.subarray(p * PAGE, (p + 1) * PAGE))) bad++;
    }
  }
  const missing = count.flatMap((c, p) => (c === 0 ? [p] : []));
  const twice = count.flatMap((c, p) => (c > 1 ? [p] : []));
  assert.deepEqual(missing, [], 'data pages never sent');
  assert.deepEqual(twice, [], 'data pages sent more than once');
  return { seen: count.reduce((a, b) => a + b, 0), bad };
}

// ---- the real sessions ----

interface Parsed {
  format: WireFormat;
  c2s: Buffer;
  s2c: Buffer;
  messages: ClientMessage[];
}

function parseSession(version: string, format: WireFormat, session: SessionName): Parsed {
  const c2s = readBin(version, session, 'client-to-server.bin');
  const s2c = readBin(version, session, 'server-to-client.bin');
  return { format, c2s, s2c, messages: parseClientStream(c2s, format) };
}

for (const { version, format } of VERSIONS) {
  test(`criu ${version}: every session.json says CRIU ${version} and ${format}-byte headers`, () => {
    for (const session of ['plain-dump', ...SESSIONS] as const) {
      const facts = sessionFacts(version, session);
      assert.equal(facts.criu.version, version, session);
      assert.equal(facts.criu.header_bytes, format, session);
    }
  });

  test(`criu ${version} remote-lazy: both streams parse completely and match transcript.tsv and session.json`, () => {
    const { c2s, s2c, messages } = parseSession(version, format, 'remote-lazy');
    const { replies, close } = parseLazyReplies(s2c, format, messages);
    const rows = readTranscript(version, 'remote-lazy');
    const json = streamFacts(version, 'remote-lazy');
    const lazyPages = sessionFacts(version, 'remote-lazy').pagemap.totals.lazy_pages;

    // The client stream: GETs, then one CLOSE at the very end.
    assert.ok(messages.length > 1);
    assert.ok(messages.slice(0, -1).every((m) => m.command === PS_IOV_GET));
    assert.equal(messages.at(-1)!.command, PS_IOV_CLOSE);
    assert.ok(close, 'the server answered CLOSE');
    assert.equal(close.value, 0);
    assert.equal(close.length, 4);
    assert.equal(close.offset + 4, s2c.length);
    assert.equal(replies.length, messages.length - 1);

    // transcript.tsv, message by message in each direction.
    const c2sRows = rows.filter((r) => r.dir === 'c2s');
    const s2cRows = rows.filter((r) => r.dir === 's2c');
    assert.equal(c2sRows.length, messages.length);
    assert.equal(s2cRows.length, replies.length + 1);
    messages.forEach((m, i) => assertHeaderRow(c2sRows[i]!, format, m.offset, m.header, m.payloadLength));
    const messageOfRow = new Map(c2sRows.map((r, i) => [r.idx, i]));
    replies.forEach((r, i) => {
      const row = s2cRows[i]!;
      assertHeaderRow(row, format, r.offset, r.header, r.payloadLength);
      const req = replyTo(row.note);
      assert.ok(req !== undefined && req < row.idx, `transcript #${row.idx}: a reply follows its request`);
      assert.equal(messageOfRow.get(req), r.requestIndex, `transcript #${row.idx}: answers the right GET`);
    });
    const statusRow = s2cRows.at(-1)!;
    assert.deepEqual(
      [statusRow.op, statusRow.off, statusRow.hdr_len, statusRow.payload_len, noteField(statusRow.note, 'status')],
      ['CLOSE_STATUS', close.offset, 0, 4, String(close.value)],
    );
    assert.equal(messageOfRow.get(replyTo(statusRow.note)!), close.requestIndex);

    // session.json counts.
    assert.equal(json.c2s_bytes, c2s.length);
    assert.equal(json.s2c_bytes, s2c.length);
    assert.equal(json.c2s_messages, messages.length);
    assert.equal(json.s2c_messages, replies.length + 1);
    const histogram: Record<string, number> = {};
    const bump = (key: string) => (histogram[key] = (histogram[key] ?? 0) + 1);
    for (const m of messages) bump(`${commandName(m.command)}@c2s`);
    for (const r of replies) bump(`${commandName(command(r.header.cmd))}|${flagsString(flags(r.header.cmd))}@s2c`);
    bump('CLOSE_STATUS@s2c');
    assert.deepEqual(histogram, json.commands);
    const pages = replies.reduce((n, r) => n + Number(r.header.nrPages), 0);
    assert.equal(pages, json.pages_with_data);
    assert.equal(pages, lazyPages, 'the replies carry as many pages as the pagemap has PE_LAZY pages');
    assert.deepEqual(
      replies.map((r) => [hex(r.header.vaddr), Number(r.header.nrPages)]),
      json.page_payload_order,
    );
    assert.equal(createHash('sha256').update(c2s).digest('hex'), json.client_to_server_sha256);
    assert.equal(createHash('sha256').update(s2c).digest('hex'), json.server_to_client_sha256);
    if (format === 32) {
      const pads = new Set([...messages.map((m) => m.header.pad), ...replies.map((r) => r.header.pad)]);
      assert.deepEqual([...pads].sort((a, b) => a - b).map(hex8), json.pad_values);
      assert.deepEqual([...pads].filter((p) => p !== 0).sort((a, b) => a - b).map(hex8), json.nonzero_pad ?? []);
    }

    // The recording's counts: GETs, then CLOSE, all headers; the replies: a header each, the lazy pages, the status.
    assert.equal(replies.length, json.gets);
    assert.equal(c2s.length, (json.gets + 1) * format);
    assert.equal(s2c.length, json.gets * format + lazyPages * PAGE + 4);
  });

  test(`criu ${version} remote-lazy: every reply echoes its GET (vaddr, dst_id, pad, nr_pages) as ADD_F|PE_PRESENT`, () => {
    const { s2c, messages } = parseSession(version, format, 'remote-lazy');
    const { replies } = parseLazyReplies(s2c, format, messages);
    const pid = BigInt(sessionFacts(version, 'remote-lazy').workload.ns_pid);
    const getPad = streamFacts(version, 'remote-lazy').get_pad;
    if (format === 32) assert.ok(getPad !== null, '4.2.1: every GET of the recording carries the same padding');
    for (const r of replies) {
      const what = `reply #${r.index} to GET #${r.requestIndex}`;
      assert.equal(r.request.dstId, pid, `${what}: GET dst_id is the bare vpid`);
      assert.equal(r.header.cmd, GET_REPLY_CMD, `${what}: cmd`);
      assert.equal(r.header.vaddr, r.request.vaddr, `${what}: vaddr`);
      assert.equal(r.header.dstId, r.request.dstId, `${what}: dst_id`);
      assert.equal(r.header.pad, r.request.pad, `${what}: pad`);
      assert.equal(r.header.nrPages, r.request.nrPages, `${what}: nr_pages (never clamped in these sessions)`);
      if (format === 32) assert.equal(r.header.pad, Number(getPad), `${what}: 4.2.1 sends uninitialised padding`);
    }
    const closeHeader = messages.at(-1)!.header;
    assert.deepEqual(closeHeader, { cmd: PS_IOV_CLOSE, pad: 0, nrPages: 0n, vaddr: 0n, dstId: 0n });
  });

  test(`criu ${version} remote-lazy: the served pages are the PE_LAZY pages, data pages match the pattern`, () => {
    const { s2c, messages } = parseSession(version, format, 'remote-lazy');
    const { replies } = parseLazyReplies(s2c, format, messages);
    const json = streamFacts(version, 'remote-lazy');
    const { seen, bad } = checkDataPages(
      replies.map((r) => ({
        vaddr: r.header.vaddr,
        nrPages: r.header.nrPages,
        payload: s2c.subarray(r.payloadOffset, r.payloadOffset + r.payloadLength),
      })),
      recordedDataArea(version, 'remote-lazy'),
    );
    assert.equal(seen, json.data_pages_seen);
    assert.equal(bad, json.data_pages_bad);
    assert.equal(bad, 0);

    // Cross-check: served set == the PE_LAZY pages of the destination's pagemap, each once.
    const pagemap = sessionFacts(version, 'remote-lazy').pagemap;
    const lazy = new Set<bigint>();
    for (const e of pagemap.entries) {
      if (!(e.flags & PE_LAZY)) continue;
      for (let i = 0; i < e.nr_pages; i++) lazy.add(BigInt(e.vaddr) + BigInt(i * PAGE));
    }
    const served: bigint[] = [];
    for (const r of replies) for (let i = 0n; i < r.header.nrPages; i++) served.push(r.header.vaddr + i * BigInt(PAGE));
    assert.equal(new Set(served).size, served.length, 'no page served twice');
    assert.deepEqual(new Set(served), lazy);
  });

  test(`criu ${version} upload: both streams parse completely and match transcript.tsv and session.json`, () => {
    const { c2s, s2c, messages } = parseSession(version, format, 'upload');
    const replies = parseUploadReplies(s2c, messages);
    const rows = readTranscript(version, 'upload');
    const facts = sessionFacts(version, 'upload');
    const json = streamFacts(version, 'upload');
    const pid = BigInt(facts.workload.ns_pid);

    // OPEN2, one ADD_F per entry of the pagemap criu page-server wrote, CLOSE
    assert.deepEqual(
      messages.map((m) => commandName(m.command)),
      ['OPEN2', ...new Array(facts.pagemap.entries.length).fill('ADD_F'), 'CLOSE'],
    );
    for (const m of messages.slice(0, -1)) {
      assert.equal(m.header.dstId, (pid << 8n) | BigInt(PS_TYPE_PID));
      assert.deepEqual(decodeDstId(m.header.dstId), { id: pid, type: PS_TYPE_PID, rawType: PS_TYPE_PID });
      assert.equal(m.header.pad, 0, '4.2 upload padding is 0');
    }
    assert.deepEqual(
      replies.map((r) => [commandName(r.command), r.offset, r.length, r.value, r.requestIndex]),
      [['OPEN2', 0, 1, 0, 0], ['CLOSE', 1, 4, 0, messages.length - 1]],
    );

    const c2sRows = rows.filter((r) => r.dir === 'c2s');
    const s2cRows = rows.filter((r) => r.dir === 's2c');
    assert.equal(c2sRows.length, messages.length);
    messages.forEach((m, i) => assertHeaderRow(c2sRows[i]!, format, m.offset, m.header, m.payloadLength));
    const messageOfRow = new Map(c2sRows.map((r, i) => [r.idx, i]));
    assert.equal(s2cRows.length, replies.length);
    replies.forEach((r, i) => {
      const row = s2cRows[i]!;
      const expectedOp = r.command === PS_IOV_OPEN2 ? 'OPEN2_REPLY' : 'CLOSE_STATUS';
      const key = r.command === PS_IOV_OPEN2 ? 'has_parent' : 'status';
      assert.deepEqual(
        [row.op, row.off, row.hdr_len, row.payload_len, noteField(row.note, key)],
        [expectedOp, r.offset, 0, r.length, String(r.value)],
      );
      const req = replyTo(row.note)!;
      assert.ok(req < row.idx);
      assert.equal(messageOfRow.get(req), r.requestIndex);
    });

    assert.equal(json.c2s_bytes, c2s.length);
    assert.equal(json.s2c_bytes, s2c.length);
    assert.equal(s2c.length, 5);
    assert.equal(json.c2s_messages, messages.length);
    assert.equal(json.s2c_messages, replies.length);
    const histogram: Record<string, number> = {};
    const bump = (key: string) => (histogram[key] = (histogram[key] ?? 0) + 1);
    for (const m of messages) {
      const name = commandName(m.command);
      bump(m.flags ? `${name}|${flagsString(m.flags)}@c2s` : `${name}@c2s`);
    }
    for (const r of replies) bump(r.command === PS_IOV_OPEN2 ? 'OPEN2_REPLY@s2c' : 'CLOSE_STATUS@s2c');
    assert.deepEqual(histogram, json.commands);
    const withData = messages.filter((m) => m.payloadLength > 0);
    assert.equal(withData.reduce((n, m) => n + Number(m.header.nrPages), 0), json.pages_with_data);
    assert.deepEqual(withData.map((m) => [hex(m.header.vaddr), Number(m.header.nrPages)]), json.page_payload_order);
    assert.equal(c2s.length, messages.length * format + facts.pagemap.totals.pages * PAGE);
    assert.equal(createHash('sha256').update(c2s).digest('hex'), json.client_to_server_sha256);
    assert.equal(createHash('sha256').update(s2c).digest('hex'), json.server_to_client_sha256);
    if (format === 32) assert.deepEqual(json.pad_values, ['0x00000000']);

    // Data pages, and criu page-server's pages image (its size and sha256, recorded) == the concatenated ADD_F
    // payloads.
    const { seen, bad } = checkDataPages(
      withData.map((m) => ({
        vaddr: m.header.vaddr,
        nrPages: m.header.nrPages,
        payload: c2s.subarray(m.payloadOffset, m.payloadOffset + m.payloadLength),
      })),
      recordedDataArea(version, 'upload'),
    );
    assert.equal(seen, json.data_pages_seen);
    assert.equal(bad, json.data_pages_bad);
    const pagesImg = facts.derived?.[`page-server-images/${facts.pagemap.pages_img}`];
    assert.ok(pagesImg, 'session.json records the pages image criu page-server wrote');
    const payloads = Buffer.concat(withData.map((m) => c2s.subarray(m.payloadOffset, m.payloadOffset + m.payloadLength)));
    assert.equal(payloads.length, pagesImg.bytes);
    assert.equal(createHash('sha256').update(payloads).digest('hex'), pagesImg.sha256);
  });

  test(`criu ${version}: encodeHeader(decodeHeader(x)) == x for every header, and the streams rebuild byte-exactly`, () => {
    for (const session of SESSIONS) {
      const { c2s, s2c, messages } = parseSession(version, format, session);
      const rebuilt: Buffer[] = [];
      for (const m of messages) {
        const raw = c2s.subarray(m.offset, m.offset + format);
        const encoded = encodeHeader(format, decodeHeader(format, c2s, m.offset));
        assert.ok(encoded.equals(raw), `${session} c2s header at ${m.offset}: ${encoded.toString('hex')} != ${raw.toString('hex')}`);
        rebuilt.push(encoded, c2s.subarray(m.payloadOffset, m.payloadOffset + m.payloadLength));
      }
      assert.ok(Buffer.concat(rebuilt).equals(c2s), `${session} c2s rebuilt`);

      if (session === 'remote-lazy') {
        const { replies, close } = parseLazyReplies(s2c, format, messages);
        const out: Buffer[] = [];
        for (const r of replies) {
          const raw = s2c.subarray(r.offset, r.offset + format);
          const encoded = encodeHeader(format, decodeHeader(format, s2c, r.offset));
          assert.ok(encoded.equals(raw), `s2c header at ${r.offset}`);
          out.push(encoded, s2c.subarray(r.payloadOffset, r.payloadOffset + r.payloadLength));
        }
        const status = Buffer.alloc(4);
        status.writeInt32LE(close!.value);
        out.push(status);
        assert.ok(Buffer.concat(out).equals(s2c), 'lazy s2c rebuilt');
      }
    }
  });

  test(`criu ${version}: detectFormat on every real header`, () => {
    // The first header of every stream that has one.
    for (const session of SESSIONS) {
      const c2s = readBin(version, session, 'client-to-server.bin');
      assert.equal(detectFormat(c2s), format, `${session} client-to-server.bin`);
    }
    const lazyS2c = readBin(version, 'remote-lazy', 'server-to-client.bin');
    assert.equal(detectFormat(lazyS2c), format, 'remote-lazy server-to-client.bin');
    assert.equal(detectFormat(readBin(version, 'upload', 'server-to-client.bin')), undefined, 'upload s2c: 5 bytes');
    // Every other header too: the rule must hold for each one, CLOSE excepted.
    for (const session of SESSIONS) {
      const { c2s, s2c, messages } = parseSession(version, format, session);
      for (const m of messages) {
        const expected = m.command === PS_IOV_CLOSE ? undefined : format;
        assert.equal(detectFormat(c2s.subarray(m.offset, m.offset + format)), expected, `${session} c2s @${m.offset}`);
        assert.equal(detectFormat(c2s.subarray(m.offset)), expected, `${session} c2s @${m.offset} (rest of stream)`);
      }
      if (session === 'remote-lazy') {
        for (const r of parseLazyReplies(s2c, format, messages).replies) {
          assert.equal(detectFormat(s2c.subarray(r.offset, r.offset + format)), format, `s2c @${r.offset}`);
        }
      }
    }
  });
}

// ---- crafted headers ----

function h24(cmd: number, nrPages: number | bigint, vaddr: bigint, dstId: bigint): Buffer {
  const b = Buffer.alloc(24);
  b.writeUInt32LE(cmd >>> 0, 0);
  b.writeUInt32LE(Number(nrPages), 4);
  b.writeBigUInt64LE(vaddr, 8);
  b.writeBigUInt64LE(dstId, 16);
  return b;
}
function h32(cmd: number, pad: number, nrPages: bigint, vaddr: bigint, dstId: bigint): Buffer {
  const b = Buffer.alloc(32);
  b.writeUInt32LE(cmd >>> 0, 0);
  b.writeUInt32LE(pad, 4);
  b.writeBigUInt64LE(nrPages, 8);
  b.writeBigUInt64LE(vaddr, 16);
  b.writeBigUInt64LE(dstId, 24);
  return b;
}

const MIB4 = BigInt(PID_MAX_LIMIT); // 4 MiB == PID_MAX_LIMIT == 0x400000
const ADD_F_PRESENT = makeCmd(PS_IOV_ADD_F, PE_PRESENT);

// The same cases as native/tests/wire_test.cc (keep the two tables in step).
const DETECT_CASES: Array<{ name: string; bytes: Buffer; pageSize?: number; expect: WireFormat | undefined }> = [
  // CLOSE and FORCE_CLOSE: zeros in both layouts, answered without deciding.
  { name: 'CLOSE, 24 bytes', bytes: h24(PS_IOV_CLOSE, 0, 0n, 0n), expect: undefined },
  { name: 'CLOSE, 32 bytes', bytes: h32(PS_IOV_CLOSE, 0, 0n, 0n, 0n), expect: undefined },
  { name: 'CLOSE, 32 bytes with pad garbage', bytes: h32(PS_IOV_CLOSE, 0x5555, 0n, 0n, 0n), expect: undefined },
  { name: 'FORCE_CLOSE', bytes: h24(PS_IOV_FORCE_CLOSE, 0, 0n, 0n), expect: undefined },
  // Garbage.
  { name: 'all 0xff', bytes: Buffer.alloc(32, 0xff), expect: undefined },
  { name: 'all zero (command 0)', bytes: Buffer.alloc(32), expect: undefined },
  { name: 'unknown command 8', bytes: h24(8, 1, 0x7ffff7dbd000n, 1n), expect: undefined },
  { name: 'unknown command 0x1025', bytes: h24(0x1025, 1, 0x7ffff7dbd000n, 1n), expect: undefined },
  { name: 'ASCII text', bytes: Buffer.from('GET /lazy-pages HTTP/1.1\r\nHost: x\r\n'), expect: undefined },
  { name: 'a valid GET cut to 23 bytes', bytes: h24(PS_IOV_GET, 1, 0x7ffff7dbd000n, 1n).subarray(0, 23), expect: undefined },
  { name: 'empty', bytes: Buffer.alloc(0), expect: undefined },
  // GET at the PID_MAX_LIMIT / 4 MiB boundary.
  { name: 'GET24 pid 4194304 vaddr 4M+4K', bytes: h24(PS_IOV_GET, 1, MIB4 + 0x1000n, MIB4), expect: 24 },
  { name: 'GET32 pid 4194304 vaddr 4M+4K', bytes: h32(PS_IOV_GET, 0, 1n, MIB4 + 0x1000n, MIB4), expect: 32 },
  { name: 'GET32 pad 0x5555 pid 4194304 vaddr 4M+4K', bytes: h32(PS_IOV_GET, 0x5555, 1n, MIB4 + 0x1000n, MIB4), expect: 32 },
  { name: 'GET24 pid 4194305 (above PID_MAX_LIMIT)', bytes: h24(PS_IOV_GET, 1, MIB4 + 0x1000n, MIB4 + 1n), expect: undefined },
  { name: 'GET32 vaddr exactly 4M (ambiguous zone)', bytes: h32(PS_IOV_GET, 0x5555, 1n, MIB4, 1n), expect: undefined },
  { name: 'GET32 vaddr 4K (ambiguous zone)', bytes: h32(PS_IOV_GET, 0, 1n, 0x1000n, 1n), expect: undefined },
  // Documented limit: a 32-byte GET below 4 MiB + 1 page whose nr_pages is a page multiple reads as 24.
  { name: 'GET32 vaddr 4M nr 4096 pad 1 (documented limit)', bytes: h32(PS_IOV_GET, 1, 4096n, MIB4, 1n), expect: 24 },
  // Malformed GETs.
  { name: 'GET24 pid 0', bytes: h24(PS_IOV_GET, 1, 0x7ffff7dbd000n, 0n), expect: undefined },
  { name: 'GET24 nr_pages 0', bytes: h24(PS_IOV_GET, 0, 0x7ffff7dbd000n, 1n), expect: undefined },
  { name: 'GET24 vaddr 0', bytes: h24(PS_IOV_GET, 1, 0n, 1n), expect: undefined },
  { name: 'GET24 vaddr unaligned', bytes: h24(PS_IOV_GET, 1, 0x7ffff7dbd800n, 1n), expect: undefined },
  { name: 'GET24 vaddr 4K pid 1', bytes: h24(PS_IOV_GET, 1, 0x1000n, 1n), expect: 24 },
  { name: 'GET24 with flags in cmd', bytes: h24(makeCmd(PS_IOV_GET, PE_PRESENT), 1, 0x7ffff7dbd000n, 1n), expect: 24 },
  { name: 'GET32 nr_pages 0', bytes: h32(PS_IOV_GET, 0x5555, 0n, 0x7ffff7dbd000n, 1n), expect: undefined },
  { name: 'GET32 nr_pages 2^32-1', bytes: h32(PS_IOV_GET, 0, 0xffffffffn, 0x7ffff7dbd000n, 1n), expect: 32 },
  { name: 'GET32 nr_pages 2^32', bytes: h32(PS_IOV_GET, 0, 1n << 32n, 0x7ffff7dbd000n, 1n), expect: undefined },
  { name: 'GET32 vaddr unaligned', bytes: h32(PS_IOV_GET, 0, 1n, 0x7ffff7dbd800n, 1n), expect: undefined },
  { name: 'GET32, only the first 24 bytes', bytes: h32(PS_IOV_GET, 0x5555, 1n, 0x7ffff7dbd000n, 1n).subarray(0, 24), expect: 32 },
  // Page size: 64 KiB pages need 64 KiB alignment.
  { name: 'GET32 vaddr 4K-aligned, 64K pages', bytes: h32(PS_IOV_GET, 0, 1n, 0x7ffff7dbd000n, 1n), pageSize: 65536, expect: undefined },
  { name: 'GET32 vaddr 64K-aligned, 64K pages', bytes: h32(PS_IOV_GET, 0, 1n, 0x7ffff7dc0000n, 1n), pageSize: 65536, expect: 32 },
  { name: 'GET24 vaddr 64K-aligned, 64K pages', bytes: h24(PS_IOV_GET, 1, 0x7ffff7dc0000n, 1n), pageSize: 65536, expect: 24 },
  // Upload commands: the type byte of a 24-byte dst_id (never 0) vs a page-aligned 32-byte vaddr.
  { name: 'OPEN2 24', bytes: h24(PS_IOV_OPEN2, 0, 0n, 0x101n), expect: 24 },
  { name: 'OPEN2 32', bytes: h32(PS_IOV_OPEN2, 0, 0n, 0n, 0x101n), expect: 32 },
  { name: 'OPEN 24 shmem', bytes: h24(PS_IOV_OPEN, 0, 0n, (77n << 8n) | 2n), expect: 24 },
  { name: 'PARENT 24', bytes: h24(PS_IOV_PARENT, 0, 0n, 0x101n), expect: 24 },
  { name: 'PARENT 32', bytes: h32(PS_IOV_PARENT, 0, 0n, 0n, 0x101n), expect: 32 },
  { name: 'HOLE 24', bytes: h24(makeCmd(PS_IOV_HOLE), 3, 0x7ffff7dbd000n, 0x101n), expect: 24 },
  { name: 'ADD 32', bytes: h32(PS_IOV_ADD, 0, 1n, 0x7ffff7dbd000n, 0x101n), expect: 32 },
  { name: 'ADD_F 24 legacy type 10', bytes: h24(ADD_F_PRESENT, 1, 0x7ffff7dbd000n, (1n << 8n) | 10n), expect: 24 },
  { name: 'ADD_F 24 pid 256 (dst_id 0x10001)', bytes: h24(ADD_F_PRESENT, 1, 0x7ffff7dbd000n, 0x10001n), expect: 24 },
  // A 32-byte ADD_F as the first header ("IO w/o open"): u64@16 is a nonzero vaddr, its low byte 0.
  { name: 'ADD_F 32 without OPEN2', bytes: h32(ADD_F_PRESENT, 0, 1n, 0x7ffff7dbd000n, 0x101n), expect: 32 },
  { name: 'ADD_F 32 shmem offset 0', bytes: h32(ADD_F_PRESENT, 0, 1n, 0n, (5n << 8n) | 2n), expect: 32 },
  { name: 'ADD_F 32 reply with pad garbage', bytes: h32(GET_REPLY_CMD, 0x5555, 1n, 0x7ffff7dbd000n, 1n), expect: 32 },
  { name: 'ADD_F 24 reply', bytes: h24(GET_REPLY_CMD, 1, 0x7ffff7dbd000n, 1n), expect: 24 },
  // wire.cc checks only the low byte of u64@16 for upload commands; malformed ones still get a layout.
  { name: 'ADD_F u64@16 = 0x100 (malformed either way)', bytes: h24(ADD_F_PRESENT, 1, 0x1000n, 0x100n), expect: 32 },
];

test('detectFormat: crafted edge cases (same table as wire_test.cc)', () => {
  for (const c of DETECT_CASES) {
    assert.equal(detectFormat(c.bytes, c.pageSize), c.expect, c.name);
  }
});

test('detectFormat rejects a page size that is not a power of two', () => {
  assert.throws(() => detectFormat(Buffer.alloc(24), 0), RangeError);
  assert.throws(() => detectFormat(Buffer.alloc(24), 4095), RangeError);
});

// ---- codec details ----

test('header codec: layouts, the doc example, cmd helpers, Uint8Array input', () => {
  // docs/protocol.md §1.2: GET one page at 0x7f0000001000 for pid 1234 (24-byte layout).
  const get = { cmd: PS_IOV_GET, pad: 0, nrPages: 1n, vaddr: 0x7f0000001000n, dstId: 1234n };
  assert.equal(encodeHeader(24, get).toString('hex'), '070000000100000000100000007f0000d204000000000000');
  assert.equal(
    encodeHeader(32, { ...get, pad: 0x5555 }).toString('hex'),
    '07000000555500000100000000000000' + '00100000007f0000d204000000000000',
  );
  const wide = { cmd: 0xffffffff, pad: 0xfffffffe, nrPages: (1n << 64n) - 1n, vaddr: (1n << 64n) - 2n, dstId: 1n << 63n };
  assert.deepEqual(decodeHeader(32, encodeHeader(32, wide)), wide);
  // Decoding at an offset, from a plain Uint8Array view.
  const framed = new Uint8Array(7 + 32);
  framed.set(encodeHeader(32, wide), 7);
  assert.deepEqual(decodeHeader(32, framed.subarray(3), 4), wide);
  // 24-byte: pad is not on the wire.
  assert.deepEqual(decodeHeader(24, encodeHeader(24, { ...get, pad: 9 })), get);

  assert.equal(makeCmd(PS_IOV_ADD_F, PE_PRESENT), GET_REPLY_CMD);
  assert.equal(GET_REPLY_CMD, 0x00040006);
  assert.equal(command(0x00060006), PS_IOV_ADD_F);
  assert.equal(flags(0x00060006), PE_LAZY | PE_PRESENT);
  assert.equal(flags(0xffff0007), 0xffff);
  assert.equal(commandName(PS_IOV_FORCE_CLOSE), 'FORCE_CLOSE');
  assert.equal(commandName(99), 'unknown');
});

test('header codec: out-of-range fields and short buffers throw', () => {
  const ok = { cmd: PS_IOV_GET, pad: 0, nrPages: 1n, vaddr: 0x1000n, dstId: 1n };
  assert.throws(() => encodeHeader(24, { ...ok, nrPages: 1n << 32n }), RangeError);
  assert.doesNotThrow(() => encodeHeader(32, { ...ok, nrPages: 1n << 32n }));
  assert.throws(() => encodeHeader(32, { ...ok, nrPages: -1n }), RangeError);
  assert.throws(() => encodeHeader(32, { ...ok, vaddr: 1n << 64n }), RangeError);
  assert.throws(() => encodeHeader(32, { ...ok, dstId: -1n }), RangeError);
  assert.throws(() => encodeHeader(32, { ...ok, cmd: -1 }), RangeError);
  assert.throws(() => encodeHeader(32, { ...ok, cmd: 2 ** 32 }), RangeError);
  assert.throws(() => encodeHeader(32, { ...ok, pad: 1.5 }), RangeError);
  assert.throws(() => encodeHeader(28 as WireFormat, ok), RangeError);
  assert.throws(() => decodeHeader(32, Buffer.alloc(31)), RangeError);
  assert.throws(() => decodeHeader(24, Buffer.alloc(30), 7), RangeError);
  assert.throws(() => makeCmd(PS_IOV_GET, 0x10000), RangeError);
});

test('dst_id: (id << 8) | type, legacy type numbers, unknown types', () => {
  assert.equal(encodeDstId(1, PS_TYPE_PID), 0x101n);
  assert.equal(encodeDstId(1n), 0x101n);
  assert.equal(encodeDstId(0x1234, PS_TYPE_SHMEM), 0x123402n);
  assert.deepEqual(decodeDstId(0x101n), { id: 1n, type: PS_TYPE_PID, rawType: 1 });
  assert.deepEqual(decodeDstId(0x123402), { id: 0x1234n, type: PS_TYPE_SHMEM, rawType: 2 });
  for (const t of [10, 11, 16, 17]) {
    assert.deepEqual(decodeDstId(encodeDstId(42, t)), { id: 42n, type: PS_TYPE_PID, rawType: t }, `legacy ${t}`);
  }
  for (const t of [27, 28, 29, 32, 33, 34]) {
    assert.deepEqual(decodeDstId(encodeDstId(42, t)), { id: 42n, type: PS_TYPE_SHMEM, rawType: t }, `legacy ${t}`);
  }
  const largest = (1n << 56n) - 1n;
  assert.deepEqual(decodeDstId(encodeDstId(largest, 1)), { id: largest, type: PS_TYPE_PID, rawType: 1 });
  for (const t of [0, 3, 9, 12, 15, 18, 26, 30, 31, 35, 255]) {
    assert.throws(() => decodeDstId((7n << 8n) | BigInt(t)), WireError, `type ${t}`);
    assert.throws(() => encodeDstId(7, t), RangeError, `type ${t}`);
  }
  assert.throws(() => encodeDstId(1n << 56n, 1), RangeError);
  assert.throws(() => encodeDstId(-1, 1), RangeError);
  assert.throws(() => decodeDstId(1n << 64n), RangeError);
});

// ---- stream parser errors ----

test('parseClientStream: truncation, unknown commands and bytes after CLOSE are errors', () => {
  const get = h24(PS_IOV_GET, 1, 0x7ffff7dbd000n, 1n);
  const close = h24(PS_IOV_CLOSE, 0, 0n, 0n);
  assert.deepEqual(parseClientStream(Buffer.alloc(0), 24), []);
  assert.equal(parseClientStream(Buffer.concat([get, get]), 24).length, 2, 'a stream may end without CLOSE');
  assert.throws(() => parseClientStream(Buffer.concat([get, get.subarray(0, 10)]), 24), (e: unknown) =>
    e instanceof WireError && e.offset === 24 && /truncated header/.test(e.message));
  assert.throws(() => parseClientStream(Buffer.concat([get, close, Buffer.from([0])]), 24), /1 bytes after CLOSE/);
  assert.throws(() => parseClientStream(h24(0x99, 0, 0n, 0n), 24), /unknown command 0x00000099/);
  const add = h24(ADD_F_PRESENT, 2, 0x1000n, 0x101n);
  assert.throws(() => parseClientStream(Buffer.concat([add, Buffer.alloc(8191)]), 24), /truncated payload/);
  const parsed = parseClientStream(Buffer.concat([add, Buffer.alloc(8192), close]), 24);
  assert.deepEqual(parsed.map((m) => [m.offset, m.payloadOffset, m.payloadLength]), [[0, 24, 8192], [8216, 8240, 0]]);
  // ADD always carries data, ADD_F only with PE_PRESENT, HOLE never.
  const lazyOnly = h24(makeCmd(PS_IOV_ADD_F, PE_LAZY), 5, 0x1000n, 0x101n);
  const hole = h24(PS_IOV_HOLE, 5, 0x6000n, 0x101n);
  const legacyAdd = h24(PS_IOV_ADD, 1, 0xb000n, 0x101n);
  assert.deepEqual(
    parseClientStream(Buffer.concat([lazyOnly, hole, legacyAdd, Buffer.alloc(4096)]), 24).map((m) => m.payloadLength),
    [0, 0, 4096],
  );
  // The real upload stream cut inside a payload.
  const real = readBin('4.2.1', 'upload', 'client-to-server.bin');
  assert.throws(() => parseClientStream(real.subarray(0, 5000), 32), WireError);
  // And read with the wrong layout.
  assert.throws(() => parseClientStream(real, 24), WireError);
});

test('parseLazyReplies and parseUploadReplies: malformed server streams are errors', () => {
  const reqs = parseClientStream(
    Buffer.concat([h32(PS_IOV_GET, 0, 2n, 0x7ffff7dbd000n, 1n), h32(PS_IOV_CLOSE, 0, 0n, 0n, 0n)]),
    32,
  );
  const reply = (n: bigint) => h32(GET_REPLY_CMD, 0, n, 0x7ffff7dbd000n, 1n);
  const status = Buffer.alloc(4);
  // A clamped reply (fewer pages than asked) is fine.
  const clamped = parseLazyReplies(Buffer.concat([reply(1n), Buffer.alloc(4096), status]), 32, reqs);
  assert.equal(clamped.replies[0]!.payloadLength, 4096);
  assert.equal(clamped.close!.value, 0);
  // Bare headers work as requests too.
  assert.equal(parseLazyReplies(Buffer.concat([reply(2n), Buffer.alloc(8192)]), 32, [reqs[0]!.header]).replies.length, 1);
  assert.throws(() => parseLazyReplies(Buffer.concat([reply(3n), Buffer.alloc(3 * 4096), status]), 32, reqs), /3 pages, 2 were requested/);
  assert.throws(() => parseLazyReplies(Buffer.concat([reply(0n), status]), 32, reqs), /0 pages/);
  assert.throws(() => parseLazyReplies(Buffer.concat([reply(2n), Buffer.alloc(8000)]), 32, reqs), /truncated reply/);
  assert.throws(() => parseLazyReplies(Buffer.concat([reply(2n), Buffer.alloc(8192), status.subarray(0, 2)]), 32, reqs), /truncated CLOSE reply/);
  assert.throws(() => parseLazyReplies(Buffer.concat([reply(2n), Buffer.alloc(8192), status, status]), 32, reqs), /4 unexpected bytes/);
  assert.throws(() => parseLazyReplies(Buffer.alloc(0), 32, [{ cmd: PS_IOV_OPEN2, pad: 0, nrPages: 0n, vaddr: 0n, dstId: 0x101n }]), /not part of a lazy session/);

  const upload = parseClientStream(
    Buffer.concat([h24(PS_IOV_PARENT, 0, 0n, 0x101n), h24(PS_IOV_OPEN2, 0, 0n, 0x101n), h24(PS_IOV_CLOSE, 0, 0n, 0n)]),
    24,
  );
  const answers = Buffer.from([1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
  assert.deepEqual(
    parseUploadReplies(answers, upload).map((r) => [commandName(r.command), r.offset, r.length, r.value]),
    [['PARENT', 0, 4, 1], ['OPEN2', 4, 1, 1], ['CLOSE', 5, 4, -1]],
  );
  assert.throws(() => parseUploadReplies(answers.subarray(0, 8), upload), /truncated CLOSE reply/);
  assert.throws(() => parseUploadReplies(Buffer.concat([answers, Buffer.from([0])]), upload), /1 unexpected bytes/);
  assert.throws(() => parseUploadReplies(Buffer.alloc(0), reqs), /GET/);
});
