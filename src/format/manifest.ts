/**
 * The manifest format (pure). Line-based so busybox sh can read it at boot:
 *
 *   stackboot-manifest 1
 *   name demo
 *   version 2026.11.1
 *   compatible stackboot-demo
 *   created 0
 *   compression zstd
 *   kernel <release> <path> sha256:<hex> <bytes>     (optional: the stack's own kernel)
 *   initrd <path> sha256:<hex> <bytes>               (with kernel: the initrd made for it)
 *   fdt <path> sha256:<hex> <bytes>                  (optional: the device tree, arm64)
 *   layer sha256:<hex> <bytes> <name>
 *   verity <layer-hex> <root-hex> <salt-hex> <data-bytes> <hash-offset>   (dm-verity; all layers or none)
 *
 * The stack id is the sha256 of the manifest bytes. Layers are listed bottom first. The
 * boot files' paths are absolute paths in the stack's merged root: the hook reads them
 * from the mounted overlay and checks each against its digest before a kexec.
 */
import { createHash } from 'node:crypto';
import { StackbootError } from '../sys/index.js';
import { VERITY_BLOCK } from './verity-tree.js';

export const MANIFEST_MAGIC = 'stackboot-manifest 1';

export interface LayerRef {
  /** lowercase hex sha256 of the squashfs file */
  digest: string;
  size: number;
  name: string;
  /** the layer's dm-verity hash tree (docs/PROTOCOL.md "Verity") */
  verity?: LayerVerity;
}

/** Where a layer's data ends and its appended hash tree starts, and the tree's root. */
export interface LayerVerity {
  /** lowercase hex sha256 root hash */
  root: string;
  /** lowercase hex salt */
  salt: string;
  /** squashfs data bytes, a positive multiple of 4096 */
  dataBytes: number;
  /** byte offset of the hash tree in the layer file, a multiple of 4096, >= dataBytes */
  hashOffset: number;
}

/** A file of the stack's merged root that the boot uses (kernel, initrd, device tree). */
export interface BootFile {
  /** absolute path inside the stack's root, e.g. /boot/vmlinuz-6.12.48+deb12-amd64 */
  path: string;
  digest: string;
  size: number;
}

/** The stack's own kernel: its release (`uname -r`) and file. */
export interface KernelRef extends BootFile {
  release: string;
}

export interface Manifest {
  name: string;
  version: string;
  compatible: string;
  created: number;
  compression?: string;
  /** the stack's own kernel; without it the stack runs on the boot partition's kernel */
  kernel?: KernelRef;
  /** the initrd for `kernel` (required with it) */
  initrd?: BootFile;
  /** the device tree for `kernel` (arm64 boards) */
  fdt?: BootFile;
  layers: LayerRef[];
  /** Unknown keys, kept in order so that a round trip keeps the stack id. */
  extra?: [string, string][];
}

export const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const VALUE_RE = /^[^\s][^\n\r]*$/;
/** an absolute path of plain characters: no spaces, no `..`, no `//` (the hook reads it with `read`) */
const BOOT_PATH_RE = /^(\/[A-Za-z0-9._+@-]+)+$/;
/** a kernel release as `uname -r` prints it */
const RELEASE_RE = /^[A-Za-z0-9._+~-]{1,64}$/;

function bad(msg: string, line?: number): never {
  throw new StackbootError('MANIFEST', line === undefined ? msg : `manifest line ${line}: ${msg}`);
}

export function checkValue(field: string, v: string): void {
  if (!VALUE_RE.test(v) || /\s/.test(v)) bad(`${field} must be one word without spaces or newlines, got ${JSON.stringify(v)}`);
}

