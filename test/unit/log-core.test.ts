// The deferred logger of `lazyd lazy-pages` (src/log-core.ts) writes its lines, until pino is loaded, in the shape
// pino gives them: here each kind of record lazyd logs is written both ways and the lines must be the same bytes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { pinoOptions, pinoShapedLine, type Logger } from '../../src/log-core.js';

const TIME = 1796197072971.5;

function byPino(level: keyof Logger, args: unknown[]): string {
  let out = '';
  const logger = pino(pinoOptions('debug', () => TIME), { write: (chunk: string) => void (out += chunk) } as unknown as pino.DestinationStream);
  (logger[level] as (...a: unknown[]) => void)(...args);
  return out;
}

const RECORDS: [keyof Logger, unknown[]][] = [
  ['info', ['Loaded /var/lib/ckpt: 3 tasks, 16463 lazy pages, page server 10.0.0.1:9876 (32-byte headers)']],
  ['info', ['Metrics on http://127.0.0.1:9101/metrics']],
  ['warn', ['a "quoted" word, a back\\slash, a tab\t, a newline\n and ünïcödé — ✓']],
  ['error', ['x']],
  ['debug', ['']],
  ['fatal', ['fatal: ' + 'long '.repeat(40)]],
  [
    'info',
    [
      { pages: 16463, lazyPages: 16463, zeroPages: 0, dropped: 0, faults: 299, bytes: 67456452, seconds: 0.205, result: 'ok' },
      'Lazy pages done: 16463 pages installed',
    ],
  ],
  ['error', [{ pages: 1, result: 'failed', note: 'with "quotes"', list: [1, 2, 3], flag: true, none: null }, 'lazy-pages failed: page server gone']],
];

test('until pino is loaded, each line has the bytes pino would write for it', () => {
  for (const [level, args] of RECORDS) {
    assert.equal(pinoShapedLine(level, TIME, args), byPino(level, args), `${level} ${JSON.stringify(args)}`);
  }
});
