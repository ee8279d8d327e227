/**
 * Host-side helpers for the boot tests: read the store and data partitions of a disk
 * image after a boot, and damage a store between boots (corrupt or delete a layer).
 *
 * No loop devices and no mounts: e2fsprogs open a filesystem inside an image with the
 * `file?offset=N` io option (ext2fs_open2 splits it off the name), so `debugfs` reads and
 * writes the partition in place, and partition offsets come from `sfdisk -J`.
 *
 * The journal: a guest that powered off (or was killed) with a store or data partition
 * mounted read-write leaves committed metadata in the ext4 journal only; debugfs does not
 * replay it. Reads therefore work on a sparse copy of the partition whose journal was
 * replayed (`e2fsck -E journal_only`), so the image itself stays as the guest left it and
 * the next boot does its own recovery. Writes first replay the journal in place (what
 * the guest's next mount would do), so a later replay cannot undo them.
 */
import { expect } from 'vitest';
import { promises as fs } from 'node:fs';
import { run } from '../../src/sys/exec.js';
import { parseState, type BootState } from '../../src/format/state.js';
import path from 'node:path';
import type { Target } from '../../src/boot/target.js';
import { bootOnce, consoleTail, Vm, type BootOptions, type Disk, type ExitHow } from './qemu.js';

export interface Partition {
  name: string;
  /** byte offset in the image */
  offset: number;
  /** bytes */
  size: number;
}

/** The GPT partitions of an image, by partition name (sb-store, sb-data). */
export async function partitions(img: string): Promise<Partition[]> {
  const r = await run('sfdisk', ['-J', img]);
  const j = JSON.parse(r.stdout) as { partitiontable: { sectorsize?: number; partitions: { start: number; size: number; name?: string }[] } };
  const ss = j.partitiontable.sectorsize ?? 512;
  return j.partitiontable.partitions.map((p) => ({ name: p.name ?? '', offset: p.start * ss, size: p.size * ss }));
}

export async function partition(img: string, name: 'sb-store' | 'sb-data' | string): Promise<Partition> {
  const p = (await partitions(img)).find((x) => x.name === name);
  if (!p) throw new Error(`${img}: no partition named ${name}`);
  return p;
}

/** Copies a byte range of a file to a new sparse file (dd conv=sparse). */
async function copyRange(src: string, dst: string, offset: number, size: number): Promise<void> {
  const bs = 1 << 20;
  if (offset % bs || size % bs) throw new Error(`partition not MiB aligned: ${offset}+${size}`);
  await run('dd', [`if=${src}`, `of=${dst}`, `bs=${bs}`, `skip=${offset / bs}`, `count=${size / bs}`, 'conv=sparse', 'status=none']);
}

/** e2fsck -E journal_only: replay the journal if needed, nothing else. Exit 0/1 are fine. */
async function replayJournal(dev: string): Promise<void> {
  const r = await run('e2fsck', ['-E', 'journal_only', '-y', dev], { reject: false });
  if (r.exitCode > 1) throw new Error(`e2fsck -E journal_only ${dev} failed (exit ${r.exitCode}): ${r.stderr.trim() || r.stdout.trim()}`);
}

async function debugfs(dev: string, cmd: string, write = false): Promise<string> {
  const r = await run('debugfs', [...(write ? ['-w'] : []), '-R', cmd, dev], { reject: false });
  if (r.exitCode !== 0) throw new Error(`debugfs -R '${cmd}' ${dev}: exit ${r.exitCode}: ${r.stderr.trim()}`);
  // debugfs prints its banner and errors on stderr; "File not found" style errors too
  const err = r.stderr.split('\n').filter((l) => l.trim() && !/^debugfs \d/.test(l));
  if (err.length) throw new Error(`debugfs -R '${cmd}' ${dev}: ${err.join(' | ')}`);
  return r.stdout;
}

/**
 * A read-only view of one ext4 partition of an image as it would be after the journal is
 * replayed. Call `close()` when done (removes the copy).
 */
export class PartView {
  private constructor(readonly img: string, readonly part: Partition, private readonly copy: string) {}

