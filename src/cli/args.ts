/**
 * Option checks shared by the commands, as yargs `coerce` functions: a bad value stops
 * the command before it runs, with a one-line USAGE error that names the flag (the
 * library checks its inputs too, but names them as the library knows them).
 */
import os from 'node:os';
import path from 'node:path';
import { StackbootError, parseSourceDateEpoch } from '../sys/index.js';

/** The layer cache folder when --cache is not given: $XDG_CACHE_HOME/stackboot or ~/.cache/stackboot. */
export const defaultCacheDir = (): string => path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'stackboot');

/** A size such as 10G, 500M, 64K or 1048576 (bytes; K, M, G, T are powers of 1024). */
export function byteSize(flag: string): (v: unknown) => number | undefined {
  return (v) => {
    if (v === undefined) return undefined;
    if (Array.isArray(v)) throw new StackbootError('USAGE', `--${flag} is given more than once`);
    const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(String(v).trim());
    if (!m) throw new StackbootError('USAGE', `--${flag} must be a size such as 10G, 500M or 1048576, got ${JSON.stringify(String(v))}`);
    return Math.floor(Number(m[1]) * 1024 ** ' KMGT'.indexOf(m[2].toUpperCase() || ' '));
  };
}

/** The build date of this run: SOURCE_DATE_EPOCH, checked (see src/sys/epoch.ts). */
export const sourceDateEpoch = (): number => parseSourceDateEpoch(process.env.SOURCE_DATE_EPOCH);

/** A whole number from `min` to `max` (yargs has already turned the text into a number). */
export function wholeNumber(flag: string, min: number, max = Number.MAX_SAFE_INTEGER): (v: unknown) => number | undefined {
  const range = max === Number.MAX_SAFE_INTEGER ? `of ${min} or more` : `from ${min} to ${max}`;
  return (v) => {
    if (v === undefined) return undefined;
    if (Array.isArray(v)) throw new StackbootError('USAGE', `--${flag} is given more than once`);
    const n = typeof v === 'number' ? v : Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new StackbootError('USAGE', `--${flag} must be a whole number ${range}, got ${Number.isNaN(n) ? 'something that is not a number' : String(v)}`);
    }
    return n;
  };
}

/**
 * A lone `-` on the command line (stdin for `install -`, stdout for `bundle -o -`), as
 * yargs hands it over. yargs-parser turns it into '' in two places: a `--out -` value
 * (it takes `-` for the start of a flag) and a string positional (yargs parses
 * positionals again as `--source -`). main.ts swaps every lone `-` for this before
 * parsing: a NUL cannot be in a path, so it is never a real file name.
 */
export const STDIO = '\0-';

/** argv with each lone `-` replaced by STDIO (see there). */
export function markStdio(argv: string[]): string[] {
  return argv.map((a) => (a === '-' ? STDIO : a));
}

/**
 * A yargs middleware, after parsing: STDIO back to `-` in every value, so a handler sees
 * what was typed (`install -` reads stdin; for a command that takes no stdin, `-` is just
 * a name it will not find, never a path with a NUL in it).
 */
export function unmarkStdio(argv: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(argv)) {
    if (v === STDIO) argv[k] = '-';
    else if (Array.isArray(v)) argv[k] = v.map((x) => (x === STDIO ? '-' : x));
  }
}

/** True for `-` given as stdin/stdout. */
export const isStdio = (v: unknown): boolean => v === '-';

/**
 * A yargs middleware check: an option given twice is refused (yargs would make an array
 * of the values, which reaches a handler as "a,b" or a type error) unless it is declared
 * repeatable (`array: true`, e.g. --set). `repeatable` holds those names.
 */
export function refuseRepeats(argv: Record<string, unknown>, repeatable: Set<string>): void {
  const given = Object.keys(argv).filter((k) => k !== '_' && k !== '$0' && Array.isArray(argv[k]) && !repeatable.has(k));
  if (!given.length) return;
  // yargs keeps each option under its dashed name, its camelCase name and its aliases:
  // name the dashed long form
  const name = given.find((k) => k.length > 1 && !/[A-Z]/.test(k)) ?? given[0];
  const flag = `${name.length > 1 ? '--' : '-'}${name}`;
  // `--cache DIR --no-cache`: yargs makes [DIR, false] of the pair
  if ((argv[name] as unknown[]).includes(false)) throw new StackbootError('USAGE', `${flag} and --no-${name} contradict each other`);
  throw new StackbootError('USAGE', `${flag} is given more than once`);
}
