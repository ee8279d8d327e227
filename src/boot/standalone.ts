/**
 * The `standalone` flavor: a complete initrd (busybox-static, the shell core, boot.conf,
 * the kernel modules with their dependencies, a rendered /init from
 * `templates/standalone/init.hbs`) as a reproducible newc cpio, gzip- or zstd-compressed.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { StackbootError, run, hostArch, isArch, noProgress, type Arch } from '../sys/index.js';
import { defaultBootConfig, validateBootConfig } from './bootconfig.js';
import { writeCpio, type CpioEntry } from './cpio.js';
import { checkElfArch, checkModuleArch, checkStaticElf } from './elf.js';
import type { Compression } from './flavor.js';
import { pubKeyFiles, writeAtomic, type InitramfsOptions, type InitramfsResult } from './hook.js';
import { renderModulesDep, moduleNameFromPath, normalizeModuleName } from './kernel.js';
import { VERITY_HASH_MODULES, resolveShipped } from './modules.js';
import { BOOT_CONF, CORE_DIR, SB_LIB, TEMPLATES_DIR, checkShellSyntax, readCore, renderBootConfig, renderTemplate } from './render.js';
import { loadTarget } from './target.js';
import { programClosure } from './programs.js';

/** The busybox applets the rendered templates call themselves (the core needs more: all applets are linked). */
export const TEMPLATE_APPLETS: readonly string[] = ['sh', 'mount', 'mkdir', 'sleep', 'reboot', 'setsid', 'cttyhack', 'switch_root', 'grep', 'cat'];

/** The applet names of the host's busybox (`busybox --list`), without `busybox` itself. */
export async function busyboxApplets(hostBusybox = 'busybox'): Promise<string[]> {
  const r = await run(hostBusybox, ['--list']);
  return [...new Set(r.stdout.split('\n').map((s) => s.trim()).filter((s) => s !== '' && s !== 'busybox' && !s.includes('/')))].sort();
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

/** Compresses an archive: gzip with node:zlib, zstd with the zstd tool. */
export async function compressArchive(buf: Buffer, how: Compression): Promise<Buffer> {
  if (how === 'gzip') return zlib.gzipSync(buf, { level: 9 });
  const r = await run('zstd', ['-q', '-15', '-c'], { input: buf, binary: true });
  return r.stdoutBuffer!;
}

/** The programs verified boot runs in the initrd (initramfs/verity.sh), at their Debian paths. */
export const VERITY_PROGRAMS: readonly string[] = ['/sbin/dmsetup', '/bin/signify-openbsd'];
/** Where the initrd keeps the keys a manifest must be signed by (initramfs/verity.sh SB_KEYS). */
export const INITRD_KEYS_DIR = 'etc/stackboot/keys';

/** Adds PROGRAMS of the sysroot ROOT (in bin/) and their libraries (at their paths); returns the paths added. */
async function addPrograms(entries: CpioEntry[], root: string, programs: readonly string[], arch: Arch): Promise<string[]> {
  const added: string[] = [];
  const seen = new Set(entries.map((e) => e.path));
  for (const program of programs) {
    for (const f of await programClosure(root, program)) {
      const at = f.path === program ? `bin/${path.posix.basename(program)}` : f.path.slice(1);
      if (seen.has(at)) continue;
      seen.add(at);
      const data = await readFile(f.source);
      if (f.path === program) checkElfArch(data, arch, `${root}${program}`);
      entries.push({ path: at, type: 'file', mode: 0o755, data });
      added.push(at);
    }
  }
  return added;
}

/** Adds the public keys as etc/stackboot/keys/<name>.pub; refused without a verifier to use them. */
async function addKeys(entries: CpioEntry[], files: readonly string[], hasVerifier: boolean): Promise<string[]> {
  if (files.length && !hasVerifier) throw new StackbootError('USAGE', 'public keys need a signature verifier in the initrd: give --verity-root (a sysroot with sbin/dmsetup and bin/signify-openbsd; setup: .cache/targets/<arch>/verity-root)');
  const keys = await pubKeyFiles(files, INITRD_KEYS_DIR);
  for (const k of keys) entries.push({ path: k.rel, type: 'file', mode: k.mode, data: Buffer.from(k.data) });
  return keys.map((k) => k.rel);
}

/** The complete standalone initrd: a newc cpio, compressed. */
export async function buildStandalone(opts: InitramfsOptions): Promise<InitramfsResult> {
  const progress = opts.progress ?? noProgress;
  const hostBusybox = opts.hostBusybox ?? 'busybox';
  const templatesDir = opts.templatesDir ?? TEMPLATES_DIR;
  const arch = opts.arch ?? hostArch();
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
  // dm-verity (with dm-mod and dm-bufio by modules.dep) when the initrd can use it, and
  // the CPU's sha256 drivers for it (loaded by the hook before its first table)
  const res = await resolveShipped(modulesDir, [...(opts.modules ?? []), ...(opts.verityRoot ? ['dm-verity'] : [])], opts.verityRoot ? VERITY_HASH_MODULES : []);
  const hashDrivers = new Set(VERITY_HASH_MODULES.map(normalizeModuleName));
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

  // kexec (kexec-tools), and dmsetup and signify-openbsd (verified boot), with their libraries at
  // their sysroot paths; the programs themselves in bin/ (sbin is a link to bin here)
  const kexec: string[] = [];
  if (opts.kexecRoot) {
    progress({ task: 'initramfs: kexec', done: 0 });
    kexec.push(...(await addPrograms(entries, opts.kexecRoot, ['/sbin/kexec'], arch)));
  }
  const verity: string[] = [];
  if (opts.verityRoot) {
    progress({ task: 'initramfs: dmsetup, signify', done: 0 });
    verity.push(...(await addPrograms(entries, opts.verityRoot, VERITY_PROGRAMS, arch)));
  }
  const keys = await addKeys(entries, opts.pubKeys ?? [], !!opts.verityRoot);

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
      modules: res.modules.map((m) => m.name).filter((m) => !hashDrivers.has(m)),
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
  const cpio = writeCpio(entries, { mtime: opts.mtime ?? 0 });
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
    ...(kexec.length ? { kexec } : {}),
    ...(verity.length ? { verity } : {}),
    ...(keys.length ? { keys } : {}),
  };
}
