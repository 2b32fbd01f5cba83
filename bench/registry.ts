// Every benchmark of the suite, by name. Add a module under bench/ exporting a Benchmark and list it here.
// Opt-in ones (optIn: true) run only when named with --only.
import type { Benchmark } from './lib/types.js';
import { lazyPagesBenchmark } from './lazy-pages.js';
import { limitsBenchmark } from './limits.js';
import { migrateBenchmark } from './migrate.js';
import { migrationBenchmark } from './migration.js';
import { pageHashBenchmark } from './page-hash.js';
import { pageServerBenchmark } from './page-server.js';
import { pageStoreBenchmark } from './page-store.js';
import { relayBenchmark } from './relay.js';
import { replicateBenchmark } from './replicate.js';
import { startupBenchmark } from './startup.js';
import { tlsBenchmark } from './tls.js';

export const BENCHMARKS: readonly Benchmark[] = [
  limitsBenchmark,
  migrationBenchmark,
  migrateBenchmark,
  pageStoreBenchmark,
  pageServerBenchmark,
  lazyPagesBenchmark,
  tlsBenchmark,
  relayBenchmark,
  replicateBenchmark,
  pageHashBenchmark,
  startupBenchmark,
];
