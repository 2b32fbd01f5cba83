// Benchmark "page-store": the staging stores' cost per GET by position (page pipes as CRIU's page server keeps
// them vs lazyd's memfd store), and their append rate — bench/page-store/run.sh (see its README), its tables
// kept as they print.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from '../src/paths.js';
import type { Benchmark } from './lib/types.js';

export const pageStoreBenchmark: Benchmark = {
  name: 'page-store',
  description: 'serving cost per GET by offset: page pipes (as criu page-server keeps them) vs the memfd store (lazyd staging)',
  estimate: (ctx) => (ctx.quick ? '~10 s' : '~60 s'),
  async run(ctx) {
    const script = path.join(repoRoot(), 'bench', 'page-store', 'run.sh');
    const args = ctx.quick ? ['--quick', '--gets'] : [];
    const out = execFileSync('bash', [script, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000, maxBuffer: 16 << 20 });
    return {
      name: 'page-store',
      description: pageStoreBenchmark.description,
      comparisons: [],
      summary: '```\n' + out.trim() + '\n```',
      notes: [`\`bench/page-store/run.sh ${args.join(' ')}\`; what each row means: bench/page-store/README.md.`],
    };
  },
};
