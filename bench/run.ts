/**
 * `npm run bench`: runs every benchmark and prints one table. Each part is its own
 * module; a part whose prerequisites are missing says so in its row instead of failing
 * the whole run. A row a part has judged against its goal (`ok`) says met or not met in
 * the goal column, and the run ends with the list of goals not met.
 * `npx tsx bench/run.ts <part>…` runs only the parts named (build, boot, flash, delta, kexec, verity, registry, chunks).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface Row {
  metric: string;
  value: string;
  goal?: string;
  /** whether the goal is met, where the part judged it */
  ok?: boolean;
}

const here = path.dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);

async function part(name: string, file: string, fn: string, ...args: unknown[]): Promise<Row[]> {
  if (only.length && !only.includes(name)) return [];
  if (!existsSync(path.join(here, file))) return [{ metric: name, value: `not available (${file} missing)` }];
  process.stderr.write(`bench: ${name}…\n`);
  const t0 = Date.now();
  try {
    const mod = await import(`./${file.replace(/\.ts$/, '.js')}`).catch(() => import(`./${file}`));
    const rows: Row[] = await mod[fn](...args);
    process.stderr.write(`bench: ${name} done in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    return rows;
  } catch (e) {
    return [{ metric: name, value: `failed: ${(e as Error).message.split('\n')[0]}` }];
  }
}

function table(rows: Row[]): string {
  const head = ['metric', 'value', 'goal'];
  const body = rows.map((r) => [r.metric, r.value, r.goal ?? '']);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(w[i])).join(' | ')} |`;
  return [line(head), `|${w.map((n) => '-'.repeat(n + 2)).join('|')}|`, ...body.map(line)].join('\n');
}

/**
 * The delta benchmark's inputs: images/debian as it is, and the same stack with a change
 * to its app layer (one more package), built into .cache/bench/debian-{old,new}; the
 * verity part boots the first as its Debian root.
 */
async function prepareDebianDelta(): Promise<void> {
  if (only.length && !only.includes('delta') && !only.includes('verity')) return;
  const { loadRecipe } = await import('../src/build/recipe.js');
  const { buildStack } = await import('../src/build/stack.js');
  const { run } = await import('../src/sys/exec.js');
  const repo = path.resolve(here, '..');
  const prep = await run('bash', [path.join(repo, 'images/debian/prepare.sh')], { reject: false });
  if (prep.exitCode !== 0) {
    process.stderr.write(`bench: images/debian cannot be prepared (${prep.stderr.trim().split('\n').pop()}); the delta row uses the demo\n`);
    return;
  }
  const arch = 'amd64';
  for (const [name, extra] of [['debian-old', ''], ['debian-new', ' less']] as const) {
    const recipe = await loadRecipe(path.join(repo, 'images/debian'), { arch });
    const app = recipe.layers.find((l) => l.name === 'app');
    if (app?.source.type === 'run' && extra) app.source.command = app.source.command.replace('busybox curl', `busybox curl${extra}`);
    process.stderr.write(`bench: building ${name}…\n`);
    await buildStack(recipe, { outDir: path.join(repo, '.cache/bench', name), cacheDir: path.join(repo, '.cache/bench/layer-cache'), epoch: 0, arch, uid: process.getuid?.(), progress: () => {} });
  }
}

async function flashRows(): Promise<Row[]> {
  if (only.length && !only.includes('flash')) return [];
  if (!existsSync(path.join(here, 'flash.ts'))) return [{ metric: 'flash', value: 'not available' }];
  process.stderr.write('bench: flash…\n');
  const { benchFlash } = await import('./flash.js');
  const r = await benchFlash({ runs: 3 });
  const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
  return [
    { metric: 'flash: 512 MiB image, ~20 % used: bytes written, stackboot vs dd', value: `${mb(r.bytesFlashed)} vs ${mb(r.ddBytes)}` },
    { metric: 'flash: wall time (write + sync), stackboot vs dd of the whole image', value: `${r.flashMs.toFixed(0)} ms vs ${r.ddMs.toFixed(0)} ms` },
    { metric: 'flash: read-back verify (sha256 per range)', value: `${r.verifyMs.toFixed(0)} ms` },
  ];
}

await prepareDebianDelta().catch((e) => process.stderr.write(`bench: delta inputs: ${(e as Error).message}\n`));

const rows: Row[] = [
  ...(await part('build', 'build.ts', 'benchBuild')),
  ...(await part('boot', 'boot.ts', 'benchBoot')),
  ...(await flashRows()),
  ...(await part('delta', 'delta.ts', 'benchDeltaRows')),
  ...(await part('kexec', 'kexec.ts', 'benchKexec')),
  ...(await part('verity', 'verity.ts', 'benchVerity')),
  ...(await part('registry', 'registry.ts', 'benchRegistryRows')),
  ...(await part('chunks', 'chunks.ts', 'benchChunks')),
];
process.stdout.write(table(rows) + '\n');
const unmet = rows.filter((r) => r.ok === false);
process.stdout.write(unmet.length ? `goals not met: ${unmet.map((r) => `${r.metric.trim()} ${r.value} (goal ${r.goal})`).join('; ')}\n` : 'every judged goal is met\n');
