// End-to-end harness: real CRIU, the self-verifying workload, page servers, and whole lazy migrations.
// Used by test/e2e, the demo (scripts/demo.ts) and the benchmarks.
export * from './process.js';
export * from './criu.js';
export * from './workload.js';
export * from './page-server.js';
export * from './clients.js';
export * from './migration.js';
export * from './fake-restore.js';
export * from './relay.js';
export * from './e2e.js';
export * from './pki.js';
export * from './relay-staging.js';
