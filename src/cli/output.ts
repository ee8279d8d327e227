/**
 * CLI output helpers: human lines on stdout, progress on stderr (a bar on a TTY,
 * plain lines otherwise), and one JSON object with --json.
 */
import type { ProgressEvent, ProgressSink } from '../sys/index.js';

export interface Out {
  json: boolean;
  verbose: boolean;
  /** a summary line: not with --json or --quiet */
  line(text: string): void;
  /** a line of what the command was asked to show (status, doctor): not with --json */
  report(text: string): void;
  result(obj: unknown): void;
  progress: ProgressSink;
}

function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${u[i]}`;
}

/** Length of an unfinished progress line on a TTY's stderr (its bar, no newline yet). */
let lastLen = 0;

/**
 * Erases an unfinished progress line, so what is printed next (a result line on stdout,
 * an error on stderr) starts at the left edge instead of after the bar.
 */
export function endProgressLine(): void {
  if (lastLen === 0) return;
  process.stderr.write('\r' + ' '.repeat(lastLen) + '\r');
  lastLen = 0;
}

export function makeOut(opts: { json?: boolean; verbose?: boolean; quiet?: boolean; [k: string]: unknown }): Out {
  const json = !!opts.json;
  const tty = process.stderr.isTTY && !json;
  let lastPlain = 0;
  const progress: ProgressSink = (ev: ProgressEvent) => {
    if (opts.quiet) return;
    if (json) {
      // --json: progress events are NDJSON lines on stderr so stdout stays one object
      process.stderr.write(JSON.stringify({ progress: ev }) + '\n');
      return;
    }
    const pct = ev.total ? Math.min(100, Math.floor((ev.done / ev.total) * 100)) : undefined;
    let text = `${ev.task}`;
    if (ev.total) {
      text += ` ${pct}% ${ev.unit === 'bytes' ? `${fmtBytes(ev.done)}/${fmtBytes(ev.total)}` : `${ev.done}/${ev.total}`}`;
    }
    if (ev.rate) text += ` ${fmtBytes(ev.rate)}/s`;
    if (ev.eta !== undefined && Number.isFinite(ev.eta)) text += ` eta ${Math.ceil(ev.eta)}s`;
    if (ev.note) text += ` ${ev.note}`;
    // a note (e.g. what a layer leaves out) stays on its own line: never overwritten by
    // the next bar, never skipped by the 2-second spacing of plain lines
    const keep = ev.final || !!ev.note;
    if (tty) {
      const width = 24;
      const bar = pct === undefined ? '' : '[' + '#'.repeat(Math.round((pct / 100) * width)).padEnd(width, '.') + '] ';
      const s = `\r${bar}${text}`;
      process.stderr.write(s.padEnd(lastLen) + (keep ? '\n' : ''));
      lastLen = keep ? 0 : s.length;
    } else {
      const now = Date.now();
      if (keep || now - lastPlain > 2000) {
        process.stderr.write(text + '\n');
        lastPlain = now;
      }
    }
  };
  return {
    json,
    verbose: !!opts.verbose,
    line: (t) => {
      if (json || opts.quiet) return;
      endProgressLine();
      process.stdout.write(t + '\n');
    },
    report: (t) => {
      if (json) return;
      endProgressLine();
      process.stdout.write(t + '\n');
    },
    result: (obj) => {
      if (json) process.stdout.write(JSON.stringify(obj, null, 2) + '\n');
    },
    progress,
  };
}

export { fmtBytes };
