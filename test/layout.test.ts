/**
 * The layout's import rule (docs/layout.md): a file in one part imports another part only
 * through that part's index.ts, a part never imports its own index.ts, and the parts
 * import each other in one direction only (no cycle).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src');
/** the allowed direction: a part may import those listed for it */
const MAY_IMPORT: Record<string, string[]> = {
  sys: [],
  format: ['sys'],
  boot: ['sys', 'format'],
  registry: ['sys', 'format'],
  build: ['sys', 'format', 'boot'],
  media: ['sys', 'format', 'boot'],
  node: ['sys', 'format', 'boot', 'media', 'registry'],
  cli: ['sys', 'format', 'boot', 'build', 'media', 'node', 'registry'],
};

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = path.join(dir, n);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

describe('layout', () => {
  const all = files(SRC).filter((f) => path.relative(SRC, f).includes(path.sep));
  it('every part is known', () => {
    expect(new Set(all.map((f) => path.relative(SRC, f).split(path.sep)[0]))).toEqual(new Set(Object.keys(MAY_IMPORT)));
  });

  it('parts import each other only through index.ts, and only in one direction', () => {
    const wrong: string[] = [];
    for (const f of all) {
      const part = path.relative(SRC, f).split(path.sep)[0]!;
      const text = readFileSync(f, 'utf8');
      for (const m of text.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
        const target = path.resolve(path.dirname(f), m[1]!);
        const rel = path.relative(SRC, target);
        const tpart = rel.split(path.sep)[0]!;
        const where = `${path.relative(SRC, f)} imports ${m[1]}`;
        if (tpart === part) {
          if (rel === path.join(part, 'index.js') && part !== 'cli') wrong.push(`${where}: its own part's index (import the sibling file)`);
          continue;
        }
        if (rel !== path.join(tpart, 'index.js')) wrong.push(`${where}: not through ${tpart}/index.ts`);
        if (!MAY_IMPORT[part]!.includes(tpart)) wrong.push(`${where}: ${part} may not import ${tpart}`);
      }
    }
    expect(wrong).toEqual([]);
  });
});
