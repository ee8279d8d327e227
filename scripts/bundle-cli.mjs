// Bundles the CLI (dist/ from tsc) and its runtime dependencies into one ES module,
// dist/stackboot.mjs, with esbuild. Node 20 loads one file several times faster than the
// ~400 module files of yargs, execa, tar and handlebars (0.1 s instead of 0.3 s to start,
// ~10 MiB less memory), which every command pays, under QEMU TCG on a node most of all.
// Lazily imported command modules stay lazily evaluated inside the bundle.
//
//   node scripts/bundle-cli.mjs [ENTRY [OUTFILE]]
// defaults: dist/cli/main.js (tsc's output) -> dist/stackboot.mjs. esbuild also takes the
// TypeScript entry src/cli/main.ts directly (scripts/guest-node-tree.sh does).
import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { version } = JSON.parse(readFileSync(path.join(repo, 'package.json'), 'utf8'));
await build({
  absWorkingDir: repo,
  entryPoints: [process.argv[2] ?? 'dist/cli/main.js'],
  outfile: process.argv[3] ?? 'dist/stackboot.mjs',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  define: { __STACKBOOT_VERSION__: JSON.stringify(version) },
  // CommonJS dependencies (cross-spawn, handlebars) call require() for Node built-ins
  banner: { js: "import { createRequire as __sbRequire } from 'node:module';\nconst require = __sbRequire(import.meta.url);" },
  legalComments: 'none',
  logLevel: 'warning',
  // handlebars' index.js registers a require.extensions hook we never use
  logOverride: { 'unsupported-require-call': 'silent' },
});
