/**
 * Chunk deltas through the CLI as users run it (dist/stackboot.cjs from `npm run build`):
 * `build --chunks` (real gensquashfs) writes the indexes, the frame deltas and the
 * manifest's chunks and frames lines,
 * `bundle --chunks` leaves the chunked layers out (with `--base`, carries only the missing
 * chunks), `install --chunks-from` rebuilds the
 * changed layer from the store and a static HTTP server, --dry-run and --json say what
 * the node has and fetches.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/sys/exec.js';
import { parseManifest } from '../../src/format/manifest.js';
import { chunkIndexRefs } from '../../src/format/chunks.js';
import { framesRefs } from '../../src/format/frames.js';
import { stageStore } from '../../src/format/store.js';
import { chunkServer } from '../support/chunk-fixtures.js';
import { keys, layerBytes, sha256Of } from '../support/update-fixtures.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist/stackboot.cjs');
let work: string;
const sb = (args: string[]) => run('node', [CLI, ...args], { reject: false, cwd: work, env: { SOURCE_DATE_EPOCH: '0' } });

/** A tree of 300 files (text-like, 2–40 KiB); `changed` of them rewritten. */
async function tree(dir: string, changed: number[]): Promise<void> {
  for (let i = 0; i < 300; i++) {
    const d = path.join(dir, `d${i % 10}`);
    await fs.mkdir(d, { recursive: true });
    const body = layerBytes(2048 + ((i * 7919) % 40_000), `file-${i}${changed.includes(i) ? '-v2' : ''}`).toString('base64');
    await fs.writeFile(path.join(d, `f${i}.txt`), body);
  }
}

async function build(name: string, version: string, changed: number[]): Promise<string> {
  const t = path.join(work, `${name}-tree`);
  await tree(t, changed);
  const recipe = path.join(work, `${name}.json`);
  await fs.writeFile(recipe, JSON.stringify({ name: 'cli-chunks', version, compatible: 'cli-chunks', layers: [{ name: 'base', source: { type: 'dir', path: t } }] }));
  const out = path.join(work, name);
  const r = await sb(['build', recipe, '-o', out, '--no-cache', '--chunks']);
  expect(r.exitCode, r.stderr).toBe(0);
  return out;
}

beforeAll(async () => {
  expect(existsSync(CLI), 'dist/stackboot.cjs (npm run build)').toBe(true);
  work = await fs.mkdtemp(path.join(tmpdir(), 'sb-cli-chunks-'));
});
afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true });
});

describe('chunk deltas through the CLI', () => {
  it('build --chunks, bundle --chunks, install --chunks-from (dry run, then for real)', async () => {
    const k = await keys(work);
    const v1 = await build('v1', '1', []);
    const v2 = await build('v2', '2', [17, 150]);
    const m2 = parseManifest(await fs.readFile(path.join(v2, 'manifest'), 'utf8'));
    const layer = m2.layers[0];
    const ref = chunkIndexRefs(m2).get(layer.digest)!;
    expect(await sha256Of(path.join(v2, 'layers', `${layer.digest}.chunks`))).toBe(ref.digest);
    // and its frame deltas (a zstd layer)
    const frames = framesRefs(m2).get(layer.digest)!;
    expect(await sha256Of(path.join(v2, 'layers', `${layer.digest}.frames`))).toBe(frames.digest);
    expect(existsSync(path.join(v2, 'layers', `${layer.digest}.delta`))).toBe(true);

    const head = path.join(work, 'v2.head');
    const b = await sb(['bundle', v2, '-o', head, '--chunks', '--key', k.key, '--json']);
    expect(b.exitCode, b.stderr).toBe(0);
    expect(JSON.parse(b.stdout).carried).toEqual([]);

    const store = await stageStore(path.join(work, 'store'), { slots: { a: { buildDir: v1, status: 'good' } } });
    const srv = await chunkServer(v2);
    try {
      const args = ['install', head, '--store', store.dir, '--booted-slot', 'a', '--keys', k.keysDir, '--chunks-from', srv.url];
      const dry = await sb([...args, '--dry-run']);
      expect(dry.exitCode, dry.stderr).toBe(0);
      expect(dry.stdout).toMatch(/layer base [0-9a-f]{12} from chunks: .* in the store, .* to fetch \(\d+\.\d %\)/);
      expect(await fs.stat(store.layerPath(layer.digest)).catch(() => null)).toBeNull();

      const r = await sb([...args, '--json']);
      expect(r.exitCode, r.stderr).toBe(0);
      const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
      const plan = events.find((e) => e.event === 'chunks' && e.fetched === undefined);
      const done = events.find((e) => e.event === 'chunks' && e.fetched !== undefined);
      // what the node has, rebuilds and fetches covers the layer; the indexes come on top
      expect(plan.had + plan.fetch).toBeGreaterThanOrEqual(layer.size + ref.size);
      expect(done.fetched).toBe(plan.fetch);
      expect(done.fetched).toBeLessThan(layer.size / 2);
      expect(events.at(-1)).toMatchObject({ event: 'result', installed: true, slot: 'b' });
      expect(await sha256Of(store.layerPath(layer.digest))).toBe(layer.digest);
    } finally {
      await srv.close();
    }
  }, 180_000);

  it('bundle --base <old build> --chunks carries only the missing chunks; install needs no server', async () => {
    const k = await keys(work, 'third');
    const v1 = path.join(work, 'v1');
    const v4 = await build('v4', '4', [42]);
    const file = path.join(work, 'v4.chunks');
    const b = await sb(['bundle', v4, '-o', file, '--base', v1, '--chunks', '--key', k.key, '--json']);
    expect(b.exitCode, b.stderr).toBe(0);
    const layer = parseManifest(await fs.readFile(path.join(v4, 'manifest'), 'utf8')).layers[0];
    expect(JSON.parse(b.stdout).bytes).toBeLessThan(layer.size / 2);
    const store = await stageStore(path.join(work, 'store4'), { slots: { a: { buildDir: v1, status: 'good' } } });
    const r = await sb(['install', file, '--store', store.dir, '--booted-slot', 'a', '--keys', k.keysDir]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(await sha256Of(store.layerPath(layer.digest))).toBe(layer.digest);
  }, 180_000);

  it('without --chunks-from, a bundle without its chunked layers is a delta whose base the store lacks', async () => {
    const k = await keys(work, 'other');
    const v3 = await build('v3', '3', [5]);
    const head = path.join(work, 'v3.head');
    expect((await sb(['bundle', v3, '-o', head, '--chunks', '--key', k.key])).exitCode).toBe(0);
    const store = await stageStore(path.join(work, 'store3'), { slots: { a: { buildDir: path.join(work, 'v1'), status: 'good' } } });
    const r = await sb(['install', head, '--store', store.dir, '--booted-slot', 'a', '--keys', k.keysDir]);
    expect(r.stderr).toMatch(/MISSING_LAYERS|lacks/);
    expect(r.exitCode).not.toBe(0);
  }, 180_000);
});
