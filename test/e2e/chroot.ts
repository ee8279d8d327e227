/**
 * Debian chroots for the boot tests, made by mmdebstrap (root mode) and cached:
 *
 *   .cache/chroots/<name>/root/        the chroot (a plain directory tree)
 *   .cache/chroots/<name>/key.json     what it was made from and how (suite, variant, packages, build options)
 *   .cache/chroots/apt-archives/       the .deb files, shared by all chroots (sync-in/out)
 *
 * A chroot is remade only when its key changes (or STACKBOOT_CHROOT_REFRESH=1). It is built
 * into a temporary directory and renamed into place, so an interrupted build is never
 * taken for a cached one. Commands run in it through `inChroot`, in a private mount
 * namespace (`unshare --mount`) with /proc, /sys and /dev bound in: the mounts vanish with
 * the namespace, so nothing is left mounted whatever happens to the test.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { run, type RunResult } from '../../src/sys/exec.js';
import { CACHE } from './fixtures.js';

export const CHROOTS = path.join(CACHE, 'chroots');
export const APT_ARCHIVES = path.join(CHROOTS, 'apt-archives');

export interface ChrootSpec {
  /** Folder name under .cache/chroots. */
  name: string;
  /** Debian suite, default bookworm. */
  suite?: string;
  /** mmdebstrap variant, default apt. */
  variant?: 'minbase' | 'apt' | 'essential' | 'required' | 'important' | 'standard';
  /** Packages to include. */
  include: string[];
  /** Default http://deb.debian.org/debian. */
  mirror?: string;
  /** Called with each line mmdebstrap prints (progress); default: dropped. */
  log?: (line: string) => void;
}

export interface Chroot {
  name: string;
  /** The chroot's root directory. */
  root: string;
  /** True when it was taken from the cache. */
  cached: boolean;
}

/**
 * How every chroot is built, beyond its spec (part of the cache key: a change here remakes
 * the cached chroots).
 *
 * INITRD=No: the kernel's postinst hooks (/etc/kernel/postinst.d/initramfs-tools and
 * /dracut, also run by dracut's trigger) skip the initrd they would make for /boot. Nobody
 * uses it (the tests run mkinitramfs / dracut themselves, with their own options), and it
 * was most of a cold build: about 150 s of mkinitramfs (MODULES=most) in the
 * initramfs-tools chroot, and two full dracut runs (the kernel's postinst, then dracut's
 * trigger) of about 70 s each in the dracut one. initramfs-tools' own postinst
 * (`update-initramfs -u`) finds no initrd to update and does nothing. The kernel's depmod
 * still runs.
 *
 * force-unsafe-io: dpkg does not fsync each unpacked file (some 4,000 kernel modules); a
 * build that dies half-way is thrown away anyway (built in a temporary folder, renamed in
 * place at the end). It stays in the chroot's /etc/dpkg/dpkg.cfg.d/99mmdebstrap.
 */
const BUILD_ENV: Record<string, string> = { INITRD: 'No' };
const DPKG_OPTS = ['force-unsafe-io'];

function keyOf(s: ChrootSpec): string {
  return JSON.stringify({
    v: 2,
    suite: s.suite ?? 'bookworm',
    variant: s.variant ?? 'apt',
    include: [...s.include].sort(),
    mirror: s.mirror ?? 'http://deb.debian.org/debian',
    env: BUILD_ENV,
    dpkgopt: DPKG_OPTS,
  });
}

async function readText(p: string): Promise<string | undefined> {
  try {
    return await fs.readFile(p, 'utf8');
  } catch {
    return undefined;
  }
}

/** Refuses to go on while anything is mounted under `dir` (a recursive rm would reach the host's /dev or /proc). */
async function assertNoMounts(dir: string): Promise<void> {
  const abs = path.resolve(dir);
  const mounts = (await readText('/proc/self/mounts')) ?? '';
  const under = mounts
    .split('\n')
    .map((l) => (l.split(' ')[1] ?? '').replace(/\\040/g, ' '))
    .filter((mp) => mp === abs || mp.startsWith(abs + '/'));
  if (under.length) throw new Error(`refusing to touch ${abs}: still mounted there: ${under.join(' ')}`);
}

const building = new Map<string, Promise<Chroot>>();

/** The chroot for `spec`, from the cache or made now (about a minute the first time). */
export function chroot(spec: ChrootSpec): Promise<Chroot> {
  let p = building.get(spec.name);
  if (!p) {
    p = makeChroot(spec);
    building.set(spec.name, p);
    p.catch(() => building.delete(spec.name));
  }
  return p;
}

/**
 * Starts getting the chroots of `specs` now, in the background (built one after the
 * other), so that a cold build overlaps the test file's other work: a QEMU boot under TCG
 * keeps about one of the two cores busy, a chroot build mostly the other. A later
 * `chroot(spec)` joins the same build. Returns what afterAll awaits, so that no build
 * outlives its test file (a worker that ends would leave a half-made root.tmp-* behind).
 * Failures are left to the test that asks for the chroot: `chroot()` then tries again
 * and throws with mmdebstrap's output.
 */
export function prefetchChroots(specs: ChrootSpec[]): () => Promise<void> {
  const started = specs.map((s) => chroot(s).then(() => undefined, () => undefined));
  return async () => {
    await Promise.all(started);
  };
}

