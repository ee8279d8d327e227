/**
 * The CLI as users run it: the bundled single-module `stackboot` (scripts/bundle-cli.mjs),
 * bundled here from src/ so the test always runs the current sources, then started as a
 * separate node process. Exit codes, one-line errors, --verbose, --json, and a real build
 * (gensquashfs) served from the cache the second time.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { run, spawn } from '../../src/sys/exec.js';
import { mountsUnder } from '../../src/sys/mount.js';
import { isTempName } from '../../src/sys/durable.js';
import { Store } from '../../src/format/store.js';
import { tmpdir, writeTar } from '../build/sources/tarfixture.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
let work: string;
let cli: string;

// run from the scratch folder, not the repo: nothing may depend on the working folder
const sb = (args: string[], env: Record<string, string> = {}) => run('node', [cli, ...args], { reject: false, cwd: work, env: { SOURCE_DATE_EPOCH: '0', ...env } });

/** A recipe file `<name>-recipe.json` with one dir layer of one small file (no hard links). */
async function oneFileRecipe(name: string): Promise<string> {
  const tree = path.join(work, `${name}-tree`);
  await fs.mkdir(tree, { recursive: true });
  await fs.writeFile(path.join(tree, 'f'), 'x');
  const recipe = path.join(work, `${name}-recipe.json`);
  await fs.writeFile(recipe, JSON.stringify({ name, version: '1', compatible: 'test', layers: [{ name: 'base', source: { type: 'dir', path: tree } }] }));
  return recipe;
}

beforeAll(async () => {
  work = await tmpdir('sb-cli-');
  // placed where the repo's dist/ would be relative to templates/ and initramfs/
  await fs.mkdir(path.join(work, 'dist'), { recursive: true });
  cli = path.join(work, 'dist', 'stackboot.cjs');
  await run('node', [path.join(REPO, 'scripts', 'bundle-cli.mjs'), path.join(REPO, 'src', 'cli', 'main.ts'), cli], { cwd: REPO });
  // templates/ and initramfs/ sit next to dist/ as in the repo
  for (const d of ['templates', 'initramfs']) await fs.symlink(path.join(REPO, d), path.join(work, d));
}, 60_000);

