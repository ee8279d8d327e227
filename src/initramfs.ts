/**
 * The boot hook, three ways: renders the Handlebars templates in `templates/` (this is the
 * project's only Handlebars importer) around the shell core in `initramfs/`, and writes
 *
 * - `standalone`: a complete initrd (busybox-static, the core, boot.conf, the kernel
 *   modules with their dependencies, a rendered /init) as a reproducible newc cpio,
 *   gzip- or zstd-compressed;
 * - `initramfs-tools`: a hook, a `boot=stackboot` script and a conf hook, plus the core;
 * - `dracut`: a `modules.d/90stackboot` module, plus the core.
 *
 * Every rendered shell script is checked with `busybox sh -n` before it is written.
 * The boot config (`boot.conf`) is the "Boot config" of docs/PROTOCOL.md.
 */
import Handlebars from 'handlebars';
import { readFile, writeFile, readdir, rename, rm, stat, chmod } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import zlib from 'node:zlib';
import { StackbootError, wrap } from './errors.js';
import { run } from './exec.js';
import { writeCpio, sourceDateEpoch, type CpioEntry } from './cpio.js';
import { loadModuleIndex, resolveModules, renderModulesDep, moduleNameFromPath, normalizeModuleName, type ModuleIndex, type ModuleInfo } from './kernel.js';
import { archFromNode, isArch, loadTarget, type Arch } from './target.js';
import { noProgress, type ProgressSink } from './progress.js';
import { FLAVORS, type Compression, type Flavor } from './flavor.js';
import { makeDir } from './dirs.js';

// ---------------------------------------------------------------------------------------
// Boot config

export type UpperKind = 'tmpfs' | 'disk';
export type VerifyMode = 'size' | 'sha256';
export type OnFail = 'reboot' | 'shell';

/** `/etc/stackboot/boot.conf` (docs/PROTOCOL.md "Boot config"), typed. */
export interface BootConfig {
  /** Disk names (globs allowed), in priority order. Never empty. */
  STORES: string[];
  STORE_LABEL: string;
  DATA_LABEL: string;
  /** Tries given to a new pending stack: a positive integer. */
  TRIES: number;
  UPPER: UpperKind;
  /** tmpfs `size=` of the upper: `50%`, `512m`, `1g`, bytes. */
  UPPER_SIZE: string;
  VERIFY: VerifyMode;
  /** Absolute paths bind-mounted from the data partition. */
  PERSIST: string[];
  ON_FAIL: OnFail;
  /** Seconds before the reboot when every stack failed. */
  ON_FAIL_DELAY: number;
  /** The init inside the new root. */
  INIT: string;
  /** Seconds to wait for the disks. */
  DEVICE_TIMEOUT: number;
  /** Once a store is found, seconds to keep waiting for missing higher-priority disks. */
  DEVICE_SETTLE: number;
  /** Seconds per health check (node side). */
  HEALTH_TIMEOUT: number;
  /** Seconds before a health reboot (node side). */
  HEALTH_REBOOT_DELAY: number;
}

export type BootConfigKey = keyof BootConfig;

/** The keys in the order boot.conf lists them. */
export const BOOT_CONFIG_KEYS: readonly BootConfigKey[] = [
  'STORES',
  'STORE_LABEL',
  'DATA_LABEL',
  'TRIES',
  'UPPER',
  'UPPER_SIZE',
  'VERIFY',
  'PERSIST',
  'ON_FAIL',
  'ON_FAIL_DELAY',
  'INIT',
  'DEVICE_TIMEOUT',
  'DEVICE_SETTLE',
  'HEALTH_TIMEOUT',
  'HEALTH_REBOOT_DELAY',
];

export function defaultBootConfig(): BootConfig {
  return {
    STORES: ['nvme0n1', 'mmcblk0', 'vda', 'vdb'],
    STORE_LABEL: 'sb-store',
    DATA_LABEL: 'sb-data',
    TRIES: 3,
    UPPER: 'tmpfs',
    UPPER_SIZE: '50%',
    VERIFY: 'size',
    PERSIST: [],
    ON_FAIL: 'reboot',
    ON_FAIL_DELAY: 10,
    INIT: '/sbin/init',
    DEVICE_TIMEOUT: 10,
    DEVICE_SETTLE: 2,
    HEALTH_TIMEOUT: 60,
    HEALTH_REBOOT_DELAY: 10,
  };
}

