/**
 * Fixtures for the update e2e tests: the demo-node stacks (images/demo-node: the demo
 * layers plus the host's Node.js and the real stackboot CLI), signed with a test key that
 * the node trusts (its public half and the node config are the "site" layer).
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/sys/exec.js';
import { loadRecipe, parseRecipe } from '../../src/build/recipe.js';
import { generateKeyPair, signManifestFile } from '../../src/format/signature.js';
import { buildStack, type BuildResult } from '../../src/build/stack.js';
import { CACHE, REPO, WORK } from './fixtures.js';

export const GUEST = path.join(CACHE, 'guest-node', 'amd64');
export const KEY = path.join(CACHE, 'guest-node', 'e2e.key');

let prepared: Promise<void> | null = null;

/** The node tree (Node.js + CLI), the site layer (key, config) and the big app layer. */
export function prepareGuest(): Promise<void> {
  prepared ??= (async () => {
    await fs.mkdir(GUEST, { recursive: true });
    await run('bash', [path.join(REPO, 'scripts', 'guest-node-tree.sh'), path.join(GUEST, 'tree')], { timeout: 300_000 });
    // a stable test key (kept in .cache) so that the site layer stays cached
    if (!(await fs.stat(KEY).then(() => true, () => false))) {
      const kp = generateKeyPair();
      await fs.writeFile(KEY, kp.privatePem, { mode: 0o600 });
      await fs.writeFile(`${KEY}.pub`, kp.publicPem);
    }
    const site = path.join(GUEST, 'site');
    await fs.mkdir(path.join(site, 'etc', 'stackboot', 'keys'), { recursive: true });
    await fs.copyFile(`${KEY}.pub`, path.join(site, 'etc', 'stackboot', 'keys', 'e2e.pub'));
    await fs.writeFile(path.join(site, 'etc', 'stackboot', 'config'), 'STORES=vda\nTRIES=3\nDEVICE_TIMEOUT=5\nKEYS_DIR=/etc/stackboot/keys\n');
    // the big app: incompressible bytes (deterministic), so install takes a while
    const big = path.join(GUEST, 'bigapp');
    await fs.mkdir(path.join(big, 'etc'), { recursive: true });
    await fs.mkdir(path.join(big, 'var', 'lib', 'big'), { recursive: true });
    await fs.writeFile(path.join(big, 'etc', 'os-release'), 'NAME="stackboot demo"\nPRETTY_NAME="stackboot demo 4 (big)"\nID=stackboot-demo\nVERSION_ID=4\n');
    const out = Buffer.alloc(12 << 20);
    let block = createHash('sha256').update('big').digest();
    for (let off = 0; off < out.length; off += 32) {
      block.copy(out, off);
      block = createHash('sha256').update(block).digest();
    }
    await fs.writeFile(path.join(big, 'var', 'lib', 'big', 'blob'), out);
  })();
  return prepared;
}

const built = new Map<string, Promise<BuildResult>>();

export type NodeStackName = 'recipe' | 'update' | 'broken' | 'big';

/** Builds and signs images/demo-node/<name>.json. */
export function nodeStack(name: NodeStackName): Promise<BuildResult> {
  let p = built.get(name);
  if (!p) {
    p = (async () => {
      await prepareGuest();
      const recipe = await loadRecipe(path.join(REPO, 'images', 'demo-node', `${name}.json`), { arch: 'amd64' });
      const r = await buildStack(recipe, {
        outDir: path.join(WORK, 'stacks', `demo-node-${name}`),
        cacheDir: path.join(WORK, 'layer-cache'),
        epoch: 0,
        arch: 'amd64',
        uid: process.getuid?.(),
        progress: () => {},
      });
      await signManifestFile(r.manifestFile, KEY);
      return r;
    })();
    built.set(name, p);
  }
  return p;
}

/**
 * The big node stack twice, both built with chunk indexes (`build --chunks`): v1 as
 * images/demo-node/big.json, v2 the same with its app's 12 MiB blob changed in three
 * 16 KiB places and its version 5 (a chunk delta: a few chunks of the app layer new).
 */
export function chunkedBigStacks(): Promise<{ v1: BuildResult; v2: BuildResult }> {
  chunked ??= (async () => {
    await prepareGuest();
    const file = path.join(REPO, 'images', 'demo-node', 'big.json');
    const app2 = path.join(GUEST, 'bigapp2');
    await fs.rm(app2, { recursive: true, force: true });
    await fs.cp(path.join(GUEST, 'bigapp'), app2, { recursive: true });
    const blob = path.join(app2, 'var', 'lib', 'big', 'blob');
    const fh = await fs.open(blob, 'r+');
    try {
      for (const at of [1 << 20, 5 << 20, 9 << 20]) await fh.write(createHash('sha256').update(`v2 ${at}`).digest().toString('hex').repeat(256), at);
    } finally {
      await fh.close();
    }
    const build = async (name: string, text: string) => {
      const recipe = parseRecipe(text, file, { arch: 'amd64' });
      const r = await buildStack(recipe, { outDir: path.join(WORK, 'stacks', name), cacheDir: path.join(WORK, 'layer-cache'), epoch: 0, arch: 'amd64', uid: process.getuid?.(), chunks: true, progress: () => {} });
      await signManifestFile(r.manifestFile, KEY);
      return r;
    };
    const raw = await fs.readFile(file, 'utf8');
    const j = JSON.parse(raw) as { version: string; layers: { name: string; source: { path: string } }[] };
    j.version = '5';
    j.layers.find((l) => l.name === 'app')!.source.path = app2;
    return { v1: await build('demo-node-big-chunks-1', raw), v2: await build('demo-node-big-chunks-2', JSON.stringify(j)) };
  })();
  return chunked;
}
let chunked: Promise<{ v1: BuildResult; v2: BuildResult }> | null = null;

/** The store partition of an image, mounted read-only on a loop device (a copy: journal replay writes). */
export async function withStoreMounted<T>(img: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const r = await run('sfdisk', ['-J', img]);
  const parts = JSON.parse(r.stdout).partitiontable.partitions as { start: number; size: number; name?: string }[];
  const p = parts.find((x) => x.name === 'sb-store') ?? parts[0];
  const copy = `${img}.check-${process.pid}`;
  const mnt = `${img}.mnt-${process.pid}`;
  await run('cp', ['--sparse=always', img, copy]);
  await fs.mkdir(mnt, { recursive: true });
  try {
    await run('mount', ['-t', 'ext4', '-o', `loop,offset=${p.start * 512},sizelimit=${p.size * 512}`, copy, mnt]);
    try {
      return await fn(mnt);
    } finally {
      await run('umount', [mnt], { reject: false });
    }
  } finally {
    await fs.rm(mnt, { recursive: true, force: true });
    await fs.rm(copy, { force: true });
  }
}
