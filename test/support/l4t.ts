/**
 * NVIDIA's L4TLauncher (JetPack 5/6's UEFI boot program) reading a boot partition: its own
 * extlinux reader (test/support/l4t/L4TLauncher-extlinux.c, verbatim from edk2-nvidia
 * r36.5.1) compiled for the host against a small EDK2 shim (edk2-shim.h, harness.c). It
 * finds the partition named APP beside the launcher's, opens boot/extlinux/extlinux.conf
 * there and parses it: what it returns is what the launcher would boot.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/sys/index.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SRC = path.join(HERE, 'l4t');
const OUT = path.join(HERE, '..', '..', '.cache', 'l4t');

export interface L4tEntry {
  label: string | null;
  menu: string | null;
  /** as the launcher opens it: backslashes, from the partition's root */
  linux: string | null;
  initrd: string | null;
  fdt: string | null;
  overlays: string | null;
  /** null: the launcher of JetPack 5/6 dereferences it (APPEND is required) */
  append: string | null;
}

export type L4tResult = { ok: false; partition: 0 } | { ok: true; partition: number; timeout: number; title: string | null; default: number; entries: L4tEntry[] };

/** The harness binary, built once per source (gcc, -fshort-wchar for CHAR16 strings). */
export async function l4tLauncher(): Promise<string> {
  const files = ['harness.c', 'edk2-shim.h', 'L4TLauncher-extlinux.c'];
  const h = createHash('sha256');
  for (const f of files) h.update(await fs.readFile(path.join(SRC, f)));
  const bin = path.join(OUT, `l4t-extlinux-${h.digest('hex').slice(0, 12)}`);
  if (await fs.stat(bin).then(() => true, () => false)) return bin;
  await fs.mkdir(OUT, { recursive: true });
  await run('gcc', ['-std=gnu11', '-fshort-wchar', '-O1', '-Wall', '-Werror', '-Wno-unused-function', '-o', `${bin}.tmp`, path.join(SRC, 'harness.c')]);
  await fs.rename(`${bin}.tmp`, bin);
  return bin;
}

/**
 * What L4TLauncher makes of a disk whose GPT partitions are named `names` (in order),
 * loaded from partition `launcher` (1-based), boot chain A or B, where partition
 * `filesPart` holds the files of the folder `dir` (the others are empty).
 */
export async function l4tRead(o: { dir: string; names: string[]; filesPart: number; launcher: number; chain?: 'A' | 'B' }): Promise<L4tResult> {
  const bin = await l4tLauncher();
  const r = await run(bin, [o.dir, String(o.filesPart), String(o.launcher), o.chain === 'B' ? '1' : '0', ...o.names]);
  return JSON.parse(r.stdout) as L4tResult;
}

/** A launcher path (`\vmlinuz-…`) as a path relative to the partition's root. */
export const l4tPath = (p: string): string => p.replace(/^\\+/, '').replaceAll('\\', '/');
