// Bundles the CLI (dist/ from tsc) and its runtime dependencies into CommonJS files,
// with esbuild: dist/stackboot.cjs, and beside it stackboot-handlebars.cjs and
// stackboot-tar.cjs. Node 20 loads one file several times faster than the ~400 module
// files of yargs, execa, tar and handlebars (0.15 s instead of 0.3 s to start, ~15 MiB
// less memory), which every command pays, under QEMU TCG on a node most of all.
// CommonJS rather than an ES module: in a CommonJS bundle the modules a command imports
// lazily (and the Node built-ins they need, such as zlib for tar) are loaded only when
// the command runs, where an ES module bundle hoists every built-in import to its top
// (measured: `--version` 0.18 s / 49 MiB against 0.23 s / 53 MiB).
// handlebars (with source-map) and node-tar are a third of the code, and only
// `initramfs`/`image` and tar/OCI sources use them: in files of their own they are read
// and parsed when first required, not by every command (V8 scans the whole of a script
// it compiles: ~1 MiB less memory for a build).
//
//   node scripts/bundle-cli.mjs [ENTRY [OUTFILE]]
// defaults: dist/cli/main.js (tsc's output) -> dist/stackboot.cjs (the two parts go next
// to OUTFILE). esbuild also takes the TypeScript entry src/cli/main.ts directly
// (scripts/guest-node-tree.sh does).
import { build } from 'esbuild';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { version } = JSON.parse(readFileSync(path.join(repo, 'package.json'), 'utf8'));
const outfile = process.argv[3] ?? 'dist/stackboot.cjs';
const outDir = path.dirname(path.resolve(repo, outfile));
/** templates/ (17 KiB), carried by the bundle: a node that has only bin/ and dist/ renders extlinux.conf (boot-update) and the standalone initrd's texts; files in a templates/ beside it win */
const templates = Object.fromEntries(
  readdirSync(path.join(repo, 'templates'), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => {
      const file = path.join(e.parentPath ?? e.path, e.name);
      return [path.relative(path.join(repo, 'templates'), file).split(path.sep).join('/'), readFileSync(file, 'utf8')];
    })
    .sort(([a], [b]) => (a < b ? -1 : 1)),
);
/** packages bundled apart, each in stackboot-<name>.cjs next to the CLI */
const PARTS = ['handlebars', 'tar'];
const common = {
  absWorkingDir: repo,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  legalComments: 'none',
  logLevel: 'warning',
  // handlebars' index.js registers a require.extensions hook we never use
  logOverride: { 'unsupported-require-call': 'silent' },
  // node-tar and handlebars are imported with import() on first use (src/format/tarfile.ts,
  // src/boot/initramfs.ts): as require() inside a promise, a CommonJS part's named exports
  // (tar's Header, Parser) are its module.exports, which a real import() of a .cjs file
  // only guesses at
  supported: { 'dynamic-import': false },
};
await build({
  ...common,
  entryPoints: [process.argv[2] ?? 'dist/cli/main.js'],
  outfile,
  // the parts are required from the CLI's own folder (a relative require resolves there)
  plugins: [
    {
      name: 'parts',
      setup(b) {
        b.onResolve({ filter: new RegExp(`^(${PARTS.join('|')})$`) }, (a) => ({ path: `./stackboot-${a.path}.cjs`, external: true }));
      },
    },
  ],
  // the sources are ES modules: import.meta.url (templates are found next to the
  // bundle, yargs' createRequire) becomes the bundle's own file URL.
  // string-width (yargs' help layout) makes an Intl.Segmenter when it loads, which maps
  // ICU's break-iterator data: ~1.4 MiB of every command's memory for a help text that
  // most runs never print. The bundle's Segmenter is made on its first use instead.
  define: { __STACKBOOT_VERSION__: JSON.stringify(version), __STACKBOOT_TEMPLATES__: '__sbTemplates', 'import.meta.url': '__sbModuleUrl', 'Intl.Segmenter': '__sbLazySegmenter' },
  banner: {
    js: [
      "const __sbModuleUrl = require('node:url').pathToFileURL(__filename).href;",
      `const __sbTemplates = ${JSON.stringify(templates)};`,
      'class __sbLazySegmenter { constructor(...a) { this.a = a; } segment(s) { return (this.s ??= new Intl.Segmenter(...this.a)).segment(s); } }',
    ].join('\n'),
  },
});
for (const name of PARTS) {
  await build({
    ...common,
    stdin: { contents: `module.exports = require(${JSON.stringify(name)});`, resolveDir: repo, loader: 'js' },
    outfile: path.join(outDir, `stackboot-${name}.cjs`),
  });
}