  static async open(img: string, name: string): Promise<PartView> {
    const part = await partition(img, name);
    const copy = `${img}.${name}.view-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
    await copyRange(img, copy, part.offset, part.size);
    await replayJournal(copy);
    return new PartView(img, part, copy);
  }

  /** File contents, or null when the path does not exist. */
  async read(p: string): Promise<string | null> {
    if (!(await this.exists(p))) return null;
    return debugfs(this.copy, `cat ${p}`);
  }

  async exists(p: string): Promise<boolean> {
    const r = await run('debugfs', ['-R', `stat ${p}`, this.copy], { reject: false });
    return r.exitCode === 0 && !/File not found|not found by ext2_lookup/.test(r.stderr);
  }

  /** Names in a directory (without . and ..), or null when it does not exist. */
  async ls(dir: string): Promise<string[] | null> {
    if (!(await this.exists(dir))) return null;
    const out = await debugfs(this.copy, `ls -p ${dir}`);
    // -p: /inode/mode/uid/gid/name/size/
    return out
      .split('\n')
      .map((l) => l.split('/'))
      .filter((f) => f.length >= 7)
      .map((f) => f[5])
      .filter((n) => n !== '.' && n !== '..');
  }

  /** Every path below `dir` (files and dirs), relative to it. */
  async walk(dir: string): Promise<string[]> {
    const out: string[] = [];
    const names = await this.ls(dir);
    for (const n of names ?? []) {
      const p = `${dir.replace(/\/$/, '')}/${n}`;
      out.push(n);
      const st = await run('debugfs', ['-R', `stat ${p}`, this.copy], { reject: false });
      if (/Type: directory/.test(st.stdout)) for (const c of await this.walk(p)) out.push(`${n}/${c}`);
    }
    return out;
  }

  async close(): Promise<void> {
    await fs.rm(this.copy, { force: true });
  }
}

/** Runs fn on a view of partition `name` of img and closes it. */
export async function withPart<T>(img: string, name: string, fn: (v: PartView) => Promise<T>): Promise<T> {
  const v = await PartView.open(img, name);
  try {
    return await fn(v);
  } finally {
    await v.close();
  }
}

export interface EventLine {
  time: number;
  event: string;
  slot: string;
  stack: string;
  tries?: number;
  reason: string;
  line: string;
}

/** Events as the node reads them: malformed lines (a truncated last one) are skipped. */
export function parseEvents(text: string): EventLine[] {
  const out: EventLine[] = [];
  for (const line of text.split('\n')) {
    const m = /^(\d+) ([a-z]+) slot=(\S+) stack=(\S+)(?: tries=(\d+))? reason=(.*)$/.exec(line);
    if (!m) continue;
    out.push({ time: Number(m[1]), event: m[2], slot: m[3], stack: m[4], tries: m[5] !== undefined ? Number(m[5]) : undefined, reason: m[6], line });
  }
  return out;
}

export interface StoreSnapshot {
  storeId: string;
  /** raw state text (null when missing) */
  stateText: string | null;
  /** parsed state; throws in `parseState` are kept as `stateError` */
  state: BootState | null;
  stateError?: string;
  eventsText: string;
  events: EventLine[];
  layers: string[];
  /** names in upper/ (stack ids, leftovers of wipes) */
  uppers: string[];
  /** whether state.new is left over */
  stateNew: boolean;
}

/** Reads the store partition (label sb-store) of an image. */
export async function readStore(img: string): Promise<StoreSnapshot> {
  return withPart(img, 'sb-store', async (v) => {
    const stateText = await v.read('/state');
    let state: BootState | null = null;
    let stateError: string | undefined;
    if (stateText !== null) {
      try {
        state = parseState(stateText);
      } catch (e) {
        stateError = (e as Error).message;
      }
    } else stateError = 'no state file';
    const eventsText = (await v.read('/events')) ?? '';
    return {
      storeId: ((await v.read('/store-id')) ?? '').trim(),
      stateText,
      state,
      stateError,
      eventsText,
      events: parseEvents(eventsText),
      layers: ((await v.ls('/layers')) ?? []).sort(),
      uppers: ((await v.ls('/upper')) ?? []).sort(),
      stateNew: await v.exists('/state.new'),
    };
  });
}

/** Paths under upper/<stack>/data on the store (empty when absent). */
export async function upperFiles(img: string, stack: string): Promise<string[]> {
  return withPart(img, 'sb-store', (v) => v.walk(`/upper/${stack}/data`));
}

/** A file on the data partition (label sb-data), or null. */
export async function readData(img: string, p: string): Promise<string | null> {
  return withPart(img, 'sb-data', (v) => v.read(p));
}

// ---------------------------------------------------------------------------------------
// Damage between boots

/** Replays the store's journal in place (what the guest's next mount would do). */
async function settle(img: string, part: Partition): Promise<string> {
  const dev = `${img}?offset=${part.offset}`;
  await replayJournal(dev);
  return dev;
}

/**
 * Flips `count` bytes inside a layer file on the store, in place (same size, so only
 * VERIFY=sha256 or the squashfs mount can notice). Bytes are taken from the middle of
 * the file's first data block, so the squashfs superblock stays intact; or at byte `filePos` of the file.
 */
export async function corruptLayer(img: string, digest: string, count = 64, filePos?: number): Promise<void> {
  const part = await partition(img, 'sb-store');
  const dev = await settle(img, part);
  const file = `/layers/${digest}.sqfs`;
  const stat = await debugfs(dev, `stat ${file}`);
  const bsz = Number(/Blocksize: (\d+)/.exec(await debugfs(dev, 'stats -h'))?.[1] ?? 4096);
  const size = Number(/Size: (\d+)/.exec(stat)?.[1] ?? NaN);
  const blocks = (await debugfs(dev, `blocks ${file}`)).trim().split(/\s+/).map(Number).filter((n) => n > 0);
  if (!blocks.length || !(size > 0)) throw new Error(`corruptLayer: ${file} has no blocks (size ${size})`);
  // a byte position in the middle of the file, away from the 96-byte superblock
  const pos = filePos ?? Math.max(256, Math.floor(size / 2) - count);
  const bi = Math.floor(pos / bsz);
  const within = pos % bsz;
  if (bi >= blocks.length || within + count > bsz) throw new Error(`corruptLayer: ${file}: position ${pos} not in one block`);
  const at = part.offset + blocks[bi] * bsz + within;
  const fh = await fs.open(img, 'r+');
  try {
    const buf = Buffer.alloc(count);
    await fh.read(buf, 0, count, at);
    for (let i = 0; i < count; i++) buf[i] ^= 0xff;
    await fh.write(buf, 0, count, at);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Deletes a layer file from the store. */
export async function deleteLayer(img: string, digest: string): Promise<void> {
  const part = await partition(img, 'sb-store');
  const dev = await settle(img, part);
  await debugfs(dev, `rm /layers/${digest}.sqfs`, true);
}

/** Copies an image (sparse). */
export async function copyImage(src: string, dst: string): Promise<void> {
  await run('cp', ['--sparse=always', src, dst]);
}

/** Replaces (or creates) a file on the store with `content`, e.g. to give a clone its own state. */
export async function writeStoreFile(img: string, p: string, content: string): Promise<void> {
  const part = await partition(img, 'sb-store');
  const dev = await settle(img, part);
  const tmp = `${img}.write-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const cmds = `${tmp}.cmds`;
  try {
    await fs.writeFile(tmp, content);
    await fs.writeFile(cmds, `rm ${p}\nwrite ${tmp} ${p}\n`);
    const r = await run('debugfs', ['-w', '-f', cmds, dev], { reject: false });
    const got = await withPart(img, 'sb-store', (v) => v.read(p));
    if (got !== content) throw new Error(`debugfs could not write ${p}: ${r.stderr.trim()}`);
  } finally {
    await fs.rm(tmp, { force: true });
    await fs.rm(cmds, { force: true });
  }
}

// ---------------------------------------------------------------------------------------
// Reading a demo boot's console

export interface DemoBoot {
  output: string;
  how: ExitHow;
  durationMs: number;
  /** version from `DEMO: running ... (version N)`, undefined when the demo init never ran */
  version?: string;
  /** the `/run/stackboot/booted` record as the demo init printed it */
  booted: Record<string, string>;
  /** `DEMO: status: ...` lines */
  status: string[];
}

/** Reads the DEMO lines of a console. */
export function parseDemo(output: string): Omit<DemoBoot, 'how' | 'durationMs' | 'output'> {
  const version = /^DEMO: running .* \(version ([^)]*)\)$/m.exec(output)?.[1];
  const booted: Record<string, string> = {};
  for (const m of output.matchAll(/^DEMO: booted ([a-z_]+)=(.*)$/gm)) booted[m[1]!] = m[2]!;
  const status = [...output.matchAll(/^DEMO: status: (.*)$/gm)].map((m) => m[1]);
  return { version, booted, status };
}

