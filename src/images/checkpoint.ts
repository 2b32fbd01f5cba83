/**
 * loadCheckpoint(dir): everything the lazy-pages daemon and the page server need from an images dir.
 *
 * For every process of pstree.img: its core (task state), its VMAs (mm-<pid>.img) and its pagemap
 * (pagemap-<pid>.img, with pages-<pages_id>.img checked and parent chains loaded). A zombie has no mm and no
 * pagemap. CRIU treats a missing image as empty, but a process that is alive or stopped cannot do without its
 * mm and pagemap, so for those a missing file is an error that says how to fix it.
 */
import { access } from 'node:fs/promises';
import * as path from 'node:path';
import { ImageError } from './errors.js';
import { imageFileName } from './image-file.js';
import { readCore, type TaskState } from './core.js';
import { readInventory, type Inventory } from './inventory.js';
import { CRTOOLS_IMAGES_V1, DEFAULT_PAGE_SIZE, PE_PARENT } from './magic.js';
import { readMm, type Vma } from './mm.js';
import { readPagemap, type Pagemap } from './pagemap.js';
import { loadParentChain, parentDirOf } from './parent-chain.js';
import { readPstree } from './pstree.js';

export interface LoadCheckpointOptions {
  /** Page size of the dumped system (default 4096). */
  pageSize?: number;
  /** Check every pages file against its pagemap (default true). */
  checkPages?: boolean;
  /** Load parent pagemaps for PE_PARENT entries (default true). Without it, PE_PARENT pages cannot be resolved. */
  parents?: boolean;
}

export interface CheckpointTask {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  threads: number[];
  state: TaskState;
  comm?: string;
  exitCode?: number;
  /** Real VMAs, sorted (empty for a zombie). */
  vmas: Vma[];
  /** CRIU >= 4.2 VMA_AREA_GUARD pseudo-VMAs (not used for splitting). */
  guardVmas: Vma[];
  /** The pagemap (undefined for a zombie); `pagemap.pagesPath` is the resolved pages file. */
  pagemap?: Pagemap;
  files: { core: string; mm?: string; pagemap?: string };
}

export interface Checkpoint {
  /** The images dir, resolved. */
  dir: string;
  inventory: Inventory;
  tasks: CheckpointTask[];
  pageSize: number;
  /** Where the `parent` symlink points, if there is one. */
  parentDir?: string;
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}

async function loadTask(
  dir: string, p: { pid: number; ppid: number; pgid: number; sid: number; threads: number[] }, opts: Required<LoadCheckpointOptions>,
): Promise<CheckpointTask> {
  const coreFile = path.join(dir, imageFileName.core(p.pid));
  if (!(await exists(coreFile))) {
    throw new ImageError({
      file: coreFile,
      reason: `core image of pid ${p.pid} (listed in pstree.img) not found`,
      hint: 'the images dir is incomplete; copy every *.img from the dump dir',
    });
  }
  const core = await readCore(coreFile);
  if (core.state === undefined) {
    throw new ImageError({
      file: coreFile, entry: 0, offset: 8,
      reason: core.hasTaskCore ? 'TaskCoreEntry has no task_state' : 'CoreEntry has no tc (TaskCoreEntry): this is not the core of a process leader',
      hint: 'the image is corrupt or was not written by CRIU',
    });
  }
  const task: CheckpointTask = {
    ...p, threads: [...p.threads], state: core.state, vmas: [], guardVmas: [], files: { core: coreFile },
  };
  if (core.comm !== undefined) task.comm = core.comm;
  if (core.exitCode !== undefined) task.exitCode = core.exitCode;
  if (task.state === 'zombie') return task;

  const mmFile = path.join(dir, imageFileName.mm(p.pid));
  const pmFile = path.join(dir, imageFileName.pagemap(p.pid));
  task.files.mm = mmFile;
  task.files.pagemap = pmFile;
  const state = typeof task.state === 'number' ? `task_state ${task.state}` : task.state;
  if (!(await exists(mmFile))) {
    throw new ImageError({
      file: mmFile,
      reason: `mm image of pid ${p.pid} not found, but the task is ${state}`,
      hint: 'the images dir is incomplete; copy every *.img from the dump dir',
    });
  }
  if (!(await exists(pmFile))) {
    throw new ImageError({
      file: pmFile,
      reason: `pagemap image of pid ${p.pid} not found, but the task is ${state} and needs its memory`,
      hint: 'if the dump used --page-server, copy pagemap-*.img and pages-*.img from the page server\'s -D dir into ' +
        `${dir}; otherwise copy every *.img from the dump dir`,
    });
  }
  const mm = await readMm(mmFile);
  task.vmas = mm.vmas;
  task.guardVmas = mm.guards;
  const pm = await readPagemap(pmFile, { pageSize: opts.pageSize, checkPages: opts.checkPages });
  if (opts.parents && pm.entries.some((e) => e.flags & PE_PARENT)) {
    await loadParentChain(pm, { pageSize: opts.pageSize, checkPages: opts.checkPages });
  }
  task.pagemap = pm;
  return task;
}

/** Loads an images dir. Throws ImageError naming the file, entry and offset of the first problem. */
export async function loadCheckpoint(dir: string, options: LoadCheckpointOptions = {}): Promise<Checkpoint> {
  const opts: Required<LoadCheckpointOptions> = {
    pageSize: options.pageSize ?? DEFAULT_PAGE_SIZE,
    checkPages: options.checkPages ?? true,
    parents: options.parents ?? true,
  };
  const root = path.resolve(dir);
  const invFile = path.join(root, imageFileName.inventory());
  if (!(await exists(invFile))) {
    throw new ImageError({
      file: invFile, reason: 'inventory image not found',
      hint: `${root} is not a CRIU images dir (or is incomplete); point to the dir given to criu dump -D`,
    });
  }
  const inventory = await readInventory(invFile);
  if (inventory.imgVersion === CRTOOLS_IMAGES_V1) {
    throw new ImageError({
      file: invFile, entry: 0, offset: 4,
      reason: 'img_version 1 images (no common magic) are not supported',
      hint: 'dump again with a current CRIU',
    });
  }
  const pstreeFile = path.join(root, imageFileName.pstree());
  if (!(await exists(pstreeFile))) {
    throw new ImageError({
      file: pstreeFile, reason: 'pstree image not found',
      hint: 'the images dir is incomplete; copy every *.img from the dump dir',
    });
  }
  const procs = await readPstree(pstreeFile);
  const tasks = await Promise.all(procs.map((p) => loadTask(root, p, opts)));
  const cp: Checkpoint = { dir: root, inventory, tasks, pageSize: opts.pageSize };
  const parentDir = await parentDirOf(root).catch(() => undefined);
  if (parentDir !== undefined) cp.parentDir = parentDir;
  return cp;
}
