/**
 * The command modules against yargs' strict mode: every option a handler reads must be
 * declared, or the CLI refuses it as an unknown argument (image and migrate read
 * --dry-run without declaring it, and it only worked while yargs ran handlers after a
 * failed check). A static look at each command file's source.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli/commands');
const GLOBAL = ['json', 'verbose', 'quiet', 'help', 'version'];
const camel = (x: string) => x.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

describe('command modules', () => {
  for (const file of readdirSync(DIR).filter((f) => f.endsWith('.ts') && f !== 'index.ts')) {
    it(`${file}: every option its handlers read is declared`, () => {
      const src = readFileSync(path.join(DIR, file), 'utf8');
      const declared = new Set(GLOBAL);
      for (const m of src.matchAll(/\.(?:option|positional)\('([a-z0-9-]+)'/g)) {
        declared.add(camel(m[1]));
        // yargs' boolean negation: --no-x is read as x === false
        if (m[1].startsWith('no-')) declared.add(camel(m[1].slice(3)));
      }
      for (const m of src.matchAll(/command: '([^']+)'/g)) for (const p of m[1].matchAll(/[<[]([a-z-]+)[\]>]/g)) declared.add(camel(p[1]));
      const read = new Set([...src.matchAll(/\ba\.([a-zA-Z]+)/g)].map((m) => m[1]));
      expect([...read].filter((r) => !declared.has(r))).toEqual([]);
    });
  }
});
