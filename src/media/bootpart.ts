/**
 * The boot partition's kernel, initrd and extlinux.conf (a vfat partition the firmware
 * reads: U-Boot's distro boot, and JetPack 5/6's UEFI launcher L4TLauncher, which reads
 * only `boot/extlinux/extlinux.conf` on the GPT partition named APP; U-Boot looks in `/`
 * and then `/boot/`). `image` writes the first entry; `boot-update` replaces the kernel
 * and initrd safely on a running node:
 *
 *   plan   read the extlinux.conf the firmware reads (`boot/extlinux/`, or `extlinux/` on
 *          a node made before 2026-12); the new files are named by their content
 *          (vmlinuz-<sha12>, initrd-<sha12>.img, <sha12>-<name>.dtb), so the same files
 *          twice change nothing; the entry the firmware boots now becomes `previous`.
 *   steps  1. the new files beside the old ones, each durably (temp, fsync, rename,
 *             fsync the folder);
 *          2. extlinux.conf.new written and fsynced, renamed over extlinux.conf: the one
 *             switch. Its default is the new entry, its second label the old one;
 *          3. only then the files no entry names any more are removed.
 *
 * A power cut before step 2 leaves the old extlinux.conf and all its files; after it, the
 * new one and all of its files (the old entry's too). FAT has no journal: the rename
 * rewrites one directory entry, which is as atomic as vfat gets (docs/boot.md says what
 * the firmware must do for the fallback to the second label).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError, writeDurable, writeDurableFrom, fsyncPath, sha256File } from '../sys/index.js';
import { renderTemplate } from '../boot/index.js';

/** Where `image` writes extlinux.conf: the one path L4TLauncher reads, and U-Boot's second prefix. */
export const EXTLINUX_CONF = 'boot/extlinux/extlinux.conf';
/** Where images made before 2026-12 have it (U-Boot's first prefix): boot-update keeps using it there. */
export const LEGACY_EXTLINUX_CONF = 'extlinux/extlinux.conf';
/** The GPT name of the boot partition: L4TLauncher reads extlinux.conf only from a partition named APP (or A_APP/APP_a). */
export const BOOT_PART_NAME = 'APP';

/**
 * The extlinux.conf of a mounted boot partition, relative to it. Both paths at once is
 * refused: U-Boot would read one and L4TLauncher the other.
 */
export async function findBootConf(bootDir: string): Promise<string> {
  const has = async (f: string) => (await fs.stat(path.join(bootDir, f)).catch(() => null))?.isFile() ?? false;
  const [now, legacy] = [await has(EXTLINUX_CONF), await has(LEGACY_EXTLINUX_CONF)];
  if (now && legacy) {
    throw new StackbootError('USAGE', `${bootDir} has both ${EXTLINUX_CONF} and ${LEGACY_EXTLINUX_CONF}: U-Boot reads the second, L4TLauncher the first; remove the one the node does not boot from`);
  }
  if (now) return EXTLINUX_CONF;
  if (legacy) return LEGACY_EXTLINUX_CONF;
  throw new StackbootError('USAGE', `${bootDir} is not a stackboot boot partition (no ${EXTLINUX_CONF}, nor ${LEGACY_EXTLINUX_CONF})`);
}

/**
 * A value for extlinux.conf: one line, and no `#` (L4TLauncher cuts every line at its
 * first `#`, so the rest of an APPEND would be lost).
 */
export function checkBootValue(what: string, v: string): void {
  if (/[\r\n]/.test(v)) throw new StackbootError('USAGE', `${what} must be one line for extlinux.conf`);
  if (v.includes('#')) throw new StackbootError('USAGE', `${what} has a '#': Jetson's L4TLauncher reads the rest of the line as a comment (${JSON.stringify(v)})`);
}

export interface BootEntry {
  label: string;
  /** `menu label` */
  menu: string;
  /** file names relative to the partition's root */
  kernel: string;
  initrd: string;
  fdt?: string;
  append: string;
}

/** The label of the boot menu's default entry, the one that boots the store. */
export const DEFAULT_LABEL = 'stackboot';

/** The label of the boot menu's factory reset entry (`image --reset-entry`; boot-update keeps it). */
export const RESET_LABEL = 'factory-reset';

/**
 * The factory reset entry for ENTRY: the same kernel, initrd and device tree, with
 * `stackboot.reset` on its command line (docs/PROTOCOL.md "Factory reset"): picked from
 * the firmware's boot menu (U-Boot's console, L4TLauncher's menu), it wipes the node's
 * writable state at that boot, for a node that no longer reaches its userspace.
 */
export function resetEntryOf(e: Pick<BootEntry, 'kernel' | 'initrd' | 'fdt' | 'append' | 'menu'>): BootEntry {
  return { label: RESET_LABEL, menu: `factory reset (wipes the data partition): ${e.menu}`, kernel: e.kernel, initrd: e.initrd, fdt: e.fdt, append: `${e.append} stackboot.reset`.trim() };
}