/** Boots once (to the guest's poweroff/reboot) and reads the DEMO lines. */
export async function bootDemo(o: BootOptions): Promise<DemoBoot> {
  const r = await bootOnce({ timeoutMs: 180_000, ...o });
  return { output: r.output, how: r.how, durationMs: r.durationMs, ...parseDemo(r.output) };
}

/** A failure message with the console tail. */
export function tailOf(b: { output: string }, what: string, lines = 50): string {
  return `${what}\n----- console tail -----\n${consoleTail(b.output, lines)}\n------------------------`;
}

// ---------------------------------------------------------------------------------------
// Power cuts (powercut.test.ts and scripts/soak-powercut.ts)

/** A small seeded PRNG (mulberry32): the same seed gives the same kill instants. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface PowercutSetup {
  target: Target;
  initrd: string;
  /** the pristine image: slot a good (version 1), slot b pending (version 2) */
  base: string;
  /** tries of the pending slot in `base` */
  tries: number;
  /** stack ids */
  good: string;
  pending: string;
  /** extra kernel command line */
  append?: string;
  /** where trial images go */
  work: string;
  /** keep failing trials' images and consoles here (default: work) */
  keepFailures?: boolean;
}

/**
 * The console line kill instants are measured from: the initrd's /init starting. Timing
 * from there, not from QEMU's start, keeps the cuts among the hook's writes even when a
 * loaded host makes the kernel boot twice as slow.
 */
