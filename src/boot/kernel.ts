/**
 * Kernel modules: parse a kernel's `modules.dep`, `modules.builtin`, `modules.alias` and
 * `modules.softdep` (pure functions), and resolve a list of wanted modules to the files
 * to put in an initramfs, dependencies first.
 *
 * Names are normalized the way kmod does it: the file's basename without `.ko[.xz|.zst|.gz]`,
 * with `-` turned into `_`.
 */
import { readFile, readdir, stat, mkdtemp, symlink, copyFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { StackbootError, run, makeDir } from '../sys/index.js';

export interface ModuleInfo {
  /** Normalized name, e.g. `virtio_blk`. */
  name: string;
  /** Path relative to the modules dir as modules.dep gives it, e.g. `kernel/fs/ext4/ext4.ko`. */
  path: string;
  /** Normalized names of the hard dependencies (modules.dep). */
  deps: string[];
}

export interface SoftDep {
  pre: string[];
  post: string[];
}

export interface ModuleIndex {
  /** Loadable modules by name. */
  modules: Map<string, ModuleInfo>;
  /** Names of the modules built into the kernel. */
  builtin: Set<string>;
  /** Exact (non-wildcard) aliases: alias -> module names. */
  aliases: Map<string, string[]>;
  /** Soft dependencies by module name. */
  softdeps: Map<string, SoftDep>;
}

export interface Resolution {
  /** Modules to ship, in load order (dependencies before the modules that need them). */
  modules: ModuleInfo[];
  /** Wanted names that are built into the kernel (nothing to ship or load). */
  builtin: string[];
  /** Optional names that exist neither as a module nor built in (skipped). */
  skipped: string[];
}

const MOD_EXT = /\.ko(\.xz|\.zst|\.gz)?$/;

/** `ext4`, `virtio-blk` → `virtio_blk`. */
export function normalizeModuleName(name: string): string {
  return name.trim().replace(/-/g, '_');
}

/** `kernel/drivers/block/virtio_blk.ko.xz` → `virtio_blk`. */
export function moduleNameFromPath(p: string): string {
  const base = p.slice(p.lastIndexOf('/') + 1);
  return normalizeModuleName(base.replace(MOD_EXT, ''));
}

function lines(text: string): string[] {
  return text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
}

/** Parses `modules.dep`: `path: dep-path dep-path …` lines. */
export function parseModulesDep(text: string): Map<string, ModuleInfo> {
  const out = new Map<string, ModuleInfo>();
  for (const line of lines(text)) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw new StackbootError('SOURCE', `modules.dep: malformed line: ${line}`);
    const p = line.slice(0, colon).trim();
    const deps = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter((d) => d !== '')
      .map(moduleNameFromPath);
    const name = moduleNameFromPath(p);
    if (!out.has(name)) out.set(name, { name, path: p, deps });
  }
  return out;
}

/** Parses `modules.builtin`: one path per line. */
export function parseModulesBuiltin(text: string): Set<string> {
  return new Set(lines(text).map(moduleNameFromPath));
}

/** Parses `modules.alias` (`alias NAME MODULE`), keeping only exact aliases (no glob characters). */
export function parseModulesAlias(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of lines(text)) {
    const w = line.split(/\s+/);
    if (w[0] !== 'alias' || w.length < 3) continue;
    const alias = w[1]!;
    if (/[*?[\]]/.test(alias)) continue;
    const key = normalizeModuleName(alias);
    const mod = normalizeModuleName(w[2]!);
    const list = out.get(key) ?? [];
    if (!list.includes(mod)) list.push(mod);
    out.set(key, list);
  }
  return out;
}

/** Parses `modules.softdep` (`softdep MOD pre: A B post: C`). */
export function parseModulesSoftdep(text: string): Map<string, SoftDep> {
  const out = new Map<string, SoftDep>();
  for (const line of lines(text)) {
    const w = line.split(/\s+/);
    if (w[0] !== 'softdep' || w.length < 2) continue;
    const mod = normalizeModuleName(w[1]!);
    const sd = out.get(mod) ?? { pre: [], post: [] };
    let cur: 'pre' | 'post' | undefined;
    for (const t of w.slice(2)) {
      if (t === 'pre:') cur = 'pre';
      else if (t === 'post:') cur = 'post';
      else if (cur) sd[cur].push(normalizeModuleName(t));
    }
    out.set(mod, sd);
  }
  return out;
}

