/**
 * Recipes: `images/<name>/recipe.json`. Parsed and validated here (pure but for reading
 * the file). Every error names the file, the field and what was expected.
 *
 * {
 *   "name": "demo", "version": "1.0.0", "compatible": "stackboot-demo",
 *   "compression": { "algorithm": "zstd", "level": 3 },   // zstd|xz|gzip|lz4|lzo
 *   "blockSize": 131072,
 *   "layers": [
 *     { "name": "base", "source": { "type": "dir", "path": "rootfs" }, "owner": "root" },
 *     { "name": "app",  "source": { "type": "tar", "path": "app.tar.zst" } },
 *     { "name": "img",  "source": { "type": "oci", "path": "image.tar" } },
 *     { "name": "tagd", "source": { "type": "oci", "path": "layout", "ref": "v2" } },  // tag or sha256: digest
 *     { "name": "pkgs", "source": { "type": "run", "command": "apt-get install -y curl" } }
 *   ],
 *   "boot": { "TRIES": "3", "VERIFY": "size" },
 *   "kernel": { "path": "/boot/vmlinuz-6.12.48+deb12-amd64" }   // optional: the stack's own kernel
 * }
 *
 * `kernel` (docs/recipes.md "The stack's own kernel"): `path` of the kernel file in the
 * stack's merged root, `release` (default from the file name vmlinuz-<release>), `fdt`
 * (a device tree file in the stack, arm64), `modules` (extra modules for its initrd).
 *
 * Strings may use ${arch} (the target architecture, amd64|arm64) and ${recipeDir}.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError } from '../sys/index.js';
import { NAME_RE } from '../format/index.js';
import { BOOT_CONFIG_KEYS, defaultBootConfig, setBootConfigValue } from '../boot/index.js';

export type Compressor = 'zstd' | 'xz' | 'gzip' | 'lz4' | 'lzo';
export const COMPRESSORS: Compressor[] = ['zstd', 'xz', 'gzip', 'lz4', 'lzo'];

export interface Compression {
  algorithm: Compressor;
  /** compressor level (zstd 1-22, xz 0-9, gzip 1-9); undefined for lz4/lzo */
  level?: number;
}

export type Source =
  | { type: 'dir'; path: string; into?: string }
  | { type: 'tar'; path: string }
  /** ref: the image of a layout with several, by tag (org.opencontainers.image.ref.name) or digest */
  | { type: 'oci'; path: string; ref?: string }
  | { type: 'run'; command: string; env?: Record<string, string> };

export interface LayerSpec {
  name: string;
  source: Source;
  /** "keep": uid/gid from the source; "root": everything owned by 0:0 */
  owner: 'keep' | 'root';
  /** allow device nodes other than whiteouts in this layer */
  devices: boolean;
}

/** The stack's own kernel (booted with kexec when it is not the running one). */
export interface KernelSpec {
  /** absolute path of the kernel file in the stack's merged root */
  path: string;
  /** `uname -r` of that kernel (default: from the file name) */
  release?: string;
  /** absolute path of a device tree file in the stack */
  fdt?: string;
  /** modules added to its initrd's defaults */
  modules: string[];
}

export interface Recipe {
  file: string;
  dir: string;
  name: string;
  version: string;
  compatible: string;
  compression: Compression;
  blockSize: number;
  layers: LayerSpec[];
  boot: Record<string, string>;
  kernel?: KernelSpec;
}

const LEVELS: Record<Compressor, [number, number] | null> = {
  zstd: [1, 22],
  xz: [0, 9],
  gzip: [1, 9],
  lz4: null,
  lzo: null,
};

class Checker {
  constructor(readonly file: string) {}
  fail(field: string, expected: string, got?: unknown): never {
    const g = got === undefined ? '' : `, got ${JSON.stringify(got)}`;
    throw new StackbootError('RECIPE', `${this.file}: ${field}: expected ${expected}${g}`);
  }
  obj(v: unknown, field: string): Record<string, unknown> {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(field, 'an object', v);
    return v as Record<string, unknown>;
  }
  str(v: unknown, field: string, re?: RegExp, what = 'a string'): string {
    if (v === undefined) throw new StackbootError('RECIPE', `${this.file}: ${field}: the field is missing (expected ${what})`);
    if (typeof v !== 'string' || v.length === 0) this.fail(field, what, v);
    if (re && !re.test(v)) this.fail(field, what, v);
    return v;
  }
  keys(o: Record<string, unknown>, field: string, allowed: string[]): void {
    for (const k of Object.keys(o)) if (!allowed.includes(k)) this.fail(`${field}.${k}`, `one of the keys ${allowed.join(', ')} (unknown key)`);
  }
}

const WORD = /^[^\s]+$/;