export interface BootConf {
  timeout: number;
  title: string;
  entries: BootEntry[];
}

/** Renders extlinux.conf (templates/boot/extlinux.conf.hbs): the first entry is the default. */
export async function renderBootConf(c: BootConf): Promise<string> {
  if (c.entries.length === 0) throw new StackbootError('INTERNAL', 'extlinux.conf needs an entry');
  checkBootValue('the menu title', c.title);
  for (const e of c.entries) {
    for (const [k, v] of [['label', e.label], ['menu label', e.menu], ['kernel', e.kernel], ['initrd', e.initrd], ['fdt', e.fdt ?? ''], ['kernel command line', e.append]] as const) checkBootValue(`the ${k} of ${e.label}`, v);
  }
  // U-Boot's menu takes a choice only with PROMPT 1 (else it boots the default at once):
  // with a factory reset entry the menu waits TIMEOUT for one; L4TLauncher ignores the key
  const prompt = c.entries.some((e) => e.label === RESET_LABEL);
  return renderTemplate('boot/extlinux.conf.hbs', { timeout: c.timeout, prompt, default: c.entries[0]!.label, title: c.title, entries: c.entries.map((e) => ({ ...e, fdt: e.fdt ?? '' })) });
}

/**
 * Reads an extlinux.conf (pure): its timeout, title and labels, the default first. Keys in
 * either case (U-Boot's way; L4TLauncher takes upper case only), a `#` starts a comment
 * anywhere on a line (L4TLauncher's way).
 */