const isKey = (k: string): k is BootConfigKey => (BOOT_CONFIG_KEYS as readonly string[]).includes(k);

function bad(key: string, value: string, want: string): StackbootError {
  return new StackbootError('CONFIG', `boot config ${key}=${JSON.stringify(value)} is invalid: ${want}`, { details: { key, value } });
}

function intValue(key: string, value: string, min: number, max = 1_000_000): number {
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw bad(key, value, min > 0 ? `a positive integer (at most ${max})` : `a non-negative integer (at most ${max})`);
  }
  return Number(value);
}

function words(value: string): string[] {
  return value.split(/\s+/).filter((w) => w !== '');
}

/** Validates one KEY=value (as text) and stores it into `cfg`. */
export function setBootConfigValue(cfg: BootConfig, key: string, value: string): void {
  const v = value.trim();
  if (/[\n\r]/.test(value)) throw bad(key, value, 'no newlines');
  if (!isKey(key)) throw new StackbootError('CONFIG', `unknown boot config key ${key} (known: ${BOOT_CONFIG_KEYS.join(', ')})`, { details: { key } });
  switch (key) {
    case 'STORES': {
      const w = words(v);
      if (w.length === 0) throw bad(key, value, 'at least one disk name');
      for (const s of w) if (!/^[A-Za-z0-9._*?-]+$/.test(s)) throw bad(key, value, `disk names (globs allowed) like nvme0n1 mmcblk0 vd*, not ${JSON.stringify(s)}`);
      cfg.STORES = w;
      return;
    }
    case 'STORE_LABEL':
    case 'DATA_LABEL':
      if (!/^[A-Za-z0-9._-]{1,16}$/.test(v)) throw bad(key, value, 'a filesystem label of 1-16 characters [A-Za-z0-9._-]');
      cfg[key] = v;
      return;
    case 'TRIES':
      cfg.TRIES = intValue(key, v, 1, 1000);
      return;
    case 'UPPER':
      if (v !== 'tmpfs' && v !== 'disk') throw bad(key, value, 'tmpfs or disk');
      cfg.UPPER = v;
      return;
    case 'UPPER_SIZE': {
      const m = /^(\d+)(%|[kmgKMG])?$/.exec(v);
      if (!m || Number(m[1]) === 0 || (m[2] === '%' && Number(m[1]) > 100)) throw bad(key, value, 'a tmpfs size such as 50%, 512m or 2g');
      cfg.UPPER_SIZE = v;
      return;
    }
    case 'VERIFY':
      if (v !== 'size' && v !== 'sha256') throw bad(key, value, 'size or sha256');
      cfg.VERIFY = v;
      return;
    case 'PERSIST': {
      const w = words(v);
      for (const p of w) {
        if (!/^\/[A-Za-z0-9._/+@-]+$/.test(p) || p.split('/').some((x) => x === '..' || x === '.')) {
          throw bad(key, value, `absolute paths without spaces or .. (got ${JSON.stringify(p)})`);
        }
      }
      cfg.PERSIST = w;
      return;
    }
    case 'ON_FAIL':
      if (v !== 'reboot' && v !== 'shell') throw bad(key, value, 'reboot or shell');
      cfg.ON_FAIL = v;
      return;
    case 'ON_FAIL_DELAY':
      cfg.ON_FAIL_DELAY = intValue(key, v, 0, 86400);
      return;
    case 'INIT':
      if (!/^\/[A-Za-z0-9._/+-]+$/.test(v)) throw bad(key, value, 'an absolute path such as /sbin/init');
      cfg.INIT = v;
      return;
    case 'DEVICE_TIMEOUT':
      cfg.DEVICE_TIMEOUT = intValue(key, v, 1, 3600);
      return;
    case 'DEVICE_SETTLE':
      cfg.DEVICE_SETTLE = intValue(key, v, 0, 3600);
      return;
    case 'HEALTH_TIMEOUT':
      cfg.HEALTH_TIMEOUT = intValue(key, v, 1, 86400);
      return;
    case 'HEALTH_REBOOT_DELAY':
      cfg.HEALTH_REBOOT_DELAY = intValue(key, v, 0, 86400);
      return;
  }
}

/**
 * Parses boot.conf text (`KEY=value`, `#` comments, a comment may follow a blank,
 * optional quotes) into pairs, in file order. Throws CONFIG on a line that is not KEY=value.
 */