export function parseRecipe(text: string, file: string, vars: Record<string, string> = {}): Recipe {
  const c = new Checker(file);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new StackbootError('RECIPE', `${file}: not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  const dir = path.dirname(path.resolve(file));
  const allVars: Record<string, string> = { recipeDir: dir, ...vars };
  const subst = (s: string, field: string): string =>
    s.replace(/\$\{(\w+)\}/g, (_, k: string) => {
      if (!(k in allVars)) c.fail(field, `a known variable (${Object.keys(allVars).join(', ')})`, `\${${k}}`);
      return allVars[k];
    });
  const r = c.obj(raw, '(top level)');
  c.keys(r, '(top level)', ['name', 'version', 'compatible', 'compression', 'blockSize', 'layers', 'boot', 'kernel', 'description']);
  const name = c.str(r.name, 'name', NAME_RE, 'a name of letters, digits, ".", "_" or "-" (at most 64)');
  const version = c.str(r.version, 'version', WORD, 'a version without spaces');
  const compatible = c.str(r.compatible, 'compatible', WORD, 'a compatible string without spaces');

  let compression: Compression = { algorithm: 'zstd', level: 3 };
  if (r.compression !== undefined) {
    const co = c.obj(r.compression, 'compression');
    c.keys(co, 'compression', ['algorithm', 'level']);
    const alg = co.algorithm ?? 'zstd';
    if (!COMPRESSORS.includes(alg as Compressor)) c.fail('compression.algorithm', `one of ${COMPRESSORS.join(', ')}`, alg);
    const range = LEVELS[alg as Compressor];
    let level: number | undefined;
    if (co.level !== undefined) {
      if (!range) return c.fail('compression.level', `no level for ${alg}`, co.level);
      if (!Number.isInteger(co.level) || (co.level as number) < range[0] || (co.level as number) > range[1]) c.fail('compression.level', `an integer from ${range[0]} to ${range[1]}`, co.level);
      level = co.level as number;
    } else if (alg === 'zstd') level = 3;
    compression = { algorithm: alg as Compressor, level };
  }

  let blockSize = 131072;
  if (r.blockSize !== undefined) {
    const b = r.blockSize;
    if (!Number.isInteger(b) || (b as number) < 4096 || (b as number) > 1048576 || ((b as number) & ((b as number) - 1)) !== 0) c.fail('blockSize', 'a power of two from 4096 to 1048576', b);
    blockSize = b as number;
  }

  if (!Array.isArray(r.layers) || r.layers.length === 0) c.fail('layers', 'a non-empty array of layers', r.layers);
  const names = new Set<string>();
  const layers: LayerSpec[] = (r.layers as unknown[]).map((lv, i) => {
    const f = `layers[${i}]`;
    const l = c.obj(lv, f);
    c.keys(l, f, ['name', 'source', 'owner', 'devices', 'description']);
    const lname = c.str(l.name, `${f}.name`, NAME_RE, 'a layer name of letters, digits, ".", "_" or "-" (at most 64)');
    if (names.has(lname)) c.fail(`${f}.name`, 'a name not used by another layer', lname);
    names.add(lname);
    const s = c.obj(l.source, `${f}.source`);
    const type = s.type;
    let source!: Source;
    switch (type) {
      case 'dir':
      case 'tar':
      case 'oci': {
        c.keys(s, `${f}.source`, type === 'dir' ? ['type', 'path', 'into'] : type === 'oci' ? ['type', 'path', 'ref'] : ['type', 'path']);
        const p = subst(c.str(s.path, `${f}.source.path`), `${f}.source.path`);
        source = { type, path: path.resolve(dir, p) };
        if (type === 'dir' && s.into !== undefined) {
          const into = c.str(s.into, `${f}.source.into`, /^[A-Za-z0-9._+-]+(\/[A-Za-z0-9._+-]+)*$/, 'a relative path inside the layer, like "usr/lib/app"');
          if (into.split('/').some((x) => x === '..' || x === '.')) c.fail(`${f}.source.into`, 'a path without "." or ".." parts', into);
          source = { type: 'dir', path: path.resolve(dir, p), into };
        }
        if (type === 'oci' && s.ref !== undefined) source = { type, path: path.resolve(dir, p), ref: subst(c.str(s.ref, `${f}.source.ref`, WORD, 'a tag or a sha256:<digest> without spaces'), `${f}.source.ref`) };
        break;
      }
      case 'run': {
        c.keys(s, `${f}.source`, ['type', 'command', 'env']);
        const command = subst(c.str(s.command, `${f}.source.command`), `${f}.source.command`);
        let env: Record<string, string> | undefined;
        if (s.env !== undefined) {
          const e = c.obj(s.env, `${f}.source.env`);
          env = {};
          for (const [k, v] of Object.entries(e)) env[k] = subst(c.str(v, `${f}.source.env.${k}`), `${f}.source.env.${k}`);
        }
        if (i === 0) c.fail(`${f}.source`, 'a run source above at least one other layer (it runs over the lower layers)', 'run');
        source = { type: 'run', command, env };
        break;
      }
      default:
        c.fail(`${f}.source.type`, 'one of dir, tar, oci, run', type);
    }
    const owner = l.owner ?? 'keep';
    if (owner !== 'keep' && owner !== 'root') c.fail(`${f}.owner`, '"keep" or "root"', owner);
    const devices = l.devices ?? false;
    if (typeof devices !== 'boolean') c.fail(`${f}.devices`, 'true or false', devices);
    return { name: lname, source, owner: owner as 'keep' | 'root', devices: devices as boolean };
  });

  // an OCI source of several layers names them <name>-1, <name>-2, …: no other layer may
  // take such a name (caught here, not after every layer was compressed)
  layers.forEach((l, i) => {
    const m = /^(.+)-[1-9][0-9]*$/.exec(l.name);
    const oci = m ? layers.find((o) => o.source.type === 'oci' && o.name === m[1]) : undefined;
    if (oci) c.fail(`layers[${i}].name`, `a name other than ${oci.name}-<number> (the OCI layer ${oci.name} names its image's layers ${oci.name}-1, ${oci.name}-2, …)`, l.name);
  });

  const boot: Record<string, string> = {};
  if (r.boot !== undefined) {
    const b = c.obj(r.boot, 'boot');
    // checked by the boot config's own validator: a bad value fails the build, not a
    // later `image --recipe`
    const check = defaultBootConfig();
    for (const [k, v] of Object.entries(b)) {
      if (!(BOOT_CONFIG_KEYS as readonly string[]).includes(k)) c.fail(`boot.${k}`, `a boot config key (${BOOT_CONFIG_KEYS.join(', ')})`);
      if (typeof v !== 'string' && typeof v !== 'number') c.fail(`boot.${k}`, 'a string or number', v);
      try {
        setBootConfigValue(check, k, String(v));
      } catch (e) {
        throw new StackbootError('RECIPE', `${file}: boot.${k}: ${(e as Error).message.replace(/^boot config [A-Z0-9_]+=.* is invalid: /, 'expected ')}, got ${JSON.stringify(v)}`, { cause: e });
      }
      boot[k] = String(v);
    }
  }
  let kernel: KernelSpec | undefined;
  if (r.kernel !== undefined) {
    const k = c.obj(r.kernel, 'kernel');
    c.keys(k, 'kernel', ['path', 'release', 'fdt', 'modules']);
    const abs = /^(\/[A-Za-z0-9._+@-]+)+$/;
    const absPath = (v: unknown, field: string) => {
      const p = c.str(v, field, abs, 'an absolute path in the stack without spaces, like "/boot/vmlinuz-6.12.48+deb12-amd64"');
      if (p.split('/').includes('..')) c.fail(field, 'a path without ".." parts', p);
      return p;
    };
    kernel = { path: absPath(k.path, 'kernel.path'), modules: [] };
    if (k.release !== undefined) kernel.release = c.str(k.release, 'kernel.release', /^[A-Za-z0-9._+~-]{1,64}$/, 'a kernel release as uname -r prints it');
    if (k.fdt !== undefined) kernel.fdt = absPath(k.fdt, 'kernel.fdt');
    if (k.modules !== undefined) {
      if (!Array.isArray(k.modules)) c.fail('kernel.modules', 'an array of module names', k.modules);
      kernel.modules = (k.modules as unknown[]).map((m, i) => c.str(m, `kernel.modules[${i}]`, /^[A-Za-z0-9_-]+$/, 'a kernel module name'));
    }
    const clash = layers.findIndex((l) => l.name === 'initrd');
    if (clash >= 0) c.fail(`layers[${clash}].name`, 'a name other than "initrd" (a recipe with a kernel gets a layer of that name: its initrd)', 'initrd');
  }
  return { file, dir, name, version, compatible, compression, blockSize, layers, boot, ...(kernel ? { kernel } : {}) };
}

/** Loads `<dirOrFile>/recipe.json` (or the file itself). */
export async function loadRecipe(dirOrFile: string, vars: Record<string, string> = {}): Promise<Recipe> {
  let file = dirOrFile;
  const st = await fs.stat(dirOrFile).catch((e) => {
    throw new StackbootError('RECIPE', `no recipe at ${dirOrFile}`, { cause: e });
  });
  if (st.isDirectory()) file = path.join(dirOrFile, 'recipe.json');
  const text = await fs.readFile(file, 'utf8').catch((e) => {
    throw new StackbootError('RECIPE', `cannot read recipe ${file}`, { cause: e });
  });
  return parseRecipe(text, file, vars);
}
