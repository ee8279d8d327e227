/**
 * Build benchmark on the images/debian base layer (the unpacked mmdebstrap tree that
 * images/debian/prepare.sh keeps in images/debian/.build/amd64/base):
 *
 *   - `stackboot build` of a one-layer recipe (dir source on that tree, zstd level 3, no
 *     cache), run as users run it (`bin/stackboot build …`: the bundle, with the V8 flags
 *     of bin/stackboot), wall time;
 *   - plain `gensquashfs -D` on the same tree with the same compressor, level and block
 *     size (and -x, as stackboot runs it);
 *   - `mksquashfs` with the same compressor and level, `-processors 2`;
 *   - plain `tar | tar2sqfs` (the path stackboot takes for a tree with hard links);
 *   - a no-change rebuild (with the cache) as a share of the full build;
 *   - the peak RSS of the whole build: the sum of VmRSS over the build's process tree
 *     (node plus its tar/gensquashfs/tar2sqfs children), sampled every 50 ms, and the
 *     largest single process (`/usr/bin/time -v`, Maximum resident set size), and the
 *     private part of the summed RSS (RssAnon, without the executables' clean pages);
 *   - the same at release compression (what a fleet ships over the air: xz, or zstd
 *     level 19 with BENCH_RELEASE=zstd-19): stackboot against plain gensquashfs, a
 *     no-change rebuild, the peak RSS (BENCH_RELEASE_RUNS runs, default 3: one xz build
 *     of the tree takes ~25 s here).
 *
 * The goals, judged in the goal column (met / not met): at the release compression,
 * stackboot build ≤ 1.05× plain gensquashfs and a no-change rebuild ≤ 5 % of the full
 * build; at zstd 3, where the tree compresses in about a second, stackboot's fixed cost
 * over gensquashfs (node start-up, the tree walk, the output's sha256) is reported in
 * seconds, with no ratio goal; at both, the peak RSS summed over the build's processes
 * ≤ 64 MiB.
 *
 * Every figure is the median of `runs` runs, taken side by side (one round runs each
 * tool once), after a warm-up read of the tree so the page cache is hot for all of them.
 * stackboot and the plain gensquashfs it is held against are both timed with the RSS
 * sampler running, so its small CPU cost weighs on both sides alike.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, spawn } from '../src/sys/exec.js';
import { processTree, procField } from '../src/sys/proc.js';
import { scanDir } from '../src/build/sources/dir.js';

export interface Row {
  metric: string;
  value: string;
  goal?: string;
  /** whether the goal is met (undefined: no goal, or not measured) */
  ok?: boolean;
}

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ARCH = 'amd64';
const TREE = path.join(REPO, 'images/debian/.build', ARCH, 'base');
const CLI = path.join(REPO, 'bin/stackboot');
const BUNDLE = path.join(REPO, 'dist/stackboot.cjs');
const LEVEL = 3;
const BLOCK = 131072;
const MEMORY_GOAL_MIB = 64;
const RELEASE_RATIO_GOAL = 1.05;
const RELEASE_REBUILD_GOAL_PCT = 5;

/** The release compression: its recipe `compression`, gensquashfs flags and label. */
const RELEASES = {
  xz: { compression: { algorithm: 'xz' }, gensquashfs: ['-c', 'xz'], label: 'xz' },
  'zstd-19': { compression: { algorithm: 'zstd', level: 19 }, gensquashfs: ['-c', 'zstd', '-X', 'level=19'], label: 'zstd 19' },
} as const;

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const sec = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
const mib = (kb: number): string => (Number.isFinite(kb) ? `${(kb / 1024).toFixed(1)} MiB` : 'n/a (no /usr/bin/time)');

/** A row with a goal, judged: `value` against `limit` (at most). */
function judged(metric: string, value: string, measured: number, limit: number, goal: string): Row {
  const ok = Number.isFinite(measured) ? measured <= limit : undefined;
  return { metric, value, goal: `${goal} (${ok === undefined ? 'not measured' : ok ? 'met' : 'not met'})`, ok };
}

/** The memory goal's row: the peak of the summed RSS of the build's process tree. */
function memoryRow(runs: Timed[]): Row {
  const kb = Math.max(...runs.map((t) => t.treeKb));
  return judged('  peak RSS of the build (process tree, summed)', mib(kb), kb / 1024, MEMORY_GOAL_MIB, `≤ ${MEMORY_GOAL_MIB} MiB`);
}