export const ANCHOR = /stackboot: stackboot init: loading modules/;

export interface Calibration {
  /** ms from QEMU start to each console line */
  anchor: number;
  storeFound: number;
  trying: number;
  demo: number;
  good: number;
  end: number;
}

/** One undisturbed boot of a copy of the base image, timing the lines that matter. */
export async function calibrate(s: PowercutSetup, jobs = 1): Promise<Calibration> {
  if (jobs > 1) {
    // as many boots at once as the trials will run, so the timing matches their load
    const all = await Promise.all(Array.from({ length: jobs }, (_, i) => calibrateOne(s, i)));
    const mean = (k: keyof Calibration) => Math.round(all.reduce((t, c) => t + c[k], 0) / all.length);
    return { anchor: mean('anchor'), storeFound: mean('storeFound'), trying: mean('trying'), demo: mean('demo'), good: mean('good'), end: mean('end') };
  }
  return calibrateOne(s, 0);
}

async function calibrateOne(s: PowercutSetup, n: number): Promise<Calibration> {
  const img = path.join(s.work, `calibrate-${n}.img`);
  await copyImage(s.base, img);
  const vm = Vm.start({ target: s.target, initrd: s.initrd, disks: [{ file: img, bus: 'virtio' }], append: s.append, timeoutMs: 180_000, name: 'calibrate' });
  try {
    const at = async (re: RegExp) => {
      await vm.waitFor(re, 120_000);
      return vm.elapsed();
    };
    const anchor = await at(ANCHOR);
    const storeFound = await at(/stackboot: store [0-9a-f]{32} on /);
    const trying = await at(/stackboot: trying slot b /);
    const demo = await at(/^DEMO: running /m);
    const good = await at(/slot b \(\w{12}\) is good and current/);
    const exit = await vm.waitExit(60_000);
    if (exit.how !== 'poweroff') throw new Error(vm.failMessage(`calibration boot ended by ${exit.how}`));
    return { anchor, storeFound, trying, demo, good, end: exit.durationMs };
  } finally {
    vm.kill();
    await fs.rm(img, { force: true });
  }
}

/** What a trial saw. `problems` is empty when every protocol rule held. */
export interface TrialResult {
  trial: number;
  /** ms after the ANCHOR line */
  killMs: number;
  /** how far the killed boot got, from its console */
  phase: 'kernel' | 'hook' | 'tried' | 'init' | 'marked' | 'done';
  /** state after the cut, as the host reads it (journal replayed) */
  cutState: string;
  /** what the recovery boot ran: `v1 a good`, `v2 b pending 0`, … */
  recovered: string;
  problems: string[];
  ms: number;
}

function slotWord(st: BootState | null, slot: 'a' | 'b'): string {
  const v = st?.slots[slot];
  if (!v) return 'empty';
  return v.status === 'pending' ? `pending ${v.tries}` : v.status;
}