export function parseBootConf(text: string, file = EXTLINUX_CONF): BootConf {
  let timeout = 10;
  let title = '';
  let def: string | undefined;
  const entries: BootEntry[] = [];
  let cur: Partial<BootEntry> | null = null;
  const done = () => {
    if (!cur) return;
    if (!cur.kernel) throw new StackbootError('CONFIG', `${file}: label ${cur.label} has no linux line`);
    entries.push({ label: cur.label!, menu: cur.menu ?? cur.label!, kernel: cur.kernel, initrd: cur.initrd ?? '', fdt: cur.fdt, append: cur.append ?? '' });
    cur = null;
  };
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (line === '') continue;
    const [k, ...rest] = line.split(/\s+/);
    const v = line.slice(k!.length).trim();
    switch (k!.toLowerCase()) {
      case 'timeout':
        if (/^\d+$/.test(v)) timeout = Number(v);
        break;
      case 'default':
        def = v;
        break;
      case 'menu':
        if (rest[0]?.toLowerCase() === 'title') title = v.replace(/^title\s*/i, '');
        else if (rest[0]?.toLowerCase() === 'label' && cur) cur.menu = v.replace(/^label\s*/i, '');
        break;
      case 'label':
        done();
        cur = { label: v };
        break;
      case 'linux':
      case 'kernel':
        if (cur) cur.kernel = v.replace(/^\//, '');
        break;
      case 'initrd':
        if (cur) cur.initrd = v.replace(/^\//, '');
        break;
      case 'fdt':
      case 'devicetree':
        if (cur) cur.fdt = v.replace(/^\//, '');
        break;
      case 'append':
        if (cur) cur.append = v;
        break;
    }
  }
  done();
  if (entries.length === 0) throw new StackbootError('CONFIG', `${file} has no boot entry`);
  const i = def ? entries.findIndex((e) => e.label === def) : 0;
  if (i > 0) entries.unshift(...entries.splice(i, 1));
  return { timeout, title, entries };
}


export interface BootUpdateOptions {
  /** the boot partition, mounted read-write */
  bootDir: string;
  kernel: string;
  initrd: string;
  fdt?: string;
  /** the new entry's command line (default: the current entry's) */
  append?: string;
  /** what the menu says of the new entry, e.g. "demo 2, kernel 6.12.48+deb12-amd64" */
  describe: string;
  dryRun?: boolean;
}

export interface BootUpdatePlan {
  bootDir: string;
  /** the extlinux.conf switched, relative to bootDir (findBootConf) */
  conf: string;
  /** nothing to do: the default entry boots these files already */
  current: boolean;
  entry: BootEntry;
  previous: BootEntry;
  /** files to write: source on the host -> name on the partition */
  write: { from: string; to: string }[];
  /** files no entry names after the switch */
  remove: string[];
  /** what the new files take on the partition (whole clusters), extlinux.conf's temp included */
  bytes: number;
  /** free bytes on the partition now */
  free: number;
}

/** Works out the new entry and what to write and remove (no writes). */
export async function planBootUpdate(o: BootUpdateOptions): Promise<BootUpdatePlan> {
  const conf = await findBootConf(o.bootDir);
  const confFile = path.join(o.bootDir, conf);
  const text = await fs.readFile(confFile, 'utf8');
  const old = parseBootConf(text, confFile);
  const now = old.entries[0]!;
  const named = async (what: string, file: string, name: (h: string) => string) => {
    const st = await fs.stat(file).catch(() => null);
    if (!st?.isFile()) throw new StackbootError('USAGE', `--${what} ${file}: no such file`);
    return { from: file, to: name((await sha256File(file)).slice(0, 12)) };
  };
  const files = [
    await named('kernel', o.kernel, (h) => `vmlinuz-${h}`),
    await named('initrd', o.initrd, (h) => `initrd-${h}.img`),
    ...(o.fdt ? [await named('fdt', o.fdt, (h) => `${h}-${path.basename(o.fdt!)}`)] : []),
  ];
  const entry: BootEntry = { label: DEFAULT_LABEL, menu: `stackboot (${o.describe})`, kernel: files[0]!.to, initrd: files[1]!.to, fdt: files[2]?.to, append: o.append ?? now.append };
  const current = now.kernel === entry.kernel && now.initrd === entry.initrd && (now.fdt ?? '') === (entry.fdt ?? '') && now.append === entry.append;
  const previous: BootEntry = { ...now, label: 'previous', menu: now.label === 'previous' ? now.menu : `previous: ${now.menu}` };
  const keep = new Set([entry.kernel, entry.initrd, entry.fdt, previous.kernel, previous.initrd, previous.fdt].filter(Boolean) as string[]);
  if (o.append !== undefined) checkBootValue('--append', o.append);
  const remove = [...new Set(old.entries.flatMap((e) => [e.kernel, e.initrd, e.fdt]).filter((f): f is string => !!f && !keep.has(f)))];
  const write: BootUpdatePlan['write'] = [];
  for (const f of files) if (!(await fs.stat(path.join(o.bootDir, f.to)).catch(() => null))) write.push(f);
  const st = await fs.statfs(o.bootDir);
  const cluster = st.bsize;
  const onDisk = (n: number) => Math.ceil(n / cluster) * cluster;
  let bytes = current ? 0 : onDisk(text.length + 512);
  if (!current) for (const f of write) bytes += onDisk((await fs.stat(f.from)).size);
  const free = st.bavail * st.bsize;
  // the files of the entry that boots now stay (as `previous`) until the switch: the new
  // ones must fit beside them
  if (bytes > free) {
    throw new StackbootError('NO_SPACE', `the boot partition ${o.bootDir} has ${mib(free)} free, and the new files need ${mib(bytes)} beside the ones that boot now (kept as \`previous\`): make the boot partition bigger (stackboot image --boot-size) or give smaller files`, {
      details: { need: bytes, free },
    });
  }
  return { bootDir: o.bootDir, conf, current, entry, previous, write: current ? [] : write, remove: current ? [] : remove, bytes, free };
}

const mib = (n: number): string => `${(n / (1 << 20)).toFixed(1)} MiB`;

export interface BootUpdateResult extends BootUpdatePlan {
  dryRun: boolean;
}

/** The update's steps (see the top): new files, the switch, then the cleanup. */
export async function bootUpdate(o: BootUpdateOptions, hooks: { beforeSwitch?(): Promise<void> } = {}): Promise<BootUpdateResult> {
  const plan = await planBootUpdate(o);
  if (o.dryRun || plan.current) return { ...plan, dryRun: !!o.dryRun };
  const written: string[] = [];
  try {
    for (const f of plan.write) {
      await writeDurableFrom(path.join(o.bootDir, f.to), (tmp) => fs.copyFile(f.from, tmp));
      written.push(f.to);
    }
  } catch (e) {
    // before the switch nothing names the new files: take them away again
    for (const f of written) await fs.rm(path.join(o.bootDir, f), { force: true }).catch(() => {});
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC') throw new StackbootError('NO_SPACE', `the boot partition ${o.bootDir} is full (writing the new kernel and initrd); nothing was changed`, { cause: e });
    throw e;
  }
  await hooks.beforeSwitch?.();
  const old = parseBootConf(await fs.readFile(path.join(o.bootDir, plan.conf), 'utf8'));
  // a factory reset entry stays, on the new entry's files
  const reset = old.entries.some((e) => e.label === RESET_LABEL) ? [resetEntryOf(plan.entry)] : [];
  const text = await renderBootConf({ timeout: old.timeout, title: old.title || o.describe, entries: [plan.entry, plan.previous, ...reset] });
  await writeDurable(path.join(o.bootDir, plan.conf), text);
  for (const f of plan.remove) await fs.rm(path.join(o.bootDir, f), { force: true });
  if (plan.remove.length) await fsyncPath(o.bootDir);
  return { ...plan, dryRun: false };
}
