/** inventory.img: one InventoryEntry; only the type magic (no common magic). */
import { ImageError } from './errors.js';
import { IMAGE_KINDS, decodeRecord, readImageBytes, splitImage } from './image-file.js';
import { CRTOOLS_IMAGES_V1, CRTOOLS_IMAGES_V1_1 } from './magic.js';
import { InventoryEntryType, has, type Decoded } from './schema.js';

export interface Inventory {
  /** 1 (CRTOOLS_IMAGES_V1) or 2 (CRTOOLS_IMAGES_V1_1, current). */
  imgVersion: number;
  /** The root task's namespace/object ids (TaskKobjIdsEntry), as a record of field name → id. */
  rootIds?: Record<string, number>;
  /** 1 = splice, 2 = read (pre-dump only). */
  preDumpMode?: number;
  /** UUID of the criu run that wrote the images. */
  dumpCriuRunId?: string;
}

export function parseInventory(buf: Buffer, file: string): Inventory {
  const records = splitImage(buf, IMAGE_KINDS.inventory, file);
  if (records.length === 0) {
    throw new ImageError({
      file, entry: 0, offset: buf.length,
      reason: 'no InventoryEntry after the magic', hint: 'the image is incomplete; copy it again from the source',
    });
  }
  const rec = records[0]!;
  const msg = decodeRecord(InventoryEntryType, rec, file);
  if (!has(msg, 'img_version')) {
    throw new ImageError({
      file, entry: 0, offset: rec.offset,
      reason: 'InventoryEntry has no img_version', hint: 'the image is corrupt or was not written by CRIU',
    });
  }
  const imgVersion = msg.img_version as number;
  if (imgVersion !== CRTOOLS_IMAGES_V1 && imgVersion !== CRTOOLS_IMAGES_V1_1) {
    throw new ImageError({
      file, entry: 0, offset: rec.offset,
      reason: `unsupported img_version ${imgVersion} (expected ${CRTOOLS_IMAGES_V1} or ${CRTOOLS_IMAGES_V1_1})`,
      hint: 'the images were written by an unknown CRIU version',
    });
  }
  const inv: Inventory = { imgVersion };
  if (has(msg, 'root_ids')) {
    const ids = msg.root_ids as Decoded;
    inv.rootIds = {};
    for (const [k, v] of Object.entries(ids)) if (typeof v === 'number') inv.rootIds[k] = v;
  }
  if (has(msg, 'pre_dump_mode')) inv.preDumpMode = msg.pre_dump_mode as number;
  if (has(msg, 'dump_criu_run_id')) inv.dumpCriuRunId = msg.dump_criu_run_id as string;
  return inv;
}

export async function readInventory(file: string): Promise<Inventory> {
  return parseInventory(await readImageBytes(file), file);
}