/**
 * One power cut: boot a fresh copy of the base image, SIGKILL QEMU killMs after the
 * ANCHOR line, read
 * the store, boot again undisturbed and check that the node booted what the protocol
 * allows given the state the cut left:
 *  - the state file always parses; slot a stays good; the pending slot lost at most one
 *    try (one started boot);
 *  - b pending with t>0 tries → the recovery boot runs b with t-1 left;
 *    b pending with 0 → it is exhausted and a (version 1) boots; b good → b boots good;
 *  - the recovery boot always reaches the demo init (never an unbootable node), and its
 *    own health check leaves the store consistent (b good, or b bad and current a).
 */
/** A power cut: boots, SIGKILLs QEMU `killMs` after the ANCHOR line, returns the console up to the cut. */
export async function cutBoot(o: BootOptions, killMs: number): Promise<string> {
  const vm = Vm.start({ timeoutMs: 180_000, ...o });
  try {
    await vm.killWhen(ANCHOR, { timeoutMs: 120_000, delayMs: killMs });
  } finally {
    vm.kill();
  }
  return vm.output();
}

export async function powercutTrial(s: PowercutSetup, trial: number, killMs: number): Promise<TrialResult> {
  const t0 = Date.now();
  const img = path.join(s.work, `trial-${trial}.img`);
  const problems: string[] = [];
  await copyImage(s.base, img);
  const disks: Disk[] = [{ file: img, bus: 'virtio' }];
  const cutOut = await cutBoot({ target: s.target, initrd: s.initrd, disks, append: s.append, name: `cut-${trial}` }, killMs);
  const phase: TrialResult['phase'] = /reboot: Power down/.test(cutOut)
    ? 'done'
    : /is good and current/.test(cutOut)
      ? 'marked'
      : /^DEMO: running/m.test(cutOut)
        ? 'init'
        : /trying slot b/.test(cutOut)
          ? 'tried'
          : /stackboot init:/.test(cutOut)
            ? 'hook'
            : 'kernel';

  const cut = await readStore(img);
  const st = cut.state;
  if (!st) problems.push(`state after the cut does not parse: ${cut.stateError}: ${JSON.stringify(cut.stateText)}`);
  const a = st?.slots.a;
  const b = st?.slots.b;
  if (st) {
    if (a?.status !== 'good' || a.stack !== s.good) problems.push(`slot a after the cut: ${slotWord(st, 'a')}`);
    if (b?.stack !== s.pending) problems.push(`slot b after the cut holds ${b?.stack}`);
    if (b?.status === 'pending' && !(b.tries! <= s.tries && b.tries! >= s.tries - 1)) problems.push(`tries after one cut boot: ${b.tries} (started with ${s.tries})`);
    if (b?.status === 'bad') problems.push('slot b bad after a cut (it never failed)');
    if (b?.status === 'good' && st.current !== 'b') problems.push(`b good but current ${st.current}`);
    if (b?.status === 'pending' && st.current !== 'a') problems.push(`b pending but current ${st.current}`);
  }
  if (cut.events.filter((e) => e.event === 'try').length > 1) problems.push('more than one try event for one boot');

  // recovery boot, undisturbed
  const r = await bootDemo({ target: s.target, initrd: s.initrd, disks, append: s.append, name: `recover-${trial}` });
  const recovered = r.version ? `v${r.version} ${r.booted.slot} ${r.booted.status}${r.booted.tries ? ' ' + r.booted.tries : ''}` : `none (${r.how})`;
  if (!r.version || r.how !== 'poweroff') problems.push(`recovery boot did not boot a stack (${r.how})`);
  else if (b) {
    if (b.status === 'pending' && b.tries! > 0) {
      if (!(r.version === '2' && r.booted.slot === 'b' && r.booted.status === 'pending' && r.booted.tries === String(b.tries! - 1)))
        problems.push(`cut left b pending ${b.tries}; recovery ran ${recovered}, expected v2 b pending ${b.tries! - 1}`);
    } else if (b.status === 'pending') {
      if (!(r.version === '1' && r.booted.slot === 'a' && /no tries left/.test(r.booted.fallback ?? '')))
        problems.push(`cut left b pending 0; recovery ran ${recovered}, expected v1 a after exhausted`);
    } else if (b.status === 'good') {
      if (!(r.version === '2' && r.booted.slot === 'b' && r.booted.status === 'good')) problems.push(`cut left b good; recovery ran ${recovered}`);
    }
  }
  const fin = await readStore(img);
  if (!fin.state) problems.push(`final state does not parse: ${fin.stateError}`);
  else if (r.version === '2' && !(fin.state.slots.b?.status === 'good' && fin.state.current === 'b' && fin.state.slots.a?.status === 'good'))
    problems.push(`after a v2 recovery boot: a ${slotWord(fin.state, 'a')}, b ${slotWord(fin.state, 'b')}, current ${fin.state.current}`);
  else if (r.version === '1' && !(fin.state.slots.b?.status === 'bad' && fin.state.current === 'a' && fin.events.some((e) => e.event === 'exhausted')))
    problems.push(`after a v1 recovery boot: b ${slotWord(fin.state, 'b')}, current ${fin.state.current}`);
  if (fin.events.filter((e) => e.event === 'try').length > 2) problems.push('more try events than started boots');

  if (problems.length && s.keepFailures !== false) {
    await fs.writeFile(`${img}.cut.log`, cutOut);
    await fs.writeFile(`${img}.recover.log`, r.output);
  } else await fs.rm(img, { force: true });
  return { trial, killMs, phase, cutState: st ? `a ${slotWord(st, 'a')}, b ${slotWord(st, 'b')}, current ${st.current ?? '-'}` : 'unparsable', recovered, problems, ms: Date.now() - t0 };
}

