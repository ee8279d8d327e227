/**
 * The manifest format (pure). Line-based so busybox sh can read it at boot:
 *
 *   stackboot-manifest 1
 *   name demo
 *   version 2026.11.1
 *   compatible stackboot-demo
 *   created 0
 *   compression zstd
 *   layer sha256:<hex> <bytes> <name>
 *
 * The stack id is the sha256 of the manifest bytes. Layers are listed bottom first.
 */
import { createHash } from 'node:crypto';
import { StackbootError } from '../sys/index.js';

export const MANIFEST_MAGIC = 'stackboot-manifest 1';

export interface LayerRef {
  /** lowercase hex sha256 of the squashfs file */
  digest: string;
  size: number;
  name: string;
}

export interface Manifest {
  name: string;
  version: string;
  compatible: string;
  created: number;
  compression?: string;
  layers: LayerRef[];
  /** Unknown keys, kept in order so that a round trip keeps the stack id. */
  extra?: [string, string][];
}

export const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const VALUE_RE = /^[^\s][^\n\r]*$/;

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
  for (const [k, v] of m.extra ?? []) lines.push(`${k} ${v}`);
  const seen = new Set<string>();
  for (const l of m.layers) {
    if (!HEX64.test(l.digest)) bad(`layer ${l.name}: digest must be 64 lowercase hex chars`);
    if (!NAME_RE.test(l.name)) bad(`layer name ${JSON.stringify(l.name)} must match ${NAME_RE}`);
    if (!Number.isSafeInteger(l.size) || l.size <= 0) bad(`layer ${l.name}: size must be a positive integer`);
    if (seen.has(l.name)) bad(`layer name ${l.name} appears twice`);
    seen.add(l.name);
    lines.push(`layer sha256:${l.digest} ${l.size} ${l.name}`);
  }
  return lines.join('\n') + '\n';
}

export function parseManifest(text: string): Manifest {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  if (lines[0] !== MANIFEST_MAGIC) bad(`not a stackboot manifest (first line must be "${MANIFEST_MAGIC}")`);
  const m: Partial<Manifest> & { layers: LayerRef[]; extra: [string, string][] } = { layers: [], extra: [] };
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
      default:
        m.extra.push([key, value]);
    }
  }
  for (const k of ['name', 'version', 'compatible'] as const) if (!m[k]) bad(`missing "${k}"`);
  if (m.created === undefined) bad('missing "created"');
  if (m.layers.length === 0) bad('no layers');
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
