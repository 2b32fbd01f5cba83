// A pino logger whose lines the test keeps in memory, parsed: for tests that run lazyd's page server in their own
// process and check what it logged.
import pino from 'pino';

export type LogLine = { level: number; msg: string; [field: string]: unknown };

export function memoryLogger(): { logger: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'debug', base: undefined }, {
    write(line: string) {
      lines.push(JSON.parse(line));
    },
  } as pino.DestinationStream);
  return { logger, lines };
}
