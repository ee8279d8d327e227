/**
 * What the three initramfs flavors share: their options and result (`stackboot
 * initramfs`), the inputs of the two hook flavors (the validated config, the checked
 * modules, the core), and writing their output atomically, shell checked with sh -n first.
 */
import { readFile, writeFile, stat, chmod } from 'node:fs/promises';
import path from 'node:path';
import { StackbootError, wrap, makeDir, writeDurableFrom, type Arch, type ProgressSink } from '../sys/index.js';
import { checkPublicKey, signifyPublicKey } from '../format/index.js';
import { defaultBootConfig, validateBootConfig, type BootConfig } from './bootconfig.js';
import type { Compression, Flavor } from './flavor.js';
import { checkedModules } from './modules.js';
import { CORE_DIR, TEMPLATES_DIR, checkShellSyntax, readCore } from './render.js';

export interface InitramfsOptions {
  flavor: Flavor;
  /** standalone: the initrd file; the others: a directory. */
  out: string;
  /** Target arch (standalone); default: the host's. */
  arch?: Arch;
  /** Kernel modules dir (`lib/modules/<kver>` or its parent with one kernel). Standalone: default the setup target's. Others: when given, module names are checked against it. */
  modulesDir?: string;
  /** busybox-static for the target (standalone); default the setup target's. */
  busybox?: string;
  /** The boot config; default defaultBootConfig(). */
  config?: BootConfig;
  /** Modules to add to DEFAULT_MODULES. */
  modules?: readonly string[];
  compress?: Compression;
  /** mtime of the cpio entries (the caller's SOURCE_DATE_EPOCH); default 0. */
  mtime?: number;
  /** The shell core dir (default the repo's initramfs/). */
  coreDir?: string;
  templatesDir?: string;
  /** The repo's .cache (for the default target). */
  cacheRoot?: string;
  /**
   * Standalone: a sysroot holding sbin/kexec (kexec-tools) and the libraries it needs, for
   * stacks that carry their own kernel (initramfs/kexec.sh). Without it the initrd has no
   * kexec, and such a stack fails to boot there (not marked bad).
   */
  kexecRoot?: string;
  /**
   * Standalone: a sysroot holding sbin/dmsetup and bin/signify-openbsd with their libraries
   * (verified boot, initramfs/verity.sh): layers opened through dm-verity, manifest
   * signatures checked. Without it VERIFY=verity falls back to size checks.
   */
  verityRoot?: string;
  /** Standalone: ed25519 public keys (PEM) built in as /etc/stackboot/keys/*.pub: manifests must be signed by one (needs verityRoot). */
  pubKeys?: readonly string[];
  /** Host busybox used for `sh -n` and `--list`. */
  hostBusybox?: string;
  progress?: ProgressSink;
}

export interface InitramfsResult {
  flavor: Flavor;
  out: string;
  /** Files written (standalone: the paths inside the archive). */
  files: string[];
  /** Kernel modules shipped (standalone: resolved, in load order) or asked for. */
  modules: string[];
  /** Wanted modules that are built into the kernel. */
  builtin: string[];
  /** Optional modules this kernel lacks. */
  skipped: string[];
  kver?: string;
  arch?: Arch;
  compress?: Compression;
  /** Size of the written initrd (standalone). */
  bytes?: number;
  /** busybox applets linked in /bin (standalone). */
  applets?: string[];
  /** standalone with kexecRoot: kexec and its libraries, as placed in the initrd */
  kexec?: string[];
  /** standalone with verityRoot: dmsetup, signify-openbsd and their libraries, as placed in the initrd */
  verity?: string[];
  /** standalone: the public keys built in */
  keys?: string[];
}

/** Writes a file durably (sys/durable: temp beside it, fsync, rename), with exactly MODE. */
export async function writeAtomic(file: string, data: Buffer | string, mode = 0o644): Promise<void> {
  await makeDir(path.dirname(file));
  await writeDurableFrom(file, async (tmp) => {
    await writeFile(tmp, data, { mode, flag: 'wx' });
    await chmod(tmp, mode);
  }).catch((e: unknown) => {
    throw wrap('IO', `cannot write ${file}`, e);
  });
}

export interface OutFile {
  rel: string;
  data: string | Buffer;
  mode: number;
  /** Rendered shell: checked with sh -n before anything is written. */
  shell?: boolean;
}

/** Writes a hook flavor's files under `outDir` (every shell one checked first); returns their paths. */
export async function writeTree(outDir: string, files: OutFile[], hostBusybox: string): Promise<string[]> {
  for (const f of files) if (f.shell) await checkShellSyntax(f.data.toString(), f.rel, hostBusybox);
  try {
    const st = await stat(outDir);
    if (!st.isDirectory()) throw new StackbootError('IO', `${outDir} exists and is not a directory`);
  } catch (e) {
    if (e instanceof StackbootError) throw e;
  }
  for (const f of files) await writeAtomic(path.join(outDir, f.rel), f.data, f.mode);
  return files.map((f) => f.rel);
}

/** What the hook flavors share: the validated config, the checked modules, the core. */
/**
 * The public keys (`--pub`) as files under DIR, each checked (ed25519, not a private key):
 * <name>.pub (PEM, for openssl) and <name>.signify (the same key for signify-openbsd).
 */
export async function pubKeyFiles(files: readonly string[], dir: string): Promise<OutFile[]> {
  const out: OutFile[] = [];
  for (const f of files) {
    await checkPublicKey(f);
    const rel = `${dir}/${path.basename(f).replace(/\.pub$|$/, '.pub')}`;
    if (out.some((o) => o.rel === rel)) throw new StackbootError('USAGE', `two public keys named ${path.basename(f)}`);
    out.push({ rel, data: await readFile(f), mode: 0o644 });
    out.push({ rel: rel.replace(/\.pub$/, '.signify'), data: Buffer.from(await signifyPublicKey(f)), mode: 0o644 });
  }
  return out;
}

export async function hookInputs(opts: InitramfsOptions) {
  const hostBusybox = opts.hostBusybox ?? 'busybox';
  const templatesDir = opts.templatesDir ?? TEMPLATES_DIR;
  const cfg = validateBootConfig(opts.config ?? defaultBootConfig());
  const mods = await checkedModules(opts.modulesDir, opts.modules ?? []);
  const core = await readCore(opts.coreDir ?? CORE_DIR, hostBusybox);
  return { hostBusybox, templatesDir, cfg, mods, core };
}