/** Builds run one at a time: two mmdebstraps would fight over the cores and over apt-archives. */
let buildQueue: Promise<unknown> = Promise.resolve();
function oneAtATime<T>(f: () => Promise<T>): Promise<T> {
  const p = buildQueue.then(f, f);
  buildQueue = p.catch(() => undefined);
  return p;
}

async function makeChroot(spec: ChrootSpec): Promise<Chroot> {
  const dir = path.join(CHROOTS, spec.name);
  const root = path.join(dir, 'root');
  const keyFile = path.join(dir, 'key.json');
  const key = keyOf(spec);
  if (process.env.STACKBOOT_CHROOT_REFRESH !== '1' && (await readText(keyFile)) === key) {
    try {
      await fs.access(path.join(root, 'usr/bin'));
      return { name: spec.name, root, cached: true };
    } catch {
      /* fall through: rebuild */
    }
  }
  return oneAtATime(() => buildChroot(spec, dir, root, keyFile, key));
}

async function buildChroot(spec: ChrootSpec, dir: string, root: string, keyFile: string, key: string): Promise<Chroot> {
  await fs.mkdir(APT_ARCHIVES, { recursive: true });
  await fs.mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `root.tmp-${process.pid}`);
  await fs.rm(tmp, { recursive: true, force: true });
  await fs.rm(keyFile, { force: true });
  const args = [
    '--mode=root',
    `--variant=${spec.variant ?? 'apt'}`,
    `--include=${spec.include.join(',')}`,
    ...DPKG_OPTS.map((o) => `--dpkgopt=${o}`),
    // keep the .debs of this build for the next one (see mmdebstrap(1), "sync-in")
    '--skip=essential/unlink',
    `--setup-hook=mkdir -p "$1"/var/cache/apt/archives/`,
    `--setup-hook=sync-in ${APT_ARCHIVES} /var/cache/apt/archives/`,
    `--customize-hook=sync-out /var/cache/apt/archives ${APT_ARCHIVES}`,
    spec.suite ?? 'bookworm',
    tmp,
    spec.mirror ?? 'http://deb.debian.org/debian',
  ];
  // in a private mount namespace: whatever mmdebstrap mounts in the chroot (proc, sys,
  // dev) goes away with it, even when it dies half-way
  await assertNoMounts(tmp);
  // (mmdebstrap passes its environment on to apt, dpkg and the maintainer scripts)
  const r = await run('unshare', ['--mount', '--propagation', 'private', '--fork', 'mmdebstrap', ...args], { reject: false, timeout: 30 * 60_000, env: BUILD_ENV });
  if (spec.log) for (const l of r.stderr.split('\n')) if (l.trim()) spec.log(l);
  if (r.exitCode !== 0) {
    await assertNoMounts(tmp);
    await fs.rm(tmp, { recursive: true, force: true });
    throw new Error(`mmdebstrap ${spec.name} failed (exit ${r.exitCode}):\n${r.stderr.split('\n').slice(-30).join('\n')}`);
  }
  await assertNoMounts(tmp);
  await assertNoMounts(root);
  await fs.rm(root, { recursive: true, force: true });
  await fs.rename(tmp, root);
  await fs.writeFile(keyFile, key);
  return { name: spec.name, root, cached: false };
}

/**
 * Runs `argv` inside the chroot (as root), in a private mount namespace with /proc, /sys
 * and /dev mounted; those mounts die with the namespace. Throws with the output on failure.
 */
export async function inChroot(c: Chroot, argv: string[], opts: { timeout?: number; env?: Record<string, string> } = {}): Promise<RunResult> {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const r = c.root;
  const env = Object.entries({ PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', ...(opts.env ?? {}) }).map(([k, v]) => `${k}=${v}`);
  const script = [
    'set -e',
    `mount --make-rprivate /`,
    `mount -t proc proc ${q(r + '/proc')}`,
    `mount -t sysfs sysfs ${q(r + '/sys')}`,
    `mount --rbind /dev ${q(r + '/dev')}`,
    `exec chroot ${q(r)} /usr/bin/env -i ${env.map(q).join(' ')} ${argv.map(q).join(' ')}`,
  ].join('\n');
  const res = await run('unshare', ['--mount', '--fork', 'sh', '-c', script], { reject: false, timeout: opts.timeout ?? 10 * 60_000 });
  if (res.exitCode !== 0) {
    throw new Error(`in chroot ${c.name}: ${argv.join(' ')} failed (exit ${res.exitCode})\n--- stdout ---\n${res.stdout.slice(-4000)}\n--- stderr ---\n${res.stderr.slice(-4000)}`);
  }
  return res;
}

/** The kernel release installed in the chroot (the only one in /lib/modules). */
export async function chrootKernel(c: Chroot): Promise<{ kver: string; vmlinuz: string; modules: string }> {
  const kvers = (await fs.readdir(path.join(c.root, 'lib/modules'))).filter((k) => !k.startsWith('.'));
  if (kvers.length !== 1) throw new Error(`chroot ${c.name}: expected one kernel in /lib/modules, found ${kvers.join(' ') || 'none'}`);
  const kver = kvers[0]!;
  return { kver, vmlinuz: path.join(c.root, 'boot', `vmlinuz-${kver}`), modules: path.join(c.root, 'lib/modules', kver) };
}
