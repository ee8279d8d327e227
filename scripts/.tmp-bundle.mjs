// Bundles the CLI (dist/ from tsc) and its runtime dependencies into one CommonJS file,
// dist/stackboot.cjs, with esbuild. Node 20 loads one file several times faster than the
// ~400 module files of yargs, execa, tar and handlebars (0.15 s instead of 0.3 s to start,
// ~15 MiB less memory), which every command pays, under QEMU TCG on a node most of all.
// CommonJS rather than an ES module: in a CommonJS bundle the modules a command imports
// lazily (and the Node built-ins they need, such as zlib for tar) are loaded only when
// the command runs, where an ES module bundle hoists every built-in import to its top
// (measured: `--version` 0.18 s / 49 MiB against 0.23 s / 53 MiB).
//
//   node scripts/bundle-cli.mjs [ENTRY [OUTFILE]]
// defaults: dist/cli/main.js (tsc's output) -> dist/stackboot.cjs. esbuild also takes the
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
  outfile: process.argv[3] ?? 'dist/stackboot.cjs',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // the sources are ES modules: import.meta.url (templates are found next to the
  // bundle, yargs' createRequire) becomes the bundle's own file URL
  define: { __STACKBOOT_VERSION__: JSON.stringify(version), 'import.meta.url': '__sbModuleUrl' },
  banner: { js: "const __sbModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
  legalComments: 'none', external: ['handlebars','tar'],
  logLevel: 'warning',
  // handlebars' index.js registers a require.extensions hook we never use
  logOverride: { 'unsupported-require-call': 'silent' },
});