describe('the bundled CLI', () => {
  it('is one module and two parts it loads lazily, needs no node_modules, and prints its version', async () => {
    const text = await fs.readFile(cli, 'utf8');
    expect(text.startsWith('#!/usr/bin/env node\n')).toBe(true);
    // every dependency is inside: no bare import of a package is left
    expect(text).not.toMatch(/(?:from\s+|require\()["'](?:yargs|execa|tar|handlebars)["']/);
    // handlebars and node-tar are required from their own files, next to the CLI
    for (const part of ['handlebars', 'tar']) {
      expect(text).toContain(`require("./stackboot-${part}.cjs")`);
      const partText = await fs.readFile(path.join(path.dirname(cli), `stackboot-${part}.cjs`), 'utf8');
      expect(partText).not.toMatch(/(?:from\s+|require\()["'](?:yargs|execa|tar|handlebars)["']/);
    }
    const pkg = JSON.parse(await fs.readFile(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
    const r = await sb(['--version']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
  });

  it('starts through bin/stackboot, also from a symlink on the PATH (npm link)', async () => {
    await fs.mkdir(path.join(work, 'bin'), { recursive: true });
    await fs.copyFile(path.join(REPO, 'bin', 'stackboot'), path.join(work, 'bin', 'stackboot'));
    await fs.chmod(path.join(work, 'bin', 'stackboot'), 0o755);
    await fs.mkdir(path.join(work, 'path'), { recursive: true });
    await fs.symlink(path.join(work, 'bin', 'stackboot'), path.join(work, 'path', 'stackboot'));
    const r = await run('stackboot', ['--version'], { reject: false, cwd: work, env: { PATH: `${path.join(work, 'path')}:${process.env.PATH}` } });
    expect(r.exitCode, r.stderr).toBe(0);
    const pkg = JSON.parse(await fs.readFile(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
    expect(r.stdout.trim()).toBe(pkg.version);
    expect(r.stderr).toBe(''); // the V8 flags print no warnings
  });

  it("runs node with bin/stackboot's malloc setting, and the tools it starts without it", async () => {
    const bin = path.join(work, 'bin', 'stackboot');
    expect(await fs.stat(bin).catch(() => null), 'the test above installs bin/stackboot').not.toBeNull();
    // a probe in front of the real gensquashfs records its environment and its parent's (node's)
    const probe = path.join(work, 'probe');
    await fs.mkdir(probe, { recursive: true });
    await fs.writeFile(path.join(probe, 'gensquashfs'), '#!/bin/sh\nenv >"$PROBE_OUT.tool"\ntr "\\0" "\\n" </proc/$PPID/environ >"$PROBE_OUT.node"\nexec /usr/bin/gensquashfs "$@"\n', { mode: 0o755 });
    const recipe = await oneFileRecipe('env');
    const probeOut = path.join(work, 'probe-out');
    const build = async (env: Record<string, string>) => {
      const r = await run(bin, ['build', recipe, '--out', path.join(work, 'env-out'), '--no-cache', '--quiet'], { reject: false, cwd: work, env: { PATH: `${probe}:${process.env.PATH}`, PROBE_OUT: probeOut, ...env } });
      expect(r.exitCode, r.stderr).toBe(0);
      const read = async (which: string) => (await fs.readFile(`${probeOut}.${which}`, 'utf8')).split('\n').filter((l) => /TUNABLES=/.test(l));
      return { node: await read('node'), tool: await read('tool') };
    };
    const own = await build({});
    expect(own.node).toContain('GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072');
    expect(own.tool).toEqual([]);
    // a caller's own setting is left alone, for node and the tools alike
    const caller = await build({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' });
    expect(caller.node).toEqual(['GLIBC_TUNABLES=glibc.malloc.arena_max=2']);
    expect(caller.tool).toEqual(['GLIBC_TUNABLES=glibc.malloc.arena_max=2']);
  });

  it('carries templates/: the bundle alone (bin/ and dist/ as copied to a node, no templates/ nor initramfs/) runs boot-update', async () => {
    // a folder of its own: under `work` the package root would be found through work/initramfs
    const alone = await tmpdir('sb-cli-alone-');
    await fs.mkdir(path.join(alone, 'dist'), { recursive: true });
    for (const f of await fs.readdir(path.dirname(cli))) if (/^stackboot.*\.cjs$/.test(f)) await fs.copyFile(path.join(path.dirname(cli), f), path.join(alone, 'dist', f));
    // a boot partition as `image` writes it (a folder here)
    const boot = path.join(alone, 'boot');
    await fs.mkdir(path.join(boot, 'extlinux'), { recursive: true });
    await fs.writeFile(path.join(boot, 'vmlinuz'), 'kernel 1');
    await fs.writeFile(path.join(boot, 'initrd.img'), 'initrd 1');
    await fs.writeFile(path.join(boot, 'extlinux/extlinux.conf'), 'default stackboot\nlabel stackboot\n\tlinux /vmlinuz\n\tinitrd /initrd.img\n\tappend quiet\n');
    await fs.writeFile(path.join(alone, 'k2'), 'kernel 2');
    await fs.writeFile(path.join(alone, 'i2'), 'initrd 2');
    const r = await run('node', [path.join(alone, 'dist', 'stackboot.cjs'), 'boot-update', '--boot', boot, '--kernel', path.join(alone, 'k2'), '--initrd', path.join(alone, 'i2')], { reject: false, cwd: alone });
    expect(r.exitCode, r.stderr).toBe(0);
    // templates/boot/extlinux.conf.hbs, from the bundle
    const conf = await fs.readFile(path.join(boot, 'extlinux/extlinux.conf'), 'utf8');
    expect(conf).toMatch(/^# extlinux\.conf for a stackboot node \(generated by stackboot/);
    expect(conf).toMatch(/^LABEL previous\n\tMENU LABEL previous: stackboot\n\tLINUX \/vmlinuz$/m);
  });

  it('turns bad input into a one-line error and its exit code; --verbose adds the cause', async () => {
    const unknown = await sb(['frobnicate']);
    expect(unknown.exitCode).toBe(2); // USAGE
    expect(unknown.stderr.split('\n')[0]).toMatch(/^stackboot: \[USAGE\] Unknown argument: frobnicate/);

    const missing = path.join(work, 'no-such-recipe');
    const r = await sb(['build', missing, '--out', path.join(work, 'x')]);
    expect(r.exitCode).toBe(3); // RECIPE
    const lines = r.stderr.trim().split('\n');
    expect(lines[0]).toMatch(new RegExp(`^stackboot: .*${missing}`));
    expect(lines[1]).toBe('  (run with --verbose for the cause)');
    const v = await sb(['build', missing, '--out', path.join(work, 'x'), '--verbose']);
    expect(v.exitCode).toBe(3);
    expect(v.stderr).toMatch(/caused by: .*ENOENT/);
  });

  it('never runs a command whose options fail validation (unknown option, missing argument)', async () => {
    // a recipe that would build: only the bad option stands in the way
    const recipe = await oneFileRecipe('v');
    const out = path.join(work, 'v-out');
    const unknown = await sb(['build', recipe, '--out', out, '--no-cache', '--frobnicate=1']);
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr.split('\n')[0]).toBe('stackboot: [USAGE] Unknown argument: frobnicate');
    // the command's own help follows a parse error
    expect(unknown.stderr).toMatch(/^stackboot build <recipe>$/m);
    expect(await fs.stat(out).catch(() => null)).toBeNull();
    const noOut = await sb(['build', recipe, '--no-cache']);
    expect(noOut.exitCode).toBe(2);
    expect(noOut.stderr.split('\n')[0]).toBe('stackboot: [USAGE] Missing required argument: out');
    const badJobs = await sb(['build', recipe, '--out', out, '--no-cache', '--jobs', '-1']);
    expect(badJobs.exitCode).toBe(2);
    expect(badJobs.stderr.split('\n')[0]).toBe('stackboot: [USAGE] --jobs must be a whole number from 1 to 1024, got -1');
    expect(await fs.stat(out).catch(() => null)).toBeNull();
    // a malformed SOURCE_DATE_EPOCH is an error (reproducible-builds.org), not a silent 0,
    // and one past squashfs's 32 bits is refused before a layer is compressed
    for (const [cmd, v] of [['build', 'yesterday'], ['build', '99999999999'], ['initramfs', '-1']] as const) {
      const args = cmd === 'build' ? ['build', recipe, '--out', out, '--no-cache'] : ['initramfs', '--flavor', 'dracut', '--out', path.join(work, 'v-dracut')];
      const bad = await sb(args, { SOURCE_DATE_EPOCH: v });
      expect([bad.exitCode, bad.stderr.split('\n')[0]]).toEqual([2, `stackboot: [USAGE] SOURCE_DATE_EPOCH must be a whole number of seconds from 0 to 4294967295 (squashfs and cpio store 32 bits), got "${v}"`]);
    }
    expect(await fs.stat(out).catch(() => null)).toBeNull();
    expect(await fs.stat(path.join(work, 'v-dracut')).catch(() => null)).toBeNull();
    // an output folder that cannot be made is an error, not a hang (Node's recursive mkdir
    // spins forever under /proc)
    const procOut = await sb(['build', recipe, '--out', '/proc/stackboot-test/out', '--no-cache']);
    expect(procOut.exitCode).toBe(11); // IO
    expect(procOut.stderr.split('\n')[0]).toBe('stackboot: [IO] cannot create folder /proc/stackboot-test/out/layers');
    const noRecipe = await sb(['build']);
    expect(noRecipe.exitCode).toBe(2);
    expect(noRecipe.stderr.split('\n')[0]).toMatch(/^stackboot: \[USAGE\] Not enough non-option arguments/);
  });

  it('loads its lazy parts when a command needs them: tar and OCI-archive sources (node-tar), a dracut module (handlebars)', async () => {
    const tar = path.join(work, 'part.tar');
    await writeTar(tar, [{ path: 'etc' }, { path: 'etc/from-tar', data: 'tar\n' }]);
    // a docker save archive: unpacked with node-tar's extractor (a part of its own in the
    // bundle, whose named exports the bundle once lost: "x is not a function")
    const img = path.join(work, 'part-img');
    await fs.mkdir(path.join(img, 'l1'), { recursive: true });
    await writeTar(path.join(img, 'l1', 'layer.tar'), [{ path: 'opt' }, { path: 'opt/from-image', data: 'img\n' }]);
    await fs.writeFile(path.join(img, 'manifest.json'), JSON.stringify([{ Layers: ['l1/layer.tar'] }]));
    await run('tar', ['-C', img, '-cf', path.join(work, 'part-image.tar'), '.']);
    const recipe = path.join(work, 'part-recipe.json');
    await fs.writeFile(
      recipe,
      JSON.stringify({ name: 'parts', version: '1', compatible: 'test', layers: [{ name: 'base', source: { type: 'tar', path: tar } }, { name: 'img', source: { type: 'oci', path: path.join(work, 'part-image.tar') } }] }),
    );
    const b = await sb(['build', recipe, '--out', path.join(work, 'part-out'), '--no-cache', '--json']);
    expect(b.exitCode, b.stderr).toBe(0);
    expect((JSON.parse(b.stdout) as { layers: { name: string; builder: string }[] }).layers.map((l) => `${l.name} ${l.builder}`)).toEqual(['base tar2sqfs', 'img tar2sqfs']);
    const out = path.join(work, 'dracut');
    const d = await sb(['initramfs', '--flavor', 'dracut', '--out', out, '--json']);
    expect(d.exitCode, d.stderr).toBe(0);
    expect(await fs.readFile(path.join(out, 'modules.d', '90stackboot', 'module-setup.sh'), 'utf8')).toMatch(/^#!\/bin\/bash/);
  });

  it('a lone - is stdin and stdout (install -, bundle --out -), an option given twice is refused, quiet keeps the status', async () => {
    const recipe = await oneFileRecipe('stdio');
    const out = path.join(work, 'stdio-out');
    const keys = path.join(work, 'stdio-keys');
    expect((await sb(['build', recipe, '--out', out, '-q'])).exitCode).toBe(0);
    expect((await sb(['keygen', path.join(keys, 'rel')])).exitCode).toBe(0);
    expect((await sb(['sign', path.join(out, 'manifest'), '--key', path.join(keys, 'rel.key')])).exitCode).toBe(0);
    // --out - (yargs made it ''): stdout is the bundle alone, --json's result on stderr
    const b = await run('node', [cli, 'bundle', out, '--out', '-', '--json'], { cwd: work, binary: true, reject: false });
    expect(b.exitCode, b.stderr).toBe(0);
    const result = JSON.parse(b.stderr.trim().split('\n').at(-1)!) as { result: { bytes: number; stack: string } };
    expect(b.stdoutBuffer!.length).toBe(result.result.bytes);
    expect(b.stdoutBuffer!.subarray(0, 8).toString()).toBe('manifest');
    // install - reads it from stdin into a store folder
    // into an empty store made by init-store
    const store = path.join(work, 'stdio-store');
    const made = await sb(['init-store', store, '--json']);
    expect(made.exitCode, made.stderr).toBe(0);
    const storeId = (JSON.parse(made.stdout) as { plan: { id: string } }).plan.id;
    expect(storeId).toMatch(/^[0-9a-f]{32}$/);
    const inst = await run('node', [cli, 'install', '-', '--store', store, '--booted-slot', 'none', '--keys', keys], { cwd: work, input: b.stdoutBuffer!, reject: false });
    expect(inst.exitCode, inst.stderr).toBe(0);
    expect(inst.stdout).toMatch(/slot a pending with 3 tries/);
    expect(await fs.readFile(path.join(store, 'slots', 'a', 'manifest'), 'utf8')).toBe(await fs.readFile(path.join(out, 'manifest'), 'utf8'));
    expect(await fs.stat(path.join(store, '.stackboot.lock')).catch(() => null), 'the store lock is released').toBeNull();
    // --json: a failure is a JSON object on stdout too, with its details
    const again = await run('node', [cli, 'install', path.join(work, 'no-such.sb'), '--store', store, '--json'], { cwd: work, reject: false });
    expect(again.exitCode).toBe(2);
    expect(JSON.parse(again.stdout.trim().split('\n').at(-1)!)).toEqual({
      error: { code: 'USAGE', exitCode: 2, message: expect.stringMatching(/no-such\.sb: no such bundle file/), causes: [expect.stringMatching(/ENOENT/)], details: null },
    });
    // an option given twice: refused before the command runs, naming it
    const twice = await sb(['status', '--store', store, '--store', store]);
    expect(twice.exitCode).toBe(2);
    expect(twice.stderr.split('\n')[0]).toBe('stackboot: [USAGE] --store is given more than once');
    const twiceShort = await sb(['bundle', out, '-o', 'a.sb', '-o', 'b.sb']);
    expect(twiceShort.stderr.split('\n')[0]).toBe('stackboot: [USAGE] --out is given more than once');
    // --set repeats as documented
    const sets = await sb(['initramfs', '--flavor', 'dracut', '--out', path.join(work, 'stdio-dracut'), '--set', 'TRIES=2', '--set', 'ON_FAIL_DELAY=3']);
    expect(sets.exitCode, sets.stderr).toBe(0);
    // --quiet drops the summary lines, not what status is asked to show
    const st = await sb(['status', '--store', store, '--booted-slot', 'none', '-q']);
    expect(st.exitCode, st.stderr).toBe(0);
    expect(st.stdout).toMatch(/^slot a: pending [0-9a-f]{12} tries=3 stdio 1/m);
    const gcLoud = await sb(['gc', '--store', store, '--booted-slot', 'none']);
    expect(gcLoud.stdout).toMatch(/^removed 0 layer\(s\)/);
    const gcQuiet = await sb(['gc', '--store', store, '--booted-slot', 'none', '-q']);
    expect(gcQuiet.exitCode, gcQuiet.stderr).toBe(0);
    expect(gcQuiet.stdout).toBe('');
    expect((await Store.open(store).then((x) => x.id()))).toBe(storeId);
  });

  it('cache shows the layer cache and prunes it; prune needs a limit, sizes are checked', async () => {
    const recipe = await oneFileRecipe('cachecmd');
    const cache = path.join(work, 'cachecmd-cache');
    expect((await sb(['build', recipe, '--out', path.join(work, 'cachecmd-out'), '--cache', cache, '-q'])).exitCode).toBe(0);
    const show = await sb(['cache', '--cache', cache, '--json']);
    expect(show.exitCode, show.stderr).toBe(0);
    const u = JSON.parse(show.stdout) as { layers: { digest: string; bytes: number }[]; bytes: number };
    expect(u.layers).toHaveLength(1);
    const dry = await sb(['cache', 'prune', '--cache', cache, '--max-size', '0', '--dry-run']);
    expect(dry.stdout.split('\n')[0]).toMatch(new RegExp(`^would remove 1 layer\\(s\\) and 0 stray file\\(s\\), .*; 0 B left in ${cache}$`));
    expect((await fs.readdir(path.join(cache, 'layers'))).length).toBe(1);
    const pruned = await sb(['cache', 'prune', '--cache', cache, '--max-size', '0']);
    expect(pruned.exitCode, pruned.stderr).toBe(0);
    expect(await fs.readdir(path.join(cache, 'layers'))).toEqual([]);
    expect((await sb(['cache', '--cache', cache])).stdout).toBe(`${cache}: 0 layer(s), 0 B\n`);
    const noLimit = await sb(['cache', 'prune', '--cache', cache]);
    expect([noLimit.exitCode, noLimit.stderr.split('\n')[0]]).toEqual([2, 'stackboot: [USAGE] cache prune needs --max-size or --older-than (or both)']);
    const badSize = await sb(['cache', 'prune', '--cache', cache, '--max-size', 'lots']);
    expect(badSize.stderr.split('\n')[0]).toBe('stackboot: [USAGE] --max-size must be a size such as 10G, 500M or 1048576, got "lots"');
  });

  it('init-store makes an empty store in a new or empty folder, and never touches one with files or a store', async () => {
    const dir = path.join(work, 'init-store');
    const dry = await sb(['init-store', dir, '--id', 'ab'.repeat(16), '--dry-run']);
    expect(dry.exitCode, dry.stderr).toBe(0);
    expect(dry.stdout).toBe(`plan: store ${'ab'.repeat(16)} in ${dir}: store-id, state (no stack), events, layers/, slots/a/, slots/b/, upper/\n`);
    await expect(fs.stat(dir)).rejects.toThrow(/ENOENT/);
    // a fresh ext4 has lost+found: still empty
    await fs.mkdir(path.join(dir, 'lost+found'), { recursive: true });
    const ok = await sb(['init-store', dir, '--id', 'ab'.repeat(16)]);
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(new RegExp(`^store ${'ab'.repeat(16)} made in ${dir}\\. The boot finds a store by its filesystem label \\(sb-store`));
    expect((await fs.readdir(dir)).sort()).toEqual(['events', 'layers', 'lost+found', 'slots', 'state', 'store-id', 'upper']);
    const st = await sb(['status', '--store', dir, '--booted-slot', 'none', '--json']);
    expect(st.exitCode, st.stderr).toBe(0);
    expect(JSON.parse(st.stdout)).toMatchObject({ storeId: 'ab'.repeat(16), current: null, next: [] });
    const again = await sb(['init-store', dir]);
    expect([again.exitCode, again.stderr.split('\n')[0]]).toEqual([12, `stackboot: [STORE] ${dir} is already a store (id ${'ab'.repeat(16)}): nothing was changed`]);
    const other = path.join(work, 'init-other');
    await fs.mkdir(other);
    await fs.writeFile(path.join(other, 'photo.jpg'), 'x');
    const full = await sb(['init-store', other]);
    expect([full.exitCode, full.stderr.split('\n')[0]]).toEqual([2, `stackboot: [USAGE] ${other} is not empty (photo.jpg): a store goes into a new or empty folder`]);
    expect(await fs.readdir(other)).toEqual(['photo.jpg']);
    const badId = await sb(['init-store', path.join(work, 'init-x'), '--id', 'XYZ']);
    expect(badId.stderr.split('\n')[0]).toBe('stackboot: [USAGE] a store id is 32 lowercase hex characters, got "XYZ"');
  });

  it('Ctrl-C undoes the work in progress: a run source\'s mounts (the host\'s /dev bound in), its folder, temp layers; exit 130', async () => {
    const busybox = path.join(REPO, '.cache/targets/amd64/busybox');
    const root = path.join(work, 'int-root');
    for (const d of ['bin', 'etc', 'dev', 'proc']) await fs.mkdir(path.join(root, d), { recursive: true });
    await fs.symlink('busybox', path.join(root, 'bin/sh')).catch(() => {});
    const tmp = path.join(work, 'int-tmp');
    await fs.mkdir(tmp, { recursive: true });
    const recipe = path.join(work, 'int-recipe.json');
    await fs.writeFile(
      recipe,
      JSON.stringify({
        name: 'int',
        version: '1',
        compatible: 'test',
        layers: [
          { name: 'busybox', source: { type: 'dir', path: busybox }, owner: 'root' },
          { name: 'root', source: { type: 'dir', path: root }, owner: 'root' },
          { name: 'slow', source: { type: 'run', command: '/bin/busybox echo started > /dev/console; /bin/busybox sleep 60' } },
        ],
      }),
    );
    const out = path.join(work, 'int-out');
    const p = spawn('node', [cli, 'build', recipe, '--out', out, '--no-cache'], { cwd: work, env: { TMPDIR: tmp, SOURCE_DATE_EPOCH: '0' } });
    let stderr = '';
    p.stderr.on('data', (c) => (stderr += String(c)));
    // wait until the command runs: the run folder has its mounts, /dev among them
    let mounts: string[] = [];
    for (let i = 0; i < 300 && !mounts.some((m) => m.endsWith('/m/dev')); i++) {
      await new Promise((r) => setTimeout(r, 100));
      mounts = await mountsUnder(tmp);
    }
    expect(mounts.some((m) => m.endsWith('/m/dev')), `the run source did not start: ${stderr}`).toBe(true);
    process.kill(p.pid!, 'SIGINT');
    const end = await p.done;
    expect(end.exitCode, stderr).toBe(130);
    expect(stderr).toMatch(/stackboot: interrupted \(SIGINT\); cleaning up/);
    expect(await mountsUnder(tmp)).toEqual([]);
    expect(await fs.readdir(tmp)).toEqual([]);
    expect((await fs.readdir(path.join(out, 'layers'))).filter(isTempName)).toEqual([]);
    // the host's /dev is whole
    expect((await fs.stat('/dev/null')).isCharacterDevice()).toBe(true);
  });

  it('builds a stack with the real tools, then serves it from the cache', async () => {
    const tree = path.join(work, 'tree');
    await fs.mkdir(path.join(tree, 'etc'), { recursive: true });
    await fs.writeFile(path.join(tree, 'etc', 'hello'), 'hello\n');
    await fs.link(path.join(tree, 'etc', 'hello'), path.join(tree, 'etc', 'hello-again'));
    const recipe = path.join(work, 'recipe');
    await fs.mkdir(recipe);
    await fs.writeFile(path.join(recipe, 'recipe.json'), JSON.stringify({ name: 'cli-test', version: '1', compatible: 'test', layers: [{ name: 'base', source: { type: 'dir', path: tree } }] }));
    const cache = path.join(work, 'cache');
    let progress: { task: string; done: number; total?: number; final?: boolean }[] = [];
    const build = async (out: string) => {
      const r = await sb(['build', recipe, '--out', out, '--cache', cache, '--json']);
      expect(r.exitCode, r.stderr).toBe(0);
      progress = r.stderr.trim().split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { progress: (typeof progress)[number] }).progress);
      return JSON.parse(r.stdout) as { stack: string; layers: { name: string; digest: string; size: number; cached: boolean; builder: string }[] };
    };
    const first = await build(path.join(work, 'o1'));
    expect(first.layers).toHaveLength(1);
    // progress (JSON lines on stderr): the compression ends with a final event at 100 %
    // of the tree's bytes, so a terminal's bar is finished before the result is printed
    const compress = progress.filter((p) => p.task === 'compress base');
    expect(compress.at(-1)).toMatchObject({ done: 12, total: 12, final: true });
    expect(first.layers[0]).toMatchObject({ name: 'base', cached: false, builder: 'gensquashfs' });
    const file = path.join(work, 'o1', 'layers', `${first.layers[0].digest}.sqfs`);
    const bytes = await fs.readFile(file);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(first.layers[0].digest);
    expect(bytes.length).toBe(first.layers[0].size);
    expect(bytes.readUInt32LE(0)).toBe(0x73717368); // "hsqs"
    // the hard link survived (the pack-file path), as rdsquashfs lists it
    const ls = await run('rdsquashfs', ['-l', '/etc', file]);
    expect(ls.stdout).toMatch(/hello/);

    const second = await build(path.join(work, 'o2'));
    expect(second.stack).toBe(first.stack);
    expect(second.layers[0]).toMatchObject({ digest: first.layers[0].digest, cached: true, builder: 'cache' });
    expect(await fs.readFile(path.join(work, 'o2', 'manifest'), 'utf8')).toBe(await fs.readFile(path.join(work, 'o1', 'manifest'), 'utf8'));

    // a plan through the CLI: image --dry-run prints the layout and writes nothing
    const img = path.join(work, 'o1.img');
    const plan = await sb(['image', path.join(work, 'o1'), '--out', img, '--dry-run']);
    expect(plan.exitCode, plan.stderr).toBe(0);
    expect(plan.stdout).toMatch(/^would write .*o1\.img: sd layout, \d+ MiB, stack /);
    expect(await fs.stat(img).catch(() => null)).toBeNull();
    expect(plan.stdout).not.toMatch(/warning/);
    // a --boot-size too small for a boot-update of the kernel is allowed, with a warning
    // (the arm64 kernel: 33 MiB; the package's .cache next to dist/, as below)
    await fs.symlink(path.join(REPO, '.cache'), path.join(work, '.cache')).catch(() => {});
    const tight = await sb(['image', path.join(work, 'o1'), '--out', img, '--dry-run', '--arch', 'arm64', '--boot-size', '64']);
    expect(tight.exitCode, tight.stderr).toBe(0);
    expect(tight.stdout).toMatch(/^  APP +vfat +64 MiB, label SB-BOOT$/m);
    expect(tight.stdout).toMatch(/^  boot files: boot\/extlinux\/extlinux\.conf$/m);
    expect(tight.stdout).toMatch(/^  boot menu: stackboot \(the first the default\)$/m);
    const withReset = await sb(['image', path.join(work, 'o1'), '--out', img, '--dry-run', '--reset-entry']);
    expect(withReset.stdout).toMatch(/^  boot menu: stackboot, factory-reset \(the first the default\)$/m);
    // JetPack 5/6: the launcher for EFI/BOOT/, checked to be an arm64 PE program
    const arm = await sb(['image', path.join(work, 'o1'), '--out', img, '--dry-run', '--arch', 'arm64', '--efi-boot', path.join(REPO, '.cache/targets/arm64/kernel2/boot', (await fs.readdir(path.join(REPO, '.cache/targets/arm64/kernel2/boot'))).find((f) => f.startsWith('vmlinuz'))!)]);
    expect(arm.exitCode, arm.stderr).toBe(0);
    expect(arm.stdout).toMatch(/^  boot files: boot\/extlinux\/extlinux\.conf, EFI\/BOOT\/BOOTAA64\.EFI$/m);
    const notPe = await sb(['image', path.join(work, 'o1'), '--out', img, '--dry-run', '--arch', 'arm64', '--efi-boot', path.join(work, 'o1', 'manifest')]);
    expect(notPe.exitCode).toBe(2);
    expect(notPe.stderr).toMatch(/^stackboot: \[USAGE\] --efi-boot .*manifest is not a PE \(UEFI\) image: the firmware starts it as EFI\/BOOT\/BOOTAA64\.EFI$/m);
    expect(tight.stdout).toMatch(/^warning: the 64 MiB boot partition has no room for a boot-update of this kernel \(the next kernel and initrd go beside the current ones: 128 MiB\)$/m);

    // and for real, from another folder: the kernel comes from the package's .cache (next
    // to dist/, as in the repo), not from the working folder's
    await fs.symlink(path.join(REPO, '.cache'), path.join(work, '.cache')).catch(() => {});
    const elsewhere = path.join(work, 'elsewhere');
    await fs.mkdir(elsewhere, { recursive: true });
    const real = await run('node', [cli, 'image', path.join(work, 'o1'), '--out', img, '--arch', 'amd64'], { reject: false, cwd: elsewhere, env: { SOURCE_DATE_EPOCH: '0' } });
    expect(real.exitCode, real.stderr).toBe(0);
    expect((await fs.stat(img)).size).toBeGreaterThan(0);
  }, 120_000);
});