export function parseBootConfigText(text: string, origin = 'boot config'): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const eq = line.indexOf('=');
    const key = eq > 0 ? line.slice(0, eq).trim() : '';
    if (!/^[A-Z][A-Z0-9_]*$/.test(key)) throw new StackbootError('CONFIG', `${origin}:${i + 1}: not KEY=value: ${line}`);
    let val = line.slice(eq + 1);
    const c = val.search(/[ \t]#/);
    if (c >= 0) val = val.slice(0, c);
    val = val.trim();
    const q = /^"(.*)"$/.exec(val) ?? /^'(.*)'$/.exec(val);
    if (q) val = q[1]!;
    out.push([key, val]);
  });
  return out;
}

/** Parses a `KEY=VALUE` from the command line (`--set`). */
export function parseSetting(s: string): [string, string] {
  const eq = s.indexOf('=');
  if (eq <= 0) throw new StackbootError('CONFIG', `--set wants KEY=VALUE, got ${JSON.stringify(s)}`);
  return [s.slice(0, eq).trim(), s.slice(eq + 1)];
}

/**
 * A validated boot config: the defaults, then `text` (a boot.conf), then `set` pairs.
 * Unknown keys and invalid values are StackbootError('CONFIG') naming the key.
 */
export function makeBootConfig(opts: { text?: string; origin?: string; set?: ReadonlyArray<string | [string, string]>; base?: BootConfig } = {}): BootConfig {
  const cfg: BootConfig = { ...(opts.base ?? defaultBootConfig()) };
  cfg.STORES = [...cfg.STORES];
  cfg.PERSIST = [...cfg.PERSIST];
  if (opts.text !== undefined) {
    for (const [k, v] of parseBootConfigText(opts.text, opts.origin)) {
      try {
        setBootConfigValue(cfg, k, v);
      } catch (e) {
        if (e instanceof StackbootError && opts.origin) throw new StackbootError('CONFIG', `${opts.origin}: ${e.message}`, { details: e.details });
        throw e;
      }
    }
  }
  for (const s of opts.set ?? []) {
    const [k, v] = typeof s === 'string' ? parseSetting(s) : s;
    setBootConfigValue(cfg, k, v);
  }
  return cfg;
}

/** Checks a whole BootConfig object (e.g. one built in code) by round-tripping each value. */
export function validateBootConfig(cfg: BootConfig): BootConfig {
  const out = defaultBootConfig();
  for (const k of BOOT_CONFIG_KEYS) {
    const v = cfg[k];
    if (v === undefined) continue;
    setBootConfigValue(out, k, Array.isArray(v) ? v.join(' ') : String(v));
  }
  if (out.STORES.length === 0) throw bad('STORES', '', 'at least one disk name');
  return out;
}

function bootConfigValue(cfg: BootConfig, k: BootConfigKey): string {
  const v = cfg[k];
  return Array.isArray(v) ? v.join(' ') : String(v);
}

// ---------------------------------------------------------------------------------------
// Templates

const here = path.dirname(fileURLToPath(import.meta.url));
/** The repo's `templates/` (works from src/ under tsx and from dist/). */
export const TEMPLATES_DIR = path.resolve(here, '..', 'templates');
/** The repo's shell core `initramfs/`. */
export const CORE_DIR = path.resolve(here, '..', 'initramfs');

const GENERATOR = 'generated by stackboot initramfs; do not edit';
/** Where the core lives inside every initramfs flavor. */
export const SB_LIB = '/lib/stackboot';
/** Where boot.conf lives inside every initramfs flavor. */
export const BOOT_CONF = '/etc/stackboot/boot.conf';