/**
 * The kill delays (ms after ANCHOR) for `n` trials: uniform over the window where the hook
 * and mark-good write (from 0.5 s before the store is found to just after mark-good).
 */
export function killInstants(c: Calibration, n: number, seed: number): number[] {
  const rnd = prng(seed);
  const lo = Math.max(0, c.storeFound - c.anchor - 500);
  // a little past mark-good, but not much past the poweroff (a cut after it tests nothing)
  const hi = c.good - c.anchor + Math.min(500, Math.max(100, Math.round((c.end - c.good) / 2)));
  return Array.from({ length: n }, () => Math.round(lo + rnd() * (hi - lo)));
}

/** Runs the trials, `jobs` at a time (each its own image and QEMU). */
export async function powercutTrials(s: PowercutSetup, instants: number[], jobs = 1, onResult?: (r: TrialResult) => void, firstTrial = 0): Promise<TrialResult[]> {
  const results: TrialResult[] = new Array(instants.length);
  let next = 0;
  const worker = async () => {
    while (next < instants.length) {
      const i = next++;
      results[i] = await powercutTrial(s, firstTrial + i, instants[i]);
      onResult?.(results[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, jobs) }, worker));
  return results;
}

/** A text table of trial results by phase and outcome. */
export function summarize(results: TrialResult[]): string {
  const rows = new Map<string, number>();
  for (const r of results) {
    const k = `${r.phase.padEnd(7)} | ${r.cutState.padEnd(38)} | ${r.recovered.padEnd(18)} | ${r.problems.length ? 'FAIL' : 'ok'}`;
    rows.set(k, (rows.get(k) ?? 0) + 1);
  }
  const head = `${'cut in'.padEnd(7)} | ${'state after the cut'.padEnd(38)} | ${'recovery boot'.padEnd(18)} | rule | trials`;
  const lines = [...rows.entries()].sort().map(([k, n]) => `${k} | ${n}`);
  return [head, '-'.repeat(head.length), ...lines].join('\n');
}

/** Fails with the console tail when the console does not show RE. */
export function expectOnConsole(b: { output: string }, re: RegExp, what: string): void {
  expect(b.output, tailOf(b, what)).toMatch(re);
}

/**
 * The second boot of an update: the node boots the new stack from slot b (pending), its
 * health check passes, and the store has it good and current, the old one good in slot a.
 */
export async function expectPendingThenGood(b2: DemoBoot, img: string, o: { version: string; old: string; now: string }): Promise<void> {
  expect(b2.version, tailOf(b2, `v${o.version} should run`)).toBe(o.version);
  expect(b2.booted.slot).toBe('b');
  expect(b2.booted.status).toBe('pending');
  expectOnConsole(b2, /DEMO: health exit 0/, 'health should pass');
  const s = await readStore(img);
  expect(s.state?.current).toBe('b');
  expect(s.state?.slots.b).toEqual({ status: 'good', stack: o.now });
  expect(s.state?.slots.a).toEqual({ status: 'good', stack: o.old });
}

/** S as a literal inside a RegExp (kernel versions in console lines). */
export const escapeRe = (s: string): string => s.replace(/[.+*?^$()[\]{}|\\]/g, '\\$&');
