/**
 * Option checks shared by the commands, as yargs `coerce` functions: a bad value stops
 * the command before it runs, with a one-line USAGE error that names the flag (the
 * library checks its inputs too, but names them as the library knows them).
 */
import { StackbootError } from '../errors.js';

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