/** Single-quotes a string for POSIX sh. */
export function shellQuote(s: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

const hb = Handlebars.create();
hb.registerHelper('shq', (v: unknown) => shellQuote(String(v)));

const compiled = new Map<string, HandlebarsTemplateDelegate>();

/** Renders `templates/<name>` with `ctx` (no HTML escaping; unknown variables are errors). */
export async function renderTemplate(name: string, ctx: Record<string, unknown>, templatesDir = TEMPLATES_DIR): Promise<string> {
  const file = path.join(templatesDir, name);
  let tpl = compiled.get(file);
  if (!tpl) {
    let src: string;
    try {
      src = await readFile(file, 'utf8');
    } catch (e) {
      throw new StackbootError('IO', `template ${name} cannot be read from ${templatesDir}`, { cause: e });
    }
    tpl = hb.compile(src, { noEscape: true, strict: true });
    compiled.set(file, tpl);
  }
  try {
    return tpl({ generator: GENERATOR, ...ctx });
  } catch (e) {
    throw new StackbootError('INTERNAL', `template ${name}: ${(e as Error).message}`, { cause: e });
  }
}

/** Renders boot.conf (the same KEY=value format the hook parses). */
export async function renderBootConfig(cfg: BootConfig, templatesDir = TEMPLATES_DIR): Promise<string> {
  const v = validateBootConfig(cfg);
  return renderTemplate('boot.conf.hbs', { entries: BOOT_CONFIG_KEYS.map((key) => ({ key, value: bootConfigValue(v, key) })) }, templatesDir);
}

/** `busybox sh -n` on a script: a syntax error is a StackbootError('CONFIG') naming the script. */
export async function checkShellSyntax(text: string, name: string, busybox = 'busybox'): Promise<void> {
  const r = await run(busybox, ['sh', '-n'], { input: text, reject: false });
  if (r.exitCode !== 0) {
    throw new StackbootError('CONFIG', `${name} does not parse (busybox sh -n): ${r.stderr.trim() || `exit ${r.exitCode}`}`, {
      details: { script: name, stderr: r.stderr },
    });
  }
}

// ---------------------------------------------------------------------------------------
// Modules

/** Modules every flavor ships (each with its dependencies). A missing one is an error. */
export const DEFAULT_MODULES: readonly string[] = [
  'overlay',
  'squashfs',
  'loop',
  'ext4',
  'vfat',
  'virtio_blk',
  'virtio_pci',
  'nvme',
  'sdhci',
  'sdhci_pci',
  'mmc_block',
];

/** Shipped when the kernel has them (ext4's crc32c, vfat's codepages, virtio-mmio on arm64 virt). */
export const OPTIONAL_MODULES: readonly string[] = ['crc32c', 'nls_cp437', 'nls_iso8859_1', 'nls_utf8', 'virtio_mmio'];

/** The busybox applets the rendered templates call themselves (the core needs more: all applets are linked). */
export const TEMPLATE_APPLETS: readonly string[] = ['sh', 'mount', 'mkdir', 'sleep', 'reboot', 'setsid', 'cttyhack', 'switch_root', 'grep', 'cat'];

/** Tools the dracut module installs: the ones the core runs (required) and nice-to-have ones. */
const DRACUT_REQUIRED_TOOLS = ['losetup', 'sha256sum', 'sync', 'dd', 'od', 'tr', 'wc', 'cat', 'cp', 'mv', 'rm', 'mkdir', 'readlink', 'date', 'sleep', 'mount', 'umount', 'modprobe'];
const DRACUT_OPTIONAL_TOOLS = ['blkid', 'reboot', 'stat', 'sed', 'grep', 'awk', 'setsid'];
/** Tools the initramfs-tools hook copies when the build host has them (util-linux versions). */
const ITOOLS_COPY_EXEC = ['blkid', 'losetup'];

// ---------------------------------------------------------------------------------------
// Building

export { FLAVORS, type Flavor, type Compression };

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
  /** mtime of the cpio entries; default SOURCE_DATE_EPOCH or 0. */
  mtime?: number;
  /** The shell core dir (default the repo's initramfs/). */
  coreDir?: string;
  templatesDir?: string;
  /** The repo's .cache (for the default target). */
  cacheRoot?: string;
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
}

interface CoreFile {
  name: string;
  data: Buffer;
}

/** Reads the shell core (`*.sh`, sorted), checking each with sh -n; stackboot.sh must be there. */
export async function readCore(coreDir = CORE_DIR, hostBusybox = 'busybox'): Promise<CoreFile[]> {
  let names: string[];
  try {
    names = (await readdir(coreDir)).filter((n) => n.endsWith('.sh')).sort();
  } catch (e) {
    throw new StackbootError('IO', `the boot core ${coreDir} cannot be read`, { cause: e });
  }
  if (!names.includes('stackboot.sh')) throw new StackbootError('IO', `the boot core entry ${path.join(coreDir, 'stackboot.sh')} is missing`);
  const out: CoreFile[] = [];
  for (const name of names) {
    const data = await readFile(path.join(coreDir, name));
    await checkShellSyntax(data.toString('utf8'), `core ${name}`, hostBusybox);
    out.push({ name, data });
  }
  return out;
}

