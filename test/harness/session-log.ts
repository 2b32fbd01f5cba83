// Reads back the "Page-server session finished" lines of a lazyd page-server log, in either log format (JSON
// records, or criu text lines with key=value fields): the demo and the benchmarks total what was served.
import fs from 'node:fs';

export interface ServedSessions {
  sessions: number;
  gets: number;
  pages: number;
  bytes: number;
  /** Sum of the sessions' own durations. */
  seconds: number;
}

export function totalServedSessions(text: string): ServedSessions | undefined {
  const totals: ServedSessions = { sessions: 0, gets: 0, pages: 0, bytes: 0, seconds: 0 };
  for (const line of text.split('\n')) {
    if (!/Page-server session finished/.test(line)) continue;
    let field: (name: string) => number;
    if (line.startsWith('{')) {
      const record = JSON.parse(line) as Record<string, unknown>;
      field = (name) => Number(record[name] ?? 0);
    } else {
      field = (name) => Number(line.match(new RegExp(`\\b${name}=([\\d.]+)`))?.[1] ?? 0);
    }
    totals.sessions++;
    totals.gets += field('gets');
    totals.pages += field('pages');
    totals.bytes += field('bytes');
    totals.seconds += field('seconds');
  }
  return totals.sessions ? totals : undefined;
}

/** Totals of the "Page-server session finished" lines of the log file; undefined when it is unreadable or has none. */
export function readServedSessions(logFile: string): ServedSessions | undefined {
  let text: string;
  try {
    text = fs.readFileSync(logFile, 'utf8');
  } catch {
    return undefined;
  }
  return totalServedSessions(text);
}
