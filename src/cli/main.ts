#!/usr/bin/env node
/**
 * The stackboot CLI. The only module that touches process.exitCode: every command is a
 * thin module in ./commands that maps argv to one library call; errors become a one-line
 * message and the error's exit code, and --verbose prints the cause chain.
 */
import { readFileSync } from 'node:fs';
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { causeChain, exitCodeOf, StackbootError, interrupted } from '../sys/index.js';
import { commands } from './commands/index.js';
import { endProgressLine } from './output.js';
import { markStdio, refuseRepeats, STDIO, unmarkStdio } from './args.js';

export interface GlobalArgs {
  json?: boolean;
  verbose?: boolean;
  'dry-run'?: boolean;
  quiet?: boolean;
}

/** Set by scripts/bundle-cli.mjs in the bundle. */
declare const __STACKBOOT_VERSION__: string | undefined;

/** The package version, wherever the CLI runs from (yargs would look in the working folder). */
function version(): string {
  if (typeof __STACKBOOT_VERSION__ === 'string') return __STACKBOOT_VERSION__;
  try {
    // tsc's dist/cli/main.js and tsx's src/cli/main.ts: package.json is two folders up
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/**
 * yargs renders the whole help text into a cache as each command starts, for a failure
 * that may follow: ~20 ms and ~2 MiB (string widths through ICU) on every run, on a node's
 * boot-time health check too. This CLI prints help only for a failed parse, which renders
 * it then, so the cache is switched off. (yargs 18 keeps one usage object per parser.)
 */
function skipHelpCache(parser: Argv): void {
  const internal = parser as unknown as { getInternalMethods?: () => { getUsageInstance?: () => { cacheHelpMessage?: () => void } } };
  const usage = internal.getInternalMethods?.().getUsageInstance?.();
  if (usage && typeof usage.cacheHelpMessage === 'function') usage.cacheHelpMessage = () => {};
}

/** The command named on the command line (for a pointer to its help). */
function commandName(argv: string[]): string | undefined {
  const first = argv.find((a) => !a.startsWith('-'));
  return first && commands.some((c) => String(c.command).split(' ')[0] === first) ? first : undefined;
}

/** bin/stackboot's malloc setting is for this process, not for the tools it starts. */
function dropOwnTunables(env: NodeJS.ProcessEnv): void {
  const own = env.STACKBOOT_GLIBC_TUNABLES;
  if (own === undefined) return;
  if (env.GLIBC_TUNABLES === own) delete env.GLIBC_TUNABLES;
  delete env.STACKBOOT_GLIBC_TUNABLES;
}

async function main(argv: string[]): Promise<void> {
  let failed: unknown;
  let parseFailed = false;
  const parser: Argv = yargs(argv)
    .scriptName('stackboot')
    .version(version())
    .option('json', { type: 'boolean', describe: 'print the result as JSON (progress as JSON lines on stderr)' })
    .option('verbose', { alias: 'v', type: 'boolean', describe: 'show the cause chain of errors' })
    .option('quiet', { alias: 'q', type: 'boolean', describe: 'no progress or summary lines (what status and doctor report still prints)' })
    .strict()
    // an option given twice is an error, not an array for a handler that wants one value
    .middleware(((a: Record<string, unknown>, y: { getOptions(): { array: string[] } }) => refuseRepeats(a, new Set(y.getOptions().array))) as never, true)
    // a lone `-` went through the parser as STDIO (args.ts); handlers get `-` back
    .middleware(((a: Record<string, unknown>) => unmarkStdio(a)) as never)
    .demandCommand(1, 'name a command (see --help)')
    .recommendCommands()
    .wrap(Math.min(110, process.stdout.columns || 100))
    // yargs goes on to run the command when this returns: it must throw (a bad option
    // must never reach a handler that installs or flashes)
    .fail((msg, err) => {
      if (err) throw err;
      parseFailed = true;
      throw new StackbootError('USAGE', msg);
    });
  for (const c of commands) parser.command(c as never);
  skipHelpCache(parser);
  try {
    await parser.parseAsync();
  } catch (e) {
    failed = e;
    // yargs' own errors (an option's coerce check, src/cli/args.ts, comes back as one)
    if (e instanceof Error && e.name === 'YError') {
      failed = new StackbootError('USAGE', e.message);
      parseFailed = true;
    }
  }
  if (failed) {
    endProgressLine();
    const verbose = argv.includes('--verbose') || argv.includes('-v');
    const chain = causeChain(failed);
    process.stderr.write(`stackboot: ${chain[0] ?? 'failed'}\n`);
    if (verbose) {
      for (const c of chain.slice(1)) process.stderr.write(`  caused by: ${c}\n`);
      if (failed instanceof StackbootError && failed.details) process.stderr.write(`  details: ${JSON.stringify(failed.details)}\n`);
      if (!(failed instanceof StackbootError) && failed instanceof Error && failed.stack) process.stderr.write(failed.stack + '\n');
    } else if (chain.length > 1) {
      process.stderr.write(`  (run with --verbose for the cause)\n`);
    }
    // a failed parse shows the command's help; a command that refuses its input points to it
    if (parseFailed) parser.showHelp((s) => process.stderr.write(s + '\n'));
    else if (failed instanceof StackbootError && failed.code === 'USAGE') {
      const cmd = commandName(argv);
      process.stderr.write(`  (see: stackboot ${cmd ? `${cmd} ` : ''}--help)\n`);
    }
    process.exitCode = exitCodeOf(failed);
    // --json: the failure as one JSON object too, where the result would have gone (stderr
    // when stdout carries data: bundle --out -), with the details (MISSING_LAYERS' list)
    if (argv.includes('--json')) {
      const error = {
        code: failed instanceof StackbootError ? failed.code : 'INTERNAL',
        exitCode: process.exitCode,
        message: failed instanceof Error ? failed.message : String(failed),
        causes: chain.slice(1),
        details: failed instanceof StackbootError ? (failed.details ?? null) : null,
      };
      (argv.includes(STDIO) ? process.stderr : process.stdout).write(JSON.stringify({ error }) + '\n');
    }
  }
}

/**
 * Ctrl-C or SIGTERM: stop the tools, undo the work in progress (temp files, a run
 * source's mounts: src/sys/interrupt.ts), then exit 130 / 143. A second signal during that
 * exits at once.
 */
function exitCleanlyOnSignals(): void {
  let cleaning = false;
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    // `on`, not `once`: execa's exit hook (signal-exit) re-raises a signal that no other
    // listener is left for, which killed the process in the middle of its cleanup
    process.on(sig, () => {
      if (cleaning) process.exit(code);
      cleaning = true;
      endProgressLine();
      process.stderr.write(`stackboot: interrupted (${sig}); cleaning up\n`);
      void interrupted().finally(() => process.exit(code));
    });
  }
}

dropOwnTunables(process.env);
exitCleanlyOnSignals();
void main(markStdio(hideBin(process.argv)));
