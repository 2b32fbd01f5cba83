// Every benchmark of the suite, by name. Add a module under bench/ exporting a Benchmark and list it here.
import type { Benchmark } from './lib/types.js';
import { lazyPagesBenchmark } from './lazy-pages.js';
import { pageServerBenchmark } from './page-server.js';
import { tlsBenchmark } from './tls.js';

export const BENCHMARKS: readonly Benchmark[] = [pageServerBenchmark, lazyPagesBenchmark, tlsBenchmark];