export function serializeManifest(m: Manifest): string {
  checkValue('name', m.name);
  checkValue('version', m.version);
  checkValue('compatible', m.compatible);
  if (!Number.isInteger(m.created) || m.created < 0) bad(`created must be a non-negative integer`);
  if (m.layers.length === 0) bad('a stack needs at least one layer');
  const lines = [MANIFEST_MAGIC, `name ${m.name}`, `version ${m.version}`, `compatible ${m.compatible}`, `created ${m.created}`];
  if (m.compression) {
    checkValue('compression', m.compression);
    lines.push(`compression ${m.compression}`);
  }
  if (m.initrd && !m.kernel) bad('an initrd needs a kernel');
  if (m.fdt && !m.kernel) bad('a device tree needs a kernel');
  if (m.kernel && !m.initrd) bad('a kernel needs its initrd');
  if (m.kernel) {
    if (!RELEASE_RE.test(m.kernel.release)) bad(`kernel release ${JSON.stringify(m.kernel.release)} must match ${RELEASE_RE}`);
    lines.push(`kernel ${m.kernel.release} ${bootFileText('kernel', m.kernel)}`);
  }
  if (m.initrd) lines.push(`initrd ${bootFileText('initrd', m.initrd)}`);
  if (m.fdt) lines.push(`fdt ${bootFileText('fdt', m.fdt)}`);
  for (const [k, v] of m.extra ?? []) lines.push(`${k} ${v}`);
  const seen = new Set<string>();
  for (const l of m.layers) {
    if (!HEX64.test(l.digest)) bad(`layer ${l.name}: digest must be 64 lowercase hex chars`);
    if (!NAME_RE.test(l.name)) bad(`layer name ${JSON.stringify(l.name)} must match ${NAME_RE}`);
    if (!Number.isSafeInteger(l.size) || l.size <= 0) bad(`layer ${l.name}: size must be a positive integer`);
    if (seen.has(l.name)) bad(`layer name ${l.name} appears twice`);
    seen.add(l.name);
    lines.push(`layer sha256:${l.digest} ${l.size} ${l.name}`);
    // one verity line per layer file (two layers may be the same file)
    if (l.verity && !lines.some((x) => x.startsWith(`verity ${l.digest} `))) lines.push(verityText(l));
  }
  const withVerity = m.layers.filter((l) => l.verity).length;
  if (withVerity !== 0 && withVerity !== m.layers.length) bad(`verity data for ${withVerity} of ${m.layers.length} layers: all or none`);
  return lines.join('\n') + '\n';
}

function bootFileText(what: string, f: BootFile): string {
  if (!BOOT_PATH_RE.test(f.path) || f.path.split('/').includes('..')) bad(`${what} path ${JSON.stringify(f.path)} must be an absolute path without spaces or ..`);
  if (!HEX64.test(f.digest)) bad(`${what}: digest must be 64 lowercase hex chars`);
  if (!Number.isSafeInteger(f.size) || f.size <= 0) bad(`${what}: size must be a positive integer`);
  return `${f.path} sha256:${f.digest} ${f.size}`;
}

const SALT_RE = /^(?:[0-9a-f]{2}){1,128}$/;

function verityText(l: LayerRef): string {
  const v = l.verity!;
  checkVerity(l.name, l.size, v, bad);
  return `verity ${l.digest} ${v.root} ${v.salt} ${v.dataBytes} ${v.hashOffset}`;
}

/** The checks the boot makes too (initramfs/verity.sh): lengths, block multiples, the tree inside the file. */
function checkVerity(name: string, size: number, v: LayerVerity, fail: (msg: string) => never): void {
  if (!HEX64.test(v.root)) fail(`layer ${name}: verity root must be 64 lowercase hex chars`);
  if (!SALT_RE.test(v.salt)) fail(`layer ${name}: verity salt must be 2 to 256 lowercase hex chars`);
  if (!Number.isSafeInteger(v.dataBytes) || v.dataBytes <= 0 || v.dataBytes % VERITY_BLOCK !== 0) fail(`layer ${name}: verity data size ${v.dataBytes} is not a positive multiple of ${VERITY_BLOCK}`);
  if (!Number.isSafeInteger(v.hashOffset) || v.hashOffset % VERITY_BLOCK !== 0 || v.hashOffset < v.dataBytes) fail(`layer ${name}: verity hash offset ${v.hashOffset} must be a multiple of ${VERITY_BLOCK} at or past the data`);
  // one data block has no tree (its hash is the root): only then may the tree end the file
  if (v.hashOffset > size || (v.hashOffset === size && v.dataBytes !== VERITY_BLOCK)) fail(`layer ${name}: verity hash offset ${v.hashOffset} is past the end of the ${size}-byte file`);
}

/** Parses "<path> sha256:<hex> <bytes>" (the tail of a kernel, initrd or fdt line). */
function parseBootFile(what: string, words: string[], line: number): BootFile {
  if (words.length !== 3) bad(`expected "${what} ${what === 'kernel' ? '<release> ' : ''}<path> sha256:<hex> <bytes>"`, line);
  const [p, d, s] = words;
  if (!BOOT_PATH_RE.test(p) || p.split('/').includes('..')) bad(`bad ${what} path ${JSON.stringify(p)}`, line);
  if (!d.startsWith('sha256:') || !HEX64.test(d.slice(7))) bad(`bad ${what} digest ${JSON.stringify(d)}`, line);
  if (!/^\d+$/.test(s) || Number(s) <= 0 || !Number.isSafeInteger(Number(s))) bad(`bad ${what} size ${JSON.stringify(s)}`, line);
  return { path: p, digest: d.slice(7), size: Number(s) };
}