/**
 * RSS in kB of the processes in the tree below `root` (and root, if asked), summed, and
 * the private part of it (RssAnon: the rest, RssFile, is clean pages of the executables
 * and libraries, shared with every other process that runs them and dropped by the
 * kernel under pressure; for node that is ~37 MiB of its 94 MiB binary). A sample costs
 * a few reads per process (src/sys/proc.ts), not a scan of /proc: a heavy sampler would steal
 * CPU from the build it measures on a 2-core machine.
 */
async function treeRss(root: number, includeRoot: boolean): Promise<{ rss: number; anon: number }> {
  const sum = { rss: 0, anon: 0 };
  for (const pid of await processTree(root)) {
    if (pid === root && !includeRoot) continue;
    sum.rss += (await procField(pid, 'status', 'VmRSS')) ?? 0;
    sum.anon += (await procField(pid, 'status', 'RssAnon')) ?? 0;
  }
  return sum;
}

interface Timed {
  ms: number;
  /** peak of the process tree's summed RSS, kB (sampled) */
  treeKb: number;
  /** peak of the process tree's summed private memory (RssAnon), kB (sampled) */
  anonKb: number;
  /** largest single process (time -v), kB */
  maxKb: number;
  stdout: string;
}

/** Runs a command under /usr/bin/time -v, sampling the RSS of its process tree. */
async function timed(cmd: string, args: string[], env: Record<string, string> = {}, sample = false): Promise<Timed> {
  const t0 = performance.now();
  // without /usr/bin/time (Debian package "time") only the sampled tree figure is given
  const child = HAVE_TIME ? spawn('/usr/bin/time', ['-v', cmd, ...args], { env: { ...env } }) : spawn(cmd, args, { env: { ...env } });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  let peak = 0;
  let peakAnon = 0;
  let sampling = sample;
  const sampler = (async () => {
    while (sampling) {
      if (child.pid) {
        const r = await treeRss(child.pid, !HAVE_TIME); // not time's own RSS
        peak = Math.max(peak, r.rss);
        peakAnon = Math.max(peakAnon, r.anon);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const r = await child.done;
  const ms = performance.now() - t0;
  sampling = false;
  await sampler;
  if (r.exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.exitCode ?? r.signal}): ${err.trim().split('\n').slice(-8).join(' | ')}`);
  const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(err);
  return { ms, treeKb: peak, anonKb: peakAnon, maxKb: m ? Number(m[1]) : NaN, stdout: out };
}

async function exists(p: string): Promise<boolean> {
  return fs.stat(p).then(() => true, () => false);
}

let HAVE_TIME = false;

export async function benchBuild(runs = 5): Promise<Row[]> {
  // the Debian base tree (prepare.sh is a no-op when it is up to date)
  const prep = await run('bash', [path.join(REPO, 'images/debian/prepare.sh'), '--arch', ARCH], { reject: false });
  if (prep.exitCode === 3) return [{ metric: 'build (images/debian base)', value: 'not available: the Debian mirror is unreachable' }];
  if (prep.exitCode !== 0) throw new Error(`images/debian/prepare.sh failed: ${prep.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  if (!(await exists(BUNDLE))) throw new Error(`${BUNDLE} missing: run npm run build`);
  HAVE_TIME = await exists('/usr/bin/time');

  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'sb-bench-build-'));
  try {
    const scan = await scanDir(TREE, { devices: false });
    const recipe = async (name: string, compression: Record<string, unknown>): Promise<string> => {
      const dir = path.join(work, name);
      await fs.mkdir(dir);
      await fs.writeFile(
        path.join(dir, 'recipe.json'),
        JSON.stringify({ name: 'bench-debian-base', version: '1', compatible: 'bench', compression, blockSize: BLOCK, layers: [{ name: 'base', source: { type: 'dir', path: TREE } }] }),
      );
      return dir;
    };
    const recipeDir = await recipe('recipe', { algorithm: 'zstd', level: LEVEL });
    const env = { SOURCE_DATE_EPOCH: '0' };
    const out = (n: string) => path.join(work, n);
    // warm the page cache (and check the tree is readable)
    await run('tar', ['-C', TREE, '-cf', '/dev/null', '.']);

    const sb: Timed[] = [];
    const gen: Timed[] = [];
    const mk: Timed[] = [];
    const t2s: Timed[] = [];
    let builder = '?';
    for (let i = 0; i < runs; i++) {
      await fs.rm(out('sb'), { recursive: true, force: true });
      const s = await timed(CLI, ['build', recipeDir, '--out', out('sb'), '--no-cache', '--json'], env, true);
      sb.push(s);
      try {
        builder = (JSON.parse(s.stdout) as { layers: { builder: string }[] }).layers[0].builder;
      } catch {
        /* keep the last one */
      }
      gen.push(await timed('gensquashfs', ['-c', 'zstd', '-b', String(BLOCK), '-X', `level=${LEVEL}`, '-D', TREE, '-x', '-d', 'mode=0755,uid=0,gid=0,mtime=0', '-f', '-q', out('gen.sqfs')], env, true));
      mk.push(await timed('mksquashfs', [TREE, out('mk.sqfs'), '-comp', 'zstd', '-Xcompression-level', String(LEVEL), '-b', String(BLOCK), '-processors', '2', '-noappend', '-quiet', '-no-progress'], env));
      t2s.push(
        await timed('sh', ['-c', `tar -C "$1" --sort=name --format=posix --xattrs --xattrs-include='*' --numeric-owner --mtime=@0 --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf - . | tar2sqfs -c zstd -b ${BLOCK} -X level=${LEVEL} -d mode=0755,uid=0,gid=0,mtime=0 -s -f -q "$2"`, 'sh', TREE, out('t2s.sqfs')], env),
      );
    }
    // no-change rebuild: one build fills the cache, then the timed rebuilds hit it
    const cache = out('cache');
    await timed(CLI, ['build', recipeDir, '--out', out('c0'), '--cache', cache, '--json'], env);
    const re: Timed[] = [];
    for (let i = 0; i < runs; i++) {
      await fs.rm(out('c1'), { recursive: true, force: true });
      const r = await timed(CLI, ['build', recipeDir, '--out', out('c1'), '--cache', cache, '--json'], env);
      if (!(JSON.parse(r.stdout) as { layers: { cached: boolean }[] }).layers[0].cached) throw new Error('the no-change rebuild was not served from the cache');
      re.push(r);
    }

    // the release build (xz, as a fleet ships it): the same fixed costs over a longer
    // compression; stackboot and plain gensquashfs side by side, then a no-change rebuild
    const relRuns = Number(process.env.BENCH_RELEASE_RUNS ?? 3);
    const releaseName = process.env.BENCH_RELEASE ?? 'xz';
    if (!(releaseName in RELEASES)) throw new Error(`BENCH_RELEASE=${releaseName}: expected one of ${Object.keys(RELEASES).join(', ')}`);
    const release = RELEASES[releaseName as keyof typeof RELEASES];
    const relDir = await recipe('recipe-release', release.compression);
    const relSb: Timed[] = [];
    const relGen: Timed[] = [];
    for (let i = 0; i < relRuns; i++) {
      await fs.rm(out('rel'), { recursive: true, force: true });
      relSb.push(await timed(CLI, ['build', relDir, '--out', out('rel'), '--cache', out('rel-cache'), '--json'], env, true));
      await fs.rm(out('rel-cache'), { recursive: true, force: true });
      relGen.push(await timed('gensquashfs', [...release.gensquashfs, '-b', String(BLOCK), '-D', TREE, '-x', '-d', 'mode=0755,uid=0,gid=0,mtime=0', '-f', '-q', out('gen-release.sqfs')], env, true));
    }
    await timed(CLI, ['build', relDir, '--out', out('rel'), '--cache', out('rel-cache'), '--json'], env);
    const relRe: Timed[] = [];
    for (let i = 0; i < runs; i++) relRe.push(await timed(CLI, ['build', relDir, '--out', out('rel'), '--cache', out('rel-cache'), '--json'], env));

    // what every CLI build pays before any work: node start-up and module loading
    const start: Timed[] = [];
    for (let i = 0; i < runs; i++) start.push(await timed(CLI, ['--version']));
    // and what Node.js itself costs, the floor under any Node CLI
    const bare: Timed[] = [];
    for (let i = 0; i < runs; i++) bare.push(await timed('node', ['-e', '0']));
    // the tree walk that gives a dir source its cache key and writes its pack file, as a
    // build runs it (in this process)
    const scanMs: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await scanDir(TREE, { devices: false, packTo: path.join(work, 'walk.pack') });
      scanMs.push(performance.now() - t0);
    }

    const releaseRows = (): Row[] => {
      const sbR = median(relSb.map((t) => t.ms));
      const genR = median(relGen.map((t) => t.ms));
      const reR = median(relRe.map((t) => t.ms));
      return [
        { metric: `build, release compression: the same tree, ${release.label}, medians of ${relRuns}`, value: '' },
        { metric: '  stackboot build (a cache miss)', value: sec(sbR) },
        { metric: `  gensquashfs -D, ${release.label}`, value: sec(genR) },
        judged('  stackboot / gensquashfs', `${(sbR / genR).toFixed(2)}× (fixed cost ${sec(sbR - genR)})`, sbR / genR, RELEASE_RATIO_GOAL, `≤ ${RELEASE_RATIO_GOAL}×`),
        judged('  no-change rebuild (cache) / full build', `${((100 * reR) / sbR).toFixed(1)} % (${sec(reR)})`, (100 * reR) / sbR, RELEASE_REBUILD_GOAL_PCT, `≤ ${RELEASE_REBUILD_GOAL_PCT} %`),
        memoryRow(relSb),
        { metric: '  peak RSS, largest single process (time -v)', value: mib(Math.max(...relSb.map((t) => t.maxKb))) },
        { metric: '  peak private memory (RssAnon), process tree summed', value: mib(Math.max(...relSb.map((t) => t.anonKb))) },
      ];
    };
    const sbMs = median(sb.map((t) => t.ms));
    const genMs = median(gen.map((t) => t.ms));
    const mkMs = median(mk.map((t) => t.ms));
    const t2sMs = median(t2s.map((t) => t.ms));
    const reMs = median(re.map((t) => t.ms));
    const sizes = await Promise.all(['gen.sqfs', 'mk.sqfs', 't2s.sqfs'].map((f) => fs.stat(out(f)).then((s) => s.size)));
    const sbLayer = (await fs.readdir(path.join(out('sb'), 'layers'))).find((f) => f.endsWith('.sqfs'))!;
    const sbSize = (await fs.stat(path.join(out('sb'), 'layers', sbLayer))).size;
    const m = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
    const tree = `${scan.files} files, ${(scan.bytes / 1048576).toFixed(0)} MiB, ${scan.hardlinks} hard links`;
    return [
      { metric: `build: images/debian base tree (${tree}), zstd ${LEVEL}, medians of ${runs}`, value: '' },
      { metric: `  stackboot build (dir source → ${builder}), no cache`, value: `${sec(sbMs)} (${m(sbSize)})` },
      { metric: '  gensquashfs -D, same compressor/level', value: `${sec(genMs)} (${m(sizes[0])})` },
      { metric: '  mksquashfs, same compressor/level, -processors 2', value: `${sec(mkMs)} (${m(sizes[1])})` },
      { metric: '  GNU tar → tar2sqfs, shell pipe (the hard-link path)', value: `${sec(t2sMs)} (${m(sizes[2])})` },
      { metric: '  fixed cost: stackboot − gensquashfs', value: sec(sbMs - genMs), goal: 'reported in seconds, no ratio goal' },
      { metric: '  fixed cost: stackboot − (tar → tar2sqfs)', value: sec(sbMs - t2sMs) },
      { metric: '  no-change rebuild (cache)', value: `${sec(reMs)} (${((100 * reMs) / sbMs).toFixed(1)} % of the full build)`, goal: 'reported, no ratio goal' },
      memoryRow(sb),
      { metric: '  peak RSS, largest single process (time -v)', value: mib(Math.max(...sb.map((t) => t.maxKb))) },
      { metric: '  peak private memory (RssAnon), process tree summed', value: mib(Math.max(...sb.map((t) => t.anonKb))) },
      { metric: '  of which: CLI start-up alone (stackboot --version)', value: `${sec(median(start.map((t) => t.ms)))}, ${mib(Math.max(...start.map((t) => t.maxKb)))} RSS` },
      { metric: '  of which: Node.js itself (node -e 0)', value: `${sec(median(bare.map((t) => t.ms)))}, ${mib(Math.max(...bare.map((t) => t.maxKb)))} RSS` },
      { metric: '  of which: dir source tree walk (cache key)', value: sec(median(scanMs)) },
      { metric: '  peak RSS, gensquashfs -D alone (time -v)', value: mib(Math.max(...gen.map((t) => t.maxKb))) },
      { metric: '  peak private memory (RssAnon), gensquashfs -D alone', value: mib(Math.max(...gen.map((t) => t.anonKb))) },
      ...releaseRows(),
    ];
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

// run directly: node --import tsx bench/build.ts
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const rows = await benchBuild(Number(process.env.BENCH_RUNS ?? 3));
  for (const r of rows) process.stdout.write(`${r.metric.padEnd(64)} ${r.value.padEnd(22)} ${r.goal ?? ''}\n`);
}
