/**
 * The schema of the few CRIU image messages this project reads and writes, decoded and encoded by ./proto-wire.ts.
 *
 * Written from the field numbers and types of the CRIU image format (proto2). Only the fields we use are
 * declared; every other field is skipped, so images with more fields (newer CRIU) still decode.
 * Everything is `optional` here even where CRIU says `required`: the readers check presence themselves so
 * that a missing field gives an ImageError naming the file, entry and offset instead of a bare decode error.
 * Field names keep CRIU's snake_case (keepCase).
 */
import { parseSchema, type Decoded, type MessageType } from './proto-wire.js';

export type { Decoded };

export const CRIU_PROTO = `
syntax = "proto2";
package lazyd.criu;

message TaskKobjIdsEntry {
  optional uint32 vm_id        = 1;
  optional uint32 files_id     = 2;
  optional uint32 fs_id        = 3;
  optional uint32 sighand_id   = 4;
  optional uint32 pid_ns_id    = 5;
  optional uint32 net_ns_id    = 6;
  optional uint32 ipc_ns_id    = 7;
  optional uint32 uts_ns_id    = 8;
  optional uint32 mnt_ns_id    = 9;
  optional uint32 user_ns_id   = 10;
  optional uint32 cgroup_ns_id = 11;
  optional uint32 time_ns_id   = 12;
}

message InventoryEntry {
  optional uint32           img_version      = 1;
  optional TaskKobjIdsEntry root_ids         = 3;
  optional uint32           pre_dump_mode    = 9;
  optional string           dump_criu_run_id = 13;
}

message PstreeEntry {
  optional uint32 pid     = 1;
  optional uint32 ppid    = 2;
  optional uint32 pgid    = 3;
  optional uint32 sid     = 4;
  repeated uint32 threads = 5;   // proto2 non-packed; the decoder accepts packed too
}

message TaskCoreEntry {
  optional uint32 task_state = 1;
  optional uint32 exit_code  = 2;
  optional string comm       = 6;
}

message CoreEntry {
  optional uint32        mtype = 1;
  optional TaskCoreEntry tc    = 3;
}

message VmaEntry {
  optional uint64 start   = 1;
  optional uint64 end     = 2;
  optional uint64 pgoff   = 3;
  optional uint64 shmid   = 4;
  optional uint32 prot    = 5;
  optional uint32 flags   = 6;
  optional uint32 status  = 7;
  optional sint64 fd      = 8;
  optional uint64 madv    = 9;
  optional uint32 fdflags = 10;
}

message MmEntry {
  repeated VmaEntry vmas = 14;
}

message PagemapHead {
  optional uint32 pages_id = 1;
}

message PagemapEntry {
  optional uint64 vaddr           = 1;
  optional uint32 compat_nr_pages = 2;   // "nr_pages" up to CRIU 4.1; CRIU >= 4.2 writes 0
  optional bool   in_parent       = 3;   // legacy
  optional uint32 flags           = 4;
  optional uint64 nr_pages        = 5;   // CRIU >= 4.2: the real count
}
`;

/** Every message type of CRIU_PROTO, by name. */
export const root: ReadonlyMap<string, MessageType> = parseSchema(CRIU_PROTO);

function type(name: string): MessageType {
  const t = root.get(name);
  if (!t) throw new Error(`schema: no message ${name}`);
  return t;
}

export const InventoryEntryType = type('InventoryEntry');
export const TaskKobjIdsEntryType = type('TaskKobjIdsEntry');
export const PstreeEntryType = type('PstreeEntry');
export const CoreEntryType = type('CoreEntry');
export const TaskCoreEntryType = type('TaskCoreEntry');
export const MmEntryType = type('MmEntry');
export const VmaEntryType = type('VmaEntry');
export const PagemapHeadType = type('PagemapHead');
export const PagemapEntryType = type('PagemapEntry');

/** A decoded message as a plain record of its fields. */

/** True when the field was present on the wire (proto2 presence; defaults live on the prototype). */
export function has(msg: Decoded, field: string): boolean {
  return Object.prototype.hasOwnProperty.call(msg, field) && msg[field] !== null && msg[field] !== undefined;
}

/** Encodes a plain object with `type`; keys that are absent are not written (proto2 optional). */
export function encodeMessage(t: MessageType, fields: Record<string, unknown>): Uint8Array {
  return t.encode(fields);
}