export function parseManifest(text: string): Manifest {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  if (lines[0] !== MANIFEST_MAGIC) bad(`not a stackboot manifest (first line must be "${MANIFEST_MAGIC}")`);
  const m: Partial<Manifest> & { layers: LayerRef[]; extra: [string, string][] } = { layers: [], extra: [] };
  const verity = new Map<string, { v: LayerVerity; line: number }>();
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const sp = line.indexOf(' ');
    if (sp <= 0) bad(`expected "key value", got ${JSON.stringify(line)}`, i + 1);
    const key = line.slice(0, sp);
    const value = line.slice(sp + 1);
    switch (key) {
      case 'name':
      case 'version':
      case 'compatible':
      case 'compression':
        m[key] = value;
        break;
      case 'created': {
        if (!/^\d+$/.test(value)) bad('created must be an integer', i + 1);
        m.created = Number(value);
        break;
      }
      case 'kernel': {
        if (m.kernel) bad('a second kernel line', i + 1);
        const [release = '', ...rest] = value.split(' ');
        if (!RELEASE_RE.test(release)) bad(`bad kernel release ${JSON.stringify(release)}`, i + 1);
        m.kernel = { release, ...parseBootFile('kernel', rest, i + 1) };
        break;
      }
      case 'initrd':
      case 'fdt': {
        if (m[key]) bad(`a second ${key} line`, i + 1);
        m[key] = parseBootFile(key, value.split(' '), i + 1);
        break;
      }
      case 'layer': {
        const parts = value.split(' ');
        if (parts.length !== 3) bad('expected "layer sha256:<hex> <bytes> <name>"', i + 1);
        const [d, s, name] = parts;
        if (!d.startsWith('sha256:') || !HEX64.test(d.slice(7))) bad(`bad layer digest ${JSON.stringify(d)}`, i + 1);
        if (!/^\d+$/.test(s)) bad(`bad layer size ${JSON.stringify(s)}`, i + 1);
        if (!NAME_RE.test(name)) bad(`bad layer name ${JSON.stringify(name)}`, i + 1);
        m.layers.push({ digest: d.slice(7), size: Number(s), name });
        break;
      }
      case 'verity': {
        const parts = value.split(' ');
        if (parts.length !== 5) bad('expected "verity <layer-sha256> <root> <salt> <data-bytes> <hash-offset>"', i + 1);
        const [d, root, salt, data, off] = parts;
        if (!HEX64.test(d)) bad(`bad verity layer digest ${JSON.stringify(d)}`, i + 1);
        if (verity.has(d)) bad(`a second verity line for layer ${d}`, i + 1);
        if (!/^\d+$/.test(data) || !/^\d+$/.test(off)) bad('verity sizes must be integers', i + 1);
        verity.set(d, { v: { root, salt, dataBytes: Number(data), hashOffset: Number(off) }, line: i + 1 });
        break;
      }
      default:
        m.extra.push([key, value]);
    }
  }
  for (const k of ['name', 'version', 'compatible'] as const) if (!m[k]) bad(`missing "${k}"`);
  if (m.created === undefined) bad('missing "created"');
  if (m.layers.length === 0) bad('no layers');
  if (m.kernel && !m.initrd) bad('a kernel line without an initrd line');
  for (const [d, { v, line }] of verity) {
    const ls = m.layers.filter((x) => x.digest === d);
    if (ls.length === 0) bad(`verity line for ${d.slice(0, 12)}, which is not a layer of the stack`, line);
    for (const l of ls) {
      checkVerity(l.name, l.size, v, (msg) => bad(msg, line));
      l.verity = v;
    }
  }
  const withVerity = m.layers.filter((l) => l.verity).length;
  if (withVerity !== 0 && withVerity !== m.layers.length) bad(`verity lines for ${withVerity} of ${m.layers.length} layers: all or none`);
  if (!m.kernel && (m.initrd || m.fdt)) bad(`an ${m.initrd ? 'initrd' : 'fdt'} line without a kernel line`);
  return m as Manifest;
}

export function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The stack id: sha256 of the manifest bytes. */
export function stackId(manifestText: string | Buffer): string {
  return sha256Hex(manifestText);
}

/** Layers of `m` whose digest is not in `have`. */
export function missingLayers(m: Manifest, have: Iterable<string>): LayerRef[] {
  const s = new Set(have);
  return m.layers.filter((l) => !s.has(l.digest));
}
