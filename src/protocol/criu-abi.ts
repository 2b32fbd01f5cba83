// --criu-abi: which header layout (docs/protocol.md §1.2) a CRIU version speaks, for the commands that take the flag.

/** What --criu-abi accepts, as its errors say it. */
export const CRIU_ABI_VALUES = 'auto, 4.1 (24-byte headers, CRIU <= 4.1) or 4.2 (32-byte, CRIU >= 4.2)';

export function wireFormatFromAbi(abi: string | undefined): 24 | 32 | undefined {
  if (abi === undefined || abi === 'auto') return undefined;
  if (/^(3(\.\d+)*|4\.[01](\.\d+)*|24)$/.test(abi)) return 24;
  if (/^(4\.([2-9]|\d\d+)(\.\d+)*|[5-9](\.\d+)*|32)$/.test(abi)) return 32;
  throw new Error(`--criu-abi ${abi}: expected ${CRIU_ABI_VALUES}`);
}
