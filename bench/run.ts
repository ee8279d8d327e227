/**
 * `npm run bench`: runs every benchmark and prints one table. Each part is its own
 * module; a part whose prerequisites are missing says so in its row instead of failing
 * the whole run.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface Row {
  metric: string;
  value: string;
  goal?: string;
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

const rows: Row[] = [
  ...(await part('build', 'build.ts', 'benchBuild')),
  ...(await part('boot', 'boot.ts', 'benchBoot')),
  ...(await part('flash', 'flash.ts', 'benchFlash')),
  ...(await part('delta', 'delta.ts', 'benchDeltaRows')),
];
process.stdout.write(table(rows) + '\n');