/** The applet names of the host's busybox (`busybox --list`), without `busybox` itself. */
export async function busyboxApplets(hostBusybox = 'busybox'): Promise<string[]> {
  const r = await run(hostBusybox, ['--list']);
  return [...new Set(r.stdout.split('\n').map((s) => s.trim()).filter((s) => s !== '' && s !== 'busybox' && !s.includes('/')))].sort();
}

const ELF_MACHINE: Record<Arch, number> = { amd64: 62, arm64: 183 };

/** Checks that a binary is a static ELF executable for `arch` (a dynamic busybox cannot run in an initrd). */
export function checkStaticElf(buf: Buffer, arch: Arch, what: string): void {
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46) throw new StackbootError('CONFIG', `${what} is not an ELF binary`);
  if (buf[4] !== 2 || buf[5] !== 1) throw new StackbootError('CONFIG', `${what} is not a 64-bit little-endian ELF binary`);
  const machine = buf.readUInt16LE(18);
  if (machine !== ELF_MACHINE[arch]) throw new StackbootError('CONFIG', `${what} is built for ELF machine ${machine}, not ${arch}`);
  const phoff = Number(buf.readBigUInt64LE(32));
  const phentsize = buf.readUInt16LE(54);
  const phnum = buf.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const off = phoff + i * phentsize;
    if (off + 4 > buf.length) break;
    if (buf.readUInt32LE(off) === 3) throw new StackbootError('CONFIG', `${what} is dynamically linked: use busybox-static`);
  }
}

/** Checks that a kernel module (ELF relocatable) is for `arch`. */
function checkModuleArch(buf: Buffer, arch: Arch, what: string): void {
  if (buf.length < 20 || buf.readUInt32BE(0) !== 0x7f454c46) throw new StackbootError('CONFIG', `${what} is not an ELF kernel module`);
  const machine = buf.readUInt16LE(18);
  if (machine !== ELF_MACHINE[arch]) throw new StackbootError('CONFIG', `kernel modules in ${what} are not for ${arch} (ELF machine ${machine})`);
}

async function moduleBytes(file: string): Promise<Buffer> {
  if (file.endsWith('.ko')) return readFile(file);
  if (file.endsWith('.ko.gz')) return zlib.gunzipSync(await readFile(file));
  const tool = file.endsWith('.ko.xz') ? 'xz' : file.endsWith('.ko.zst') ? 'zstd' : undefined;
  if (!tool) throw new StackbootError('SOURCE', `unknown kernel module format: ${file}`);
  const r = await run(tool, ['-dc', file], { binary: true });
  return r.stdoutBuffer!;
}

function stagedModulePath(p: string): string {
  return p.replace(/\.ko\.(xz|zst|gz)$/, '.ko');
}

/** Keeps the lines of a modules.alias/softdep/order text that name an included module. */
function pruneLines(text: string | undefined, keep: (line: string) => boolean): string {
  if (!text) return '';
  return text
    .split('\n')
    .filter((l) => l.trim() !== '' && keep(l))
    .join('\n')
    .concat('\n');
}

async function readOptional(p: string): Promise<string | undefined> {
  try {
    return await readFile(p, 'utf8');
  } catch {
    return undefined;
  }
}

async function writeAtomic(file: string, data: Buffer | string, mode = 0o644): Promise<void> {
  await makeDir(path.dirname(file));
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, data, { mode });
    await chmod(tmp, mode);
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw wrap('IO', `cannot write ${file}`, e);
  }
}

/** Compresses an archive: gzip with node:zlib, zstd with the zstd tool. */
export async function compressArchive(buf: Buffer, how: Compression): Promise<Buffer> {
  if (how === 'gzip') return zlib.gzipSync(buf, { level: 9 });
  const r = await run('zstd', ['-q', '-15', '-c'], { input: buf, binary: true });
  return r.stdoutBuffer!;
}

interface Resolved {
  dir: string;
  kver: string;
  index: ModuleIndex;
  modules: ModuleInfo[];
  builtin: string[];
  skipped: string[];
}

