// The recorded test vectors of test/fixtures are whole and agree with their session.json: every file listed with
// its size and sha256 and nothing else, the file the repository rebuilds instead of storing it twice, and the
// recorder's own decoding of the pagemap and of the streams (test/fixtures/record/) matching what it wrote.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  FIXTURE_VERSIONS,
  SESSIONS,
  fixturePath,
  fixturesRoot,
  readFixture,
  sessionFacts,
  uploadPagesImage,
  type SessionName,
} from '../fixtures/fixtures.js';
import { decodePagemap } from '../fixtures/record/pagemap.js';
import { commandKey, parseSession } from '../fixtures/record/stream.js';

function filesUnder(dir: string, rel = ''): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const name = rel ? `${rel}/${e.name}` : e.name;
    return e.isDirectory() ? filesUnder(path.join(dir, e.name), name) : [name];
  });
}

test('test/fixtures holds a README and one directory per recorded CRIU version', () => {
  assert.ok(fs.existsSync(path.join(fixturesRoot(), 'README.md')));
  const dirs = fs.readdirSync(fixturesRoot()).filter((name) => name.startsWith('criu-')).sort();
  assert.deepEqual(dirs, FIXTURE_VERSIONS.map((v) => `criu-${v.version}`));
});

for (const { version, headerBytes } of FIXTURE_VERSIONS) {
  for (const session of SESSIONS) {
    const where = `criu-${version}/${session}`;

    test(`${where}: every file is listed in session.json with its size and sha256, and nothing else is there`, () => {
      const facts = sessionFacts(version, session);
      assert.equal(facts.criu.header_bytes, headerBytes);
      assert.equal(facts.criu.pagemap_encoding, headerBytes === 24 ? '4.1' : '4.2');
      assert.ok(facts.checks.length >= 4, 'the recorder ran its checks');
      const present = filesUnder(fixturePath(version, session)).filter((f) => f !== 'session.json').sort();
      assert.deepEqual(present, Object.keys(facts.files).sort());
      for (const [name, want] of Object.entries(facts.files)) {
        const data = readFixture(version, session, name);
        assert.equal(data.length, want.bytes, `${where}/${name}: size`);
        assert.equal(createHash('sha256').update(data).digest('hex'), want.sha256, `${where}/${name}: sha256`);
      }
    });

    test(`${where}: the recorder's decoder gives session.json's pagemap from the committed image`, () => {
      const facts = sessionFacts(version, session);
      const pagesSize = session === 'upload'
        ? uploadPagesImage(version).data.length
        : readFixture(version, session, path.dirname(facts.pagemap.file), facts.pagemap.pages_img).length;
      assert.deepEqual(decodePagemap(readFixture(version, session, facts.pagemap.file), facts.pagemap.file, () => pagesSize), facts.pagemap);
    });
  }

  for (const session of ['remote-lazy', 'upload'] as SessionName[]) {
    test(`criu-${version}/${session}: the recorder's stream parser gives session.json's counts`, () => {
      const stream = sessionFacts(version, session).stream!;
      const { requests, replies } = parseSession(readFixture(version, session, 'client-to-server.bin'), readFixture(version, session, 'server-to-client.bin'), headerBytes);
      assert.equal(requests.length, stream.c2s_messages);
      assert.equal(replies.length, stream.s2c_messages);
      const commands: Record<string, number> = {};
      for (const m of [...requests, ...replies]) commands[commandKey(m)] = (commands[commandKey(m)] ?? 0) + 1;
      assert.deepEqual(commands, stream.commands);
    });
  }

  test(`criu-${version}/upload: the pages image criu page-server wrote rebuilds from the stream`, () => {
    const { name, data } = uploadPagesImage(version); // checks the size and sha256 the recorder took
    const facts = sessionFacts(version, 'upload');
    assert.equal(name, facts.pagemap.pages_img);
    assert.equal(data.length, facts.pagemap.pages_img_actual_size);
    assert.ok(!fs.existsSync(path.join(fixturePath(version, 'upload', 'page-server-images'), name)), 'stored once: in client-to-server.bin');
  });
}
