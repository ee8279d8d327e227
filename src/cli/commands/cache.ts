/** `stackboot cache [show|prune]`: the layer cache's size, and pruning it. */
import type { CommandModule } from 'yargs';
import { fmtBytes, makeOut } from '../output.js';
import { byteSize, defaultCacheDir, wholeNumber } from '../args.js';
import { StackbootError } from '../../sys/index.js';

export const cacheCommand: CommandModule<any, any> = {
  command: 'cache [action]',
  describe: 'show the layer cache (show), or remove its least recently used layers (prune)',
  builder: (y) =>
    y
      .positional('action', { type: 'string', choices: ['show', 'prune'], default: 'show' })
      .option('cache', { type: 'string', describe: 'layer cache folder (default: $XDG_CACHE_HOME/stackboot or ~/.cache/stackboot)' })
      .option('max-size', { type: 'string', coerce: byteSize('max-size'), describe: 'prune: keep at most this much (e.g. 10G), least recently used first out' })
      .option('older-than', { type: 'number', coerce: wholeNumber('older-than', 0, 36500), describe: 'prune: remove layers unused for more than this many days' })
      .option('dry-run', { type: 'boolean', describe: 'prune: print the plan and remove nothing' })
      .example('$0 cache prune --max-size 20G --older-than 30', 'keep 20 GiB at most, nothing unused for a month'),
  handler: async (a) => {
    const { cacheUsage, planPrune, prune } = await import('../../build/index.js');
    const out = makeOut(a);
    const dir: string = a.cache ?? defaultCacheDir();
    if (a.action === 'show') {
      if (a.maxSize !== undefined || a.olderThan !== undefined || a.dryRun) throw new StackbootError('USAGE', '--max-size, --older-than and --dry-run are for "cache prune"');
      const u = await cacheUsage(dir);
      out.result(u);
      out.report(`${dir}: ${u.layers.length} layer(s), ${fmtBytes(u.bytes)}${u.stray.length ? `; ${u.stray.length} stray file(s), ${fmtBytes(u.stray.reduce((n, s) => n + s.bytes, 0))}` : ''}`);
      for (const l of u.layers) out.report(`  ${l.digest.slice(0, 12)}  ${fmtBytes(l.bytes).padStart(10)}  last used ${new Date(l.used).toISOString().slice(0, 16).replace('T', ' ')}`);
      return;
    }
    if (a.maxSize === undefined && a.olderThan === undefined) throw new StackbootError('USAGE', 'cache prune needs --max-size or --older-than (or both)');
    const plan = await planPrune(dir, { maxBytes: a.maxSize, olderThanDays: a.olderThan });
    if (!a.dryRun) await prune(plan);
    out.result({ dryRun: !!a.dryRun, plan });
    const verb = a.dryRun ? 'would remove' : 'removed';
    out.line(`${verb} ${plan.remove.length} layer(s) and ${plan.stray.length} stray file(s), ${fmtBytes(plan.freed)}; ${fmtBytes(plan.left)} left in ${dir}`);
    for (const l of plan.remove) out.line(`  ${l.digest.slice(0, 12)}  ${fmtBytes(l.bytes).padStart(10)}  ${l.why}`);
  },
};