async function resolveFor(modulesDir: string, extra: readonly string[]): Promise<Resolved> {
  const { dir, kver, index } = await loadModuleIndex(modulesDir);
  const r = resolveModules(index, [...DEFAULT_MODULES, ...extra], OPTIONAL_MODULES);
  return { dir, kver, index, ...r };
}

function wantedModules(extra: readonly string[]): string[] {
  return [...new Set([...DEFAULT_MODULES, ...extra].map(normalizeModuleName))];
}

/** Builds the hook in the chosen flavor. */
export async function buildInitramfs(opts: InitramfsOptions): Promise<InitramfsResult> {
  for (const m of opts.modules ?? []) {
    if (!/^[A-Za-z0-9_-]+$/.test(m)) throw new StackbootError('CONFIG', `bad kernel module name ${JSON.stringify(m)}`);
  }
  switch (opts.flavor) {
    case 'standalone':
      return buildStandalone(opts);
    case 'initramfs-tools':
      return buildInitramfsTools(opts);
    case 'dracut':
      return buildDracut(opts);
    default:
      throw new StackbootError('USAGE', `unknown initramfs flavor ${String(opts.flavor)} (${FLAVORS.join(', ')})`);
  }
}

/** The complete standalone initrd: a newc cpio, compressed. */
export async function buildStandalone(opts: InitramfsOptions): Promise<InitramfsResult> {
  const progress = opts.progress ?? noProgress;
  const hostBusybox = opts.hostBusybox ?? 'busybox';
  const templatesDir = opts.templatesDir ?? TEMPLATES_DIR;
  const arch = opts.arch ?? archFromNode(process.arch);
  if (!arch || !isArch(arch)) throw new StackbootError('USAGE', `no target arch: pass --arch amd64|arm64`);
  let modulesDir = opts.modulesDir;
  let busybox = opts.busybox;
  if (!modulesDir || !busybox) {
    const t = await loadTarget(arch, opts.cacheRoot).catch((e: unknown) => {
      throw new StackbootError('USAGE', `no ${!modulesDir ? '--modules-dir' : '--busybox'} given and no setup target for ${arch}`, { cause: e });
    });
    modulesDir ??= t.modules;
    busybox ??= t.busybox;
  }
  const cfg = validateBootConfig(opts.config ?? defaultBootConfig());
  const compress = opts.compress ?? 'gzip';

  progress({ task: 'initramfs: modules', done: 0 });
  const res = await resolveFor(modulesDir, opts.modules ?? []);
  const entries: CpioEntry[] = [];
  const modRoot = `lib/modules/${res.kver}`;
  let checkedArch = false;
  for (const m of res.modules) {
    const data = await moduleBytes(path.join(res.dir, m.path));
    if (!checkedArch) {
      checkModuleArch(data, arch, res.dir);
      checkedArch = true;
    }
    entries.push({ path: `${modRoot}/${stagedModulePath(m.path)}`, type: 'file', mode: 0o644, data });
  }
  const included = new Set(res.modules.map((m) => m.name));
  const [alias, softdep, order, builtinText] = await Promise.all(
    ['modules.alias', 'modules.softdep', 'modules.order', 'modules.builtin'].map((f) => readOptional(path.join(res.dir, f))),
  );
  entries.push(
    { path: `${modRoot}/modules.dep`, type: 'file', data: Buffer.from(renderModulesDep(res.modules, stagedModulePath)) },
    {
      path: `${modRoot}/modules.alias`,
      type: 'file',
      data: Buffer.from(pruneLines(alias, (l) => included.has(normalizeModuleName(l.trim().split(/\s+/)[2] ?? '')))),
    },
    {
      path: `${modRoot}/modules.softdep`,
      type: 'file',
      data: Buffer.from(pruneLines(softdep, (l) => included.has(normalizeModuleName(l.trim().split(/\s+/)[1] ?? '')))),
    },
    {
      path: `${modRoot}/modules.order`,
      type: 'file',
      data: Buffer.from(pruneLines(order, (l) => included.has(moduleNameFromPath(l.trim()))).replace(/\.ko\.(xz|zst|gz)$/gm, '.ko')),
    },
    { path: `${modRoot}/modules.builtin`, type: 'file', data: Buffer.from(builtinText ?? '') },
  );

  progress({ task: 'initramfs: busybox and core', done: 0 });
  let bbData: Buffer;
  try {
    bbData = await readFile(busybox);
  } catch (e) {
    throw new StackbootError('IO', `busybox ${busybox} cannot be read`, { cause: e });
  }
  checkStaticElf(bbData, arch, busybox);
  const applets = await busyboxApplets(hostBusybox);
  entries.push({ path: 'bin/busybox', type: 'file', mode: 0o755, data: bbData });
  for (const a of applets) entries.push({ path: `bin/${a}`, type: 'symlink', target: 'busybox' });
  entries.push(
    { path: 'sbin', type: 'symlink', target: 'bin' },
    { path: 'usr/bin', type: 'symlink', target: '../bin' },
    { path: 'usr/sbin', type: 'symlink', target: '../bin' },
  );
  const missing = TEMPLATE_APPLETS.filter((a) => !applets.includes(a));
  if (missing.length) throw new StackbootError('TOOL', `busybox lacks applets the init needs: ${missing.join(' ')}`);

  for (const f of await readCore(opts.coreDir ?? CORE_DIR, hostBusybox)) {
    entries.push({ path: `${SB_LIB.slice(1)}/${f.name}`, type: 'file', mode: 0o644, data: f.data });
  }
  const bootConf = await renderBootConfig(cfg, templatesDir);
  entries.push({ path: BOOT_CONF.slice(1), type: 'file', mode: 0o644, data: Buffer.from(bootConf) });

  const init = await renderTemplate(
    'standalone/init.hbs',
    {
      sbLib: SB_LIB,
      bootConf: BOOT_CONF,
      modules: res.modules.map((m) => m.name),
      runSize: '10%',
      fallbackDelay: Math.max(cfg.ON_FAIL_DELAY, 1),
    },
    templatesDir,
  );
  await checkShellSyntax(init, 'standalone /init', hostBusybox);
  entries.push({ path: 'init', type: 'file', mode: 0o755, data: Buffer.from(init) });

  for (const d of ['proc', 'sys', 'run', 'root', 'etc', 'var']) entries.push({ path: d, type: 'dir', mode: 0o755 });
  entries.push(
    { path: 'dev', type: 'dir', mode: 0o755 },
    { path: 'dev/console', type: 'char', mode: 0o600, major: 5, minor: 1 },
    { path: 'dev/null', type: 'char', mode: 0o666, major: 1, minor: 3 },
    { path: 'tmp', type: 'dir', mode: 0o1777 },
  );

  progress({ task: 'initramfs: archive', done: 0 });
  const cpio = writeCpio(entries, { mtime: opts.mtime ?? sourceDateEpoch() });
  const packed = await compressArchive(cpio, compress);
  await writeAtomic(opts.out, packed, 0o644);
  progress({ task: 'initramfs: archive', done: packed.length, total: packed.length, unit: 'bytes', final: true });
  return {
    flavor: 'standalone',
    out: opts.out,
    files: entries.map((e) => e.path).sort(),
    modules: res.modules.map((m) => m.name),
    builtin: res.builtin,
    skipped: res.skipped,
    kver: res.kver,
    arch,
    compress,
    bytes: packed.length,
    applets,
  };
}

