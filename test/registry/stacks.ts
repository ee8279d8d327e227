/**
 * Real stacks for the registry tests, built by the real build code (dir layers through
 * gensquashfs/tar2sqfs) and signed: v1 and v2 share a large base layer and differ in
 * their app layer.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { buildStack } from '../../src/build/stack.js';
import { parseRecipe } from '../../src/build/recipe.js';
import { signManifestFile } from '../../src/format/signature.js';
import { parseManifest, type Manifest } from '../../src/format/manifest.js';
import { keys, layerBytes } from '../support/update-fixtures.js';

export interface BuiltStack {
  dir: string;
  manifest: Manifest;
  text: string;
  sig: string;
}

async function tree(dir: string, files: Record<string, Buffer | string>): Promise<void> {
  for (const [p, data] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(dir, p)), { recursive: true });
    await fs.writeFile(path.join(dir, p), data);
  }
}

export async function buildSigned(work: string, version: string, key: string): Promise<BuiltStack> {
  const src = path.join(work, `src-${version}`);
  // the base is the same in every version (same bytes, same layer digest)
  await tree(path.join(src, 'base'), { 'etc/os-release': 'ID=test\n', 'sbin/init': '#!/bin/sh\n', 'usr/share/blob': layerBytes(6 << 20, 'base') });
  await tree(path.join(src, 'app'), { 'opt/app/version': `${version}\n`, 'opt/app/data': layerBytes(300_000, `app-${version}`) });
  const recipeFile = path.join(src, 'recipe.json');
  await fs.writeFile(recipeFile, JSON.stringify({ name: 'regnode', version, compatible: 'reg-test', layers: [{ name: 'base', source: { type: 'dir', path: 'base' } }, { name: 'app', source: { type: 'dir', path: 'app' } }] }));
  const out = path.join(work, `out-${version}`);
  const recipe = parseRecipe(await fs.readFile(recipeFile, 'utf8'), recipeFile, { arch: 'amd64' });
  await buildStack(recipe, { outDir: out, cacheDir: null, epoch: 0, arch: 'amd64', uid: process.getuid?.(), progress: () => {} });
  await signManifestFile(path.join(out, 'manifest'), key);
  const text = await fs.readFile(path.join(out, 'manifest'), 'utf8');
  return { dir: out, manifest: parseManifest(text), text, sig: await fs.readFile(path.join(out, 'manifest.sig'), 'utf8') };
}

export { keys };
