// The replication messages on the agent's control port (src/migrate/channel.ts framing: newline-terminated JSON,
// a `file` message followed by its bytes). Every type starts with "replica-" so the agent's listener can route
// the connection by its first line (src/agent/replica-router.ts) without touching the migration protocol.
//   primary → standby: replica-hello → (per epoch) replica-epoch, files, replica-commit … → replica-bye
//   standby → primary: replica-welcome | replica-fenced | replica-refuse, replica-committed per epoch
//   lazyd failover → standby: replica-failover → replica-failed-over | replica-refuse
import type { Channel, Message } from '../migrate/channel.js';

export const REPLICA_VERSION = 1;

/** One image of an epoch: sent whole, or (pages-*.img) as the pages that differ from the committed epoch's file. */
export interface EpochFile {
  name: string;
  /** The size of the file as it must be on the standby once rebuilt. */
  size: number;
  sha256: string;
  kind: 'whole' | 'delta';
}

export type ReplicaMessage =
  | { t: 'replica-hello'; v: number; id: string; criuVersion: string; pageSize: number; failoverAfterMs: number; linkTimeoutMs: number }
  | { t: 'replica-epoch'; epoch: number; base: number | null; files: EpochFile[] }
  | { t: 'replica-commit'; epoch: number; dumpedAt: number }
  | { t: 'replica-bye' }
  | { t: 'replica-failover'; id: string }
  | { t: 'replica-status' }
  | { t: 'replica-welcome'; v: number; committed: number | null; criuVersion: string }
  | { t: 'replica-fenced'; reason: string }
  | { t: 'replica-refuse'; reason: string }
  | { t: 'replica-committed'; epoch: number; commitMs: number; bytes: number }
  | { t: 'replica-failed-over'; id: string; epoch: number; pid: number; decisionToRunningMs: number }
  | { t: 'replica-state'; replicas: ReplicaSummary[] };

export interface ReplicaSummary {
  id: string;
  committed: number | null;
  committedAt: number | null;
  connected: boolean;
  fenced: boolean;
  /** Once failed over: the epoch restored, its pid (0 while the restore runs) and when (Date.now()). */
  failedOver: { epoch: number; pid: number; at: number } | null;
  bytes: number;
}

export function sendReplica(channel: Channel, message: ReplicaMessage): void {
  channel.send(message as unknown as Message);
}

/** The prefix every replication message's line starts with (JSON.stringify writes `t` first). */
export const REPLICA_LINE_PREFIX = '{"t":"replica-';

const ID = /^[\w.-]{1,64}$/;
export function replicaIdProblem(id: string): string | undefined {
  return ID.test(id) ? undefined : `replica id ${JSON.stringify(id)}: use 1-64 letters, digits, '.', '_' or '-'`;
}
