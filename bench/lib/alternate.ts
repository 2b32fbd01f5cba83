// The alternation runner: runs configurations side by side in rounds (A B A B ...), so that the drift of a
// shared machine hits every configuration alike. A failed run is retried (default once) right away; if it still
// fails, the failure is recorded and the benchmark goes on (its round then has no ratio).
import { setTimeout as sleep } from 'node:timers/promises';

export interface AlternationOptions<T, C extends string = string> {
  /** Configuration names, in the order each round runs them (the first is the baseline of ratios). */
  configs: readonly C[];
  /** Rounds ("pairs" for two configurations). */
  rounds: number;
  run: (config: C, round: number) => Promise<T>;
  /** Extra attempts for a failed run (default 1). */
  retries?: number;
  /** Pause between runs, to let the previous run's teardown settle (default 500 ms). */
  settleMs?: number;
  log?: (message: string) => void;
  /** Summarizes a finished run in one line for the log. */
  describe?: (value: T) => string;
}

export interface RunOutcome<T> {
  config: string;
  /** 1-based round. */
  round: number;
  /** 1-based position in the whole sequence. */
  seq: number;
  ok: boolean;
  value?: T;
  /** The last attempt's error, when every attempt failed. */
  error?: string;
  /** Errors of attempts that were retried. */
  retriedErrors: string[];
  attempts: number;
  startedAt: string;
  wallMs: number;
}

export async function runAlternating<T, C extends string = string>(options: AlternationOptions<T, C>): Promise<RunOutcome<T>[]> {
  const log = options.log ?? (() => undefined);
  const retries = options.retries ?? 1;
  const settleMs = options.settleMs ?? 500;
  const outcomes: RunOutcome<T>[] = [];
  const total = options.rounds * options.configs.length;
  for (let round = 1; round <= options.rounds; round++) {
    for (const config of options.configs) {
      const seq = outcomes.length + 1;
      const startedAt = new Date().toISOString();
      const started = performance.now();
      const retriedErrors: string[] = [];
      let outcome: RunOutcome<T> | undefined;
      for (let attempt = 1; !outcome; attempt++) {
        if (seq > 1 || attempt > 1) await sleep(settleMs);
        log(`run ${seq}/${total}: ${config}, round ${round}${attempt > 1 ? ` (attempt ${attempt})` : ''}`);
        try {
          const value = await options.run(config, round);
          outcome = { config, round, seq, ok: true, value, retriedErrors, attempts: attempt, startedAt, wallMs: performance.now() - started };
          if (options.describe) log(`  ${config}: ${options.describe(value)}`);
        } catch (error) {
          const message = error instanceof Error ? error.message : String(error);
          log(`  ${config} FAILED: ${message.split('\n')[0]}`);
          if (attempt <= retries) {
            retriedErrors.push(message);
            continue;
          }
          outcome = { config, round, seq, ok: false, error: message, retriedErrors, attempts: attempt, startedAt, wallMs: performance.now() - started };
        }
      }
      outcomes.push(outcome);
    }
  }
  return outcomes;
}
