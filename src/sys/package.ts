/**
 * Where the package's own files are (templates/, initramfs/, .cache/): found from this
 * module's location by walking up to the first folder that holds `initramfs/util.sh`, the
 * boot core. That holds from src/sys/ under tsx, from tsc's dist/sys/, from the bundled
 * dist/stackboot.cjs and from the guest node tree (scripts/guest-node-tree.sh), whose
 * depths differ.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;

/** The package's root folder (the one with initramfs/, templates/, package.json). */
export function packageRoot(): string {
  if (root !== undefined) return root;
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (let d = here, i = 0; i < 4; i++, d = path.dirname(d)) {
    if (existsSync(path.join(d, 'initramfs', 'util.sh'))) return (root = d);
  }
  // not found: the layout of a checkout, so the error names a path a user recognises
  return (root = path.resolve(here, '..', '..'));
}
