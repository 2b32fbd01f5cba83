// The daemon's logger: pino loaded at once. Formats, levels and the deferred logger of `lazyd lazy-pages` are in
// ./log-core.ts (which does not load pino).
import pino from 'pino';
import { logHandle, type LogHandle, type LogOptions } from './log-core.js';

export * from './log-core.js';

export function createLogger(options: LogOptions = {}): LogHandle {
  return logHandle(options, { pino });
}