interface OutFile {
  rel: string;
  data: string | Buffer;
  mode: number;
  /** Rendered shell: checked with sh -n before anything is written. */
  shell?: boolean;
}

async function writeTree(outDir: string, files: OutFile[], hostBusybox: string): Promise<string[]> {
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

async function checkedModules(opts: InitramfsOptions): Promise<{ modules: string[]; builtin: string[]; skipped: string[]; kver?: string }> {
  const wanted = wantedModules(opts.modules ?? []);
  if (!opts.modulesDir) return { modules: wanted, builtin: [], skipped: [] };
  // with a modules dir: names are checked against that kernel (the build resolves deps itself)
  const r = await resolveFor(opts.modulesDir, opts.modules ?? []);
  const optional = OPTIONAL_MODULES.filter((m) => !r.skipped.includes(m));
  return { modules: [...wanted, ...optional].filter((m) => !r.builtin.includes(m)), builtin: r.builtin, skipped: r.skipped, kver: r.kver };
}

const SHARE_DIR = '/usr/share/stackboot';

/** What the hook flavors share: the validated config, the checked modules, the core. */
async function hookInputs(opts: InitramfsOptions) {
  const hostBusybox = opts.hostBusybox ?? 'busybox';
  const templatesDir = opts.templatesDir ?? TEMPLATES_DIR;
  const cfg = validateBootConfig(opts.config ?? defaultBootConfig());
  const mods = await checkedModules(opts);
  const core = await readCore(opts.coreDir ?? CORE_DIR, hostBusybox);
  return { hostBusybox, templatesDir, cfg, mods, core };
}

/** initramfs-tools: hooks/stackboot, scripts/stackboot, conf-hooks.d/stackboot, the core and boot.conf, INSTALL. */
export async function buildInitramfsTools(opts: InitramfsOptions): Promise<InitramfsResult> {
  const { hostBusybox, templatesDir, cfg, mods, core } = await hookInputs(opts);
  const ctx = {
    sbLib: SB_LIB,
    bootConf: BOOT_CONF,
    shareDir: SHARE_DIR,
    hostConf: '/etc/stackboot/boot.conf',
    modules: mods.modules,
    copyExec: ITOOLS_COPY_EXEC,
    fallbackDelay: Math.max(cfg.ON_FAIL_DELAY, 1),
  };
  const files: OutFile[] = [
    { rel: 'hooks/stackboot', data: await renderTemplate('initramfs-tools/hook.hbs', ctx, templatesDir), mode: 0o755, shell: true },
    { rel: 'scripts/stackboot', data: await renderTemplate('initramfs-tools/script.hbs', ctx, templatesDir), mode: 0o755, shell: true },
    { rel: 'conf-hooks.d/stackboot', data: await renderTemplate('initramfs-tools/conf-hook.hbs', ctx, templatesDir), mode: 0o644, shell: true },
    { rel: 'boot.conf', data: await renderBootConfig(cfg, templatesDir), mode: 0o644 },
    ...core.map((f) => ({ rel: `lib/${f.name}`, data: f.data, mode: 0o644 })),
    { rel: 'INSTALL', data: await renderTemplate('initramfs-tools/INSTALL.hbs', ctx, templatesDir), mode: 0o644 },
  ];
  const written = await writeTree(opts.out, files, hostBusybox);
  return { flavor: 'initramfs-tools', out: opts.out, files: written, modules: mods.modules, builtin: mods.builtin, skipped: mods.skipped, kver: mods.kver };
}

/** dracut: modules.d/90stackboot/ (module-setup.sh, the hooks, the core, boot.conf), dracut.conf.d/stackboot.conf, INSTALL. */
export async function buildDracut(opts: InitramfsOptions): Promise<InitramfsResult> {
  const { hostBusybox, templatesDir, cfg, mods, core } = await hookInputs(opts);
  const ctx = {
    sbLib: SB_LIB,
    bootConf: BOOT_CONF,
    modules: mods.modules,
    requiredTools: DRACUT_REQUIRED_TOOLS,
    optionalTools: DRACUT_OPTIONAL_TOOLS,
    fallbackDelay: Math.max(cfg.ON_FAIL_DELAY, 1),
  };
  const m = 'modules.d/90stackboot';
  const files: OutFile[] = [
    { rel: `${m}/module-setup.sh`, data: await renderTemplate('dracut/module-setup.sh.hbs', ctx, templatesDir), mode: 0o755, shell: true },
    { rel: `${m}/parse-stackboot.sh`, data: await renderTemplate('dracut/parse-stackboot.sh.hbs', ctx, templatesDir), mode: 0o755, shell: true },
    { rel: `${m}/mount-stackboot.sh`, data: await renderTemplate('dracut/mount-stackboot.sh.hbs', ctx, templatesDir), mode: 0o755, shell: true },
    { rel: `${m}/boot.conf`, data: await renderBootConfig(cfg, templatesDir), mode: 0o644 },
    ...core.map((f) => ({ rel: `${m}/lib/${f.name}`, data: f.data, mode: 0o644 })),
    { rel: 'dracut.conf.d/stackboot.conf', data: await renderTemplate('dracut/dracut.conf.hbs', ctx, templatesDir), mode: 0o644, shell: true },
    { rel: 'INSTALL', data: await renderTemplate('dracut/INSTALL.hbs', ctx, templatesDir), mode: 0o644 },
  ];
  const written = await writeTree(opts.out, files, hostBusybox);
  return { flavor: 'dracut', out: opts.out, files: written, modules: mods.modules, builtin: mods.builtin, skipped: mods.skipped, kver: mods.kver };
}