/** Builds an index from the texts of the module files (missing files are empty strings). */
export function buildModuleIndex(files: { dep: string; builtin?: string; alias?: string; softdep?: string }): ModuleIndex {
  return {
    modules: parseModulesDep(files.dep),
    builtin: parseModulesBuiltin(files.builtin ?? ''),
    aliases: parseModulesAlias(files.alias ?? ''),
    softdeps: parseModulesSoftdep(files.softdep ?? ''),
  };
}

/**
 * Resolves wanted module names (or exact aliases such as `crc32c`) to the modules to ship,
 * with their modules.dep dependencies and their soft dependencies (soft ones only when
 * they exist), dependencies first, each module once. A wanted name that is built in is
 * reported in `builtin`; one that does not exist is a StackbootError('CONFIG') naming it,
 * unless it is in `optional` (then it is reported in `skipped`).
 */
export function resolveModules(index: ModuleIndex, wanted: readonly string[], optional: readonly string[] = []): Resolution {
  const order: ModuleInfo[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const builtin: string[] = [];
  const skipped: string[] = [];

  /** The module names a wanted name stands for: itself, or its alias targets. */
  const lookup = (name: string): { mods: string[]; builtin: boolean } => {
    const n = normalizeModuleName(name);
    if (index.modules.has(n)) return { mods: [n], builtin: false };
    if (index.builtin.has(n)) return { mods: [], builtin: true };
    const targets = index.aliases.get(n) ?? [];
    const mods = targets.filter((t) => index.modules.has(t));
    if (mods.length > 0) return { mods, builtin: false };
    if (targets.some((t) => index.builtin.has(t))) return { mods: [], builtin: true };
    return { mods: [], builtin: false };
  };

  const visit = (name: string, chain: string[], soft: boolean): void => {
    if (done.has(name)) return;
    const info = index.modules.get(name);
    if (!info) {
      if (index.builtin.has(name) || soft) return;
      throw new StackbootError('CONFIG', `kernel module ${name} (needed by ${chain.join(' <- ')}) is not in modules.dep`, {
        details: { module: name, chain },
      });
    }
    if (visiting.has(name)) return; // a cycle: kmod refuses those; do not loop
    visiting.add(name);
    const sd = index.softdeps.get(name);
    for (const s of sd?.pre ?? []) for (const m of lookup(s).mods) visit(m, [m, ...chain], true);
    for (const d of info.deps) visit(d, [d, ...chain], false);
    visiting.delete(name);
    done.add(name);
    order.push(info);
    for (const s of sd?.post ?? []) for (const m of lookup(s).mods) visit(m, [m, ...chain], true);
  };

  const opt = new Set(optional.map(normalizeModuleName));
  const seen = new Set<string>();
  for (const raw of [...wanted, ...optional]) {
    const w = normalizeModuleName(raw);
    if (w === '' || seen.has(w)) continue;
    seen.add(w);
    const r = lookup(w);
    if (r.builtin) {
      builtin.push(w);
      continue;
    }
    if (r.mods.length === 0) {
      if (opt.has(w) && !wanted.some((x) => normalizeModuleName(x) === w)) {
        skipped.push(w);
        continue;
      }
      throw new StackbootError('CONFIG', `kernel module ${w} does not exist in this kernel (not in modules.dep, modules.builtin or modules.alias)`, {
        details: { module: w },
      });
    }
    for (const m of r.mods) visit(m, [m], false);
  }
  return { modules: order, builtin, skipped };
}

/** Renders a modules.dep for a subset of modules, with their paths mapped by `rename`. */
export function renderModulesDep(mods: readonly ModuleInfo[], rename: (p: string) => string = (p) => p): string {
  const included = new Map(mods.map((m) => [m.name, m]));
  let out = '';
  for (const m of mods) {
    const deps = m.deps.filter((d) => included.has(d)).map((d) => rename(included.get(d)!.path));
    out += `${rename(m.path)}:${deps.length ? ' ' + deps.join(' ') : ''}\n`;
  }
  return out;
}

/** Modules dir: `<dir>` itself when it holds modules.order/modules.dep/kernel, else its only `<kver>` subdir. */
export async function findModulesDir(dir: string): Promise<{ dir: string; kver: string }> {
  const isKverDir = async (d: string) => {
    for (const f of ['modules.dep', 'modules.order', 'modules.builtin']) {
      try {
        await stat(path.join(d, f));
        return true;
      } catch {
        /* next */
      }
    }
    return false;
  };
  const abs = path.resolve(dir);
  if (await isKverDir(abs)) return { dir: abs, kver: path.basename(abs) };
  let subs: string[] = [];
  try {
    subs = (await readdir(abs, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name);
  } catch (e) {
    throw new StackbootError('SOURCE', `modules dir ${dir} cannot be read`, { cause: e });
  }
  const kdirs: string[] = [];
  for (const s of subs) if (await isKverDir(path.join(abs, s))) kdirs.push(s);
  if (kdirs.length === 1) return { dir: path.join(abs, kdirs[0]!), kver: kdirs[0]! };
  throw new StackbootError(
    'SOURCE',
    kdirs.length === 0
      ? `${dir} is not a kernel modules dir (lib/modules/<kver> with modules.dep)`
      : `${dir} holds several kernels (${kdirs.join(', ')}): name one of them`,
  );
}

async function readOpt(p: string): Promise<string | undefined> {
  try {
    return await readFile(p, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new StackbootError('IO', `cannot read ${p}`, { cause: e });
  }
}

/**
 * Runs `depmod -b` for a modules dir that has no modules.dep (a kernel .deb unpacked with
 * dpkg -x), without writing into it: a temp tree links to its files and gets the output.
 */
async function depmodInto(modulesDir: string, kver: string): Promise<{ dep: string; alias?: string; softdep?: string }> {
  const base = await mkdtemp(path.join(os.tmpdir(), 'sb-depmod-'));
  try {
    const kd = path.join(base, 'lib', 'modules', kver);
    await makeDir(kd);
    for (const e of await readdir(modulesDir)) {
      // depmod rewrites the modules.* files: copy those, link the module trees
      if (e.startsWith('modules.')) {
        if (e === 'modules.builtin' || e === 'modules.order' || e === 'modules.builtin.modinfo') await copyFile(path.join(modulesDir, e), path.join(kd, e));
      } else await symlink(path.join(modulesDir, e), path.join(kd, e));
    }
    await run('depmod', ['-b', base, kver]);
    return {
      dep: (await readOpt(path.join(kd, 'modules.dep'))) ?? '',
      alias: await readOpt(path.join(kd, 'modules.alias')),
      softdep: await readOpt(path.join(kd, 'modules.softdep')),
    };
  } finally {
    await rm(base, { recursive: true, force: true });
  }
}

/** Loads the module index of a kernel modules dir (`lib/modules/<kver>`, or its parent with one kernel). */
export async function loadModuleIndex(modulesDir: string): Promise<{ dir: string; kver: string; index: ModuleIndex }> {
  const { dir, kver } = await findModulesDir(modulesDir);
  let dep = await readOpt(path.join(dir, 'modules.dep'));
  let alias = await readOpt(path.join(dir, 'modules.alias'));
  let softdep = await readOpt(path.join(dir, 'modules.softdep'));
  if (dep === undefined) {
    const r = await depmodInto(dir, kver);
    dep = r.dep;
    alias = r.alias;
    softdep = r.softdep;
  }
  const builtin = await readOpt(path.join(dir, 'modules.builtin'));
  return { dir, kver, index: buildModuleIndex({ dep, builtin, alias, softdep }) };
}
