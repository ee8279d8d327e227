/** Node-side commands: install, rollback, gc, doctor, status, mark-good, mark-bad, factory-reset. */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { Argv, CommandModule } from 'yargs';
import { StackbootError } from '../../sys/index.js';
import { type ChunkSource, type InstallEvent, type NodeConfig, NODE_CONFIG } from '../../node/index.js';
import type { Store } from '../../format/index.js';
import { fmtBytes, makeOut } from '../output.js';
import { isStdio, wholeNumber } from '../args.js';

function nodeOptions<T>(y: Argv<T>) {
  return y
    .option('store', { type: 'string', describe: 'a store folder (default: the booted store from /run/stackboot/booted)' })
    .option('booted-slot', { type: 'string', choices: ['a', 'b', 'none'], describe: 'with --store: the slot to treat as booted' })
    .option('config', { type: 'string', describe: `node config (default ${NODE_CONFIG})` })
    .option('run-dir', { type: 'string', describe: 'default /run', hidden: true });
}

// the library modules are loaded by the command that needs them, so a start stays small
const loadConfig = async (file?: string) => (await import('../../node/index.js')).loadNodeConfig(file);
const rollbackLib = () => import('../../node/index.js');

async function ctxOf(a: any) {
  const { nodeContext } = await import('../../node/index.js');
  return nodeContext({ store: a.store, bootedSlot: a.bootedSlot, runDir: a.runDir });
}

/**
 * `oci://…`: the registry source (signature checked first, then only the layers the store
 * lacks; those with a chunk index are rebuilt from the store's chunks, the missing ones
 * fetched from the layer's blob, unless --no-chunks).
 */
async function openRegistry(src: string, a: any, cfg: NodeConfig, store: Store, note: (s: string) => void): Promise<{ stream: Readable; label: string; explain(e: unknown): unknown; chunkSource?: ChunkSource }> {
  const { connectRegistry, openRegistrySource, parseReference, installError } = await import('../../registry/index.js');
  const { registryChunkSource } = await import('../../node/index.js');
  const ref = parseReference(src);
  const client = await connectRegistry(ref, { authFile: cfg.node.REGISTRY_AUTH ?? undefined, rootOnly: true, caFile: cfg.node.REGISTRY_CA ?? undefined, insecure: a.insecure, onNote: note });
  const onRetry = (x: { digest: string; reason: string; received: number; attempt: number }) => note(`layer ${x.digest.slice(7, 19)}: ${x.reason}; resuming at byte ${x.received} (try ${x.attempt})`);
  const r = await openRegistrySource({ client, ref, store, keysDir: a.keys ?? cfg.node.KEYS_DIR, allowUnsigned: cfg.node.ALLOW_UNSIGNED, headOnly: a.dryRun, chunks: a.chunks !== false, onRetry });
  if (a.json) process.stdout.write(JSON.stringify({ event: 'fetch', reference: r.label, dryRun: !!a.dryRun, layers: r.fetch, bytes: r.bytes, chunked: r.chunked, have: r.have.length }) + '\n');
  else {
    const whole = r.fetch.length ? `${a.dryRun ? 'would fetch' : 'fetching'} ${r.fetch.map((l) => l.name).join(', ')} (${r.bytes} bytes)` : 'no layer to fetch whole';
    const chunked = r.chunked.length ? `; ${r.chunked.map((l) => l.name).join(', ')} from chunks` : '';
    note(`${r.label}: ${whole}${chunked}; ${r.have.length} layer(s) in the store`);
  }
  return { stream: r.stream, label: r.label, explain: (e) => installError(r, e), ...(r.chunked.length ? { chunkSource: registryChunkSource(client, r.remote, { onRetry }) } : {}) };
}

async function openSource(src: string, allowUnsigned: boolean, onRetry: (s: string) => void): Promise<{ stream: Readable; label: string }> {
  if (isStdio(src)) return { stream: process.stdin, label: 'stdin' };
  const [{ download, isUrl }, { bundleStreamFromBuild }] = await Promise.all([import('../../node/index.js'), import('../../format/index.js')]);
  if (isUrl(src)) return { stream: download(src, { onRetry: (r) => onRetry(`download interrupted at byte ${r.received} (${r.reason}); resuming (try ${r.attempt})`) }), label: src };
  const st = await stat(src).catch((e) => {
    throw new StackbootError('USAGE', `${src}: no such bundle file, build output or URL`, { cause: e });
  });
  if (st.isDirectory()) return { stream: bundleStreamFromBuild(src, { allowUnsigned }), label: src };
  return { stream: createReadStream(src, { highWaterMark: 1 << 20 }), label: src };
}

async function chunkSourceOf(url: string, note: (s: string) => void) {
  const { httpChunkSource, isUrl } = await import('../../node/index.js');
  if (!isUrl(url)) throw new StackbootError('USAGE', `--chunks-from takes an http(s) URL of a build output folder, got ${JSON.stringify(url)}`);
  return httpChunkSource(url, { onRetry: (r) => note(`${r.what}: ${r.reason}; resuming at byte ${r.received} of the range (try ${r.attempt})`) });
}

export const installCommand: CommandModule<any, any> = {
  command: 'install <source>',
  describe: 'install a stack into the inactive slot (bundle file, - for stdin, http(s) URL, oci:// reference, or build output)',
  builder: (y) =>
    nodeOptions(y)
      .positional('source', { type: 'string', demandOption: true })
      .option('keys', { type: 'string', describe: 'public keys folder (default: KEYS_DIR of the config, /etc/stackboot/keys)' })
      .option('tries', { type: 'number', coerce: wholeNumber('tries', 1, 1000), describe: 'tries of the new pending stack (default: TRIES of the config)' })
      .option('dry-run', { type: 'boolean', describe: 'plan and check only' })
      .option('allow-downgrade', { type: 'boolean', describe: 'install a stack older than the store\'s newest good one (an event says so)' })
      .option('insecure', { type: 'boolean', describe: 'oci:// over plain HTTP to any host (loud)' })
      .option('chunks-from', { type: 'string', describe: 'http(s) URL of the build output folder: layers the bundle does not carry are rebuilt from the store\'s chunks, fetching only the missing ones (Range requests)' })
      .option('chunks', { type: 'boolean', default: true, describe: 'oci://: rebuild a lacking layer that has a chunk index from the store\'s chunks, fetching only the missing ones from its blob (--no-chunks: fetch it whole)' })
      .example('$0 install https://updates.example/node-2.stackbundle', '')
      .example('$0 install oci://registry.example/fleet/node:2', 'credentials: REGISTRY_AUTH of the node config')
      .example('$0 install https://updates.example/node-2/delta.stackbundle --chunks-from https://updates.example/node-2', 'a chunk delta'),
  handler: async (a) => {
    const { install } = await import('../../node/index.js');
    const out = makeOut(a);
    const cfg = await loadConfig(a.config);
    const ctx = await ctxOf(a);
    const jsonLine = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
    const note = (event: string) => (s: string) => (a.json ? jsonLine({ event, note: s }) : process.stderr.write(`stackboot: ${s}\n`));
    if (a.chunksFrom && a.source.startsWith('oci://')) throw new StackbootError('USAGE', '--chunks-from is for bundles and URLs: an oci:// stack carries its chunk indexes');
    const src: { stream: Readable; label: string; explain(e: unknown): unknown; chunkSource?: ChunkSource } = a.source.startsWith('oci://') ? await openRegistry(a.source, a, cfg, ctx.store, note('note')) : { ...(await openSource(a.source, cfg.node.ALLOW_UNSIGNED, note('retry'))), explain: (e: unknown) => e };
    const { stream, label, explain } = src;
    const onEvent = (ev: InstallEvent) => {
      if (a.json) return jsonLine(ev);
      if (ev.event === 'plan') out.line(`installing ${ev.name} ${ev.version} (${ev.stack.slice(0, 12)}) into slot ${ev.slot}: ${ev.write.length} layer(s) to write (${fmtBytes(ev.bytes)}), ${ev.have.length} present; ${fmtBytes(ev.free)} free${ev.downgradeFrom ? `; a DOWNGRADE from ${ev.downgradeFrom}` : ''}`);
      else if (ev.event === 'layer') out.line(`  layer ${ev.name} ${ev.digest.slice(0, 12)} ${fmtBytes(ev.size)}`);
      else if (ev.event === 'chunks' && ev.fetched === undefined) {
        out.line(`  layer ${ev.name} ${ev.digest.slice(0, 12)} from chunks: ${fmtBytes(ev.had)} in the store, ${fmtBytes(ev.fetch)} to fetch (${((ev.fetch / ev.size) * 100).toFixed(1)} %)${ev.rebuilt ? `; ${fmtBytes(ev.rebuilt)} of changed blocks rebuilt from frame deltas` : ''}`);
        if (ev.framesOff) out.line(`    no frame deltas: ${ev.framesOff}`);
      } else if (ev.event === 'chunks') {
        out.line(ev.fallback ? `  layer ${ev.name}: fetched whole (${fmtBytes(ev.fetched!)}): ${ev.fallback}` : `  layer ${ev.name} rebuilt: ${fmtBytes(ev.had)} from the store, ${fmtBytes(ev.fetched!)} fetched`);
        if (ev.framesOff) out.line(`    frame deltas stopped part way (the rest came as chunks): ${ev.framesOff}`);
      }
      else if (a.verbose && ev.event === 'step') out.line(`  ${ev.step}`);
    };
    const r = await install({
      ctx,
      stream,
      label,
      keysDir: a.keys ?? cfg.node.KEYS_DIR,
      allowUnsigned: cfg.node.ALLOW_UNSIGNED,
      allowDowngrade: a.allowDowngrade,
      compatible: cfg.node.COMPATIBLE,
      tries: a.tries ?? cfg.boot.TRIES,
      minFree: cfg.node.MIN_FREE,
      dryRun: a.dryRun,
      progress: a.json ? () => {} : out.progress,
      onEvent,
      ...(a.chunksFrom ? { chunkSource: await chunkSourceOf(a.chunksFrom, note('retry')) } : src.chunkSource ? { chunkSource: src.chunkSource } : {}),
    }).catch((e) => {
      throw explain(e);
    });
    if (stream !== process.stdin) stream.destroy();
    if (a.json) jsonLine({ event: 'result', installed: r.installed, dryRun: r.dryRun, already: r.already ?? null, slot: r.plan?.slot ?? null, stack: r.plan?.stack ?? null });
    else if (r.already) out.line(`already installed in slot ${r.already.slot} (${r.already.status})`);
    else if (r.dryRun) out.line('dry run: checks passed, nothing written');
    else out.line(`slot ${r.plan!.slot} pending with ${a.tries ?? cfg.boot.TRIES} tries: reboot to try it`);
  },
};

export const rollbackCommand: CommandModule<any, any> = {
  command: 'rollback',
  describe: 'make the previous good stack the one to boot next',
  builder: (y) => nodeOptions(y).option('dry-run', { type: 'boolean' }),
  handler: async (a) => {
    const out = makeOut(a);
    const { rollback } = await rollbackLib();
    const r = await rollback(await ctxOf(a), { dryRun: a.dryRun });
    out.result({ to: r.to, dropped: r.dropped ?? null, dryRun: r.dryRun });
    out.line(`${r.dryRun ? 'would boot' : 'next boot:'} slot ${r.to}${r.dropped ? ` (pending slot ${r.dropped} marked bad)` : ''}`);
  },
};

export const gcCommand: CommandModule<any, any> = {
  command: 'gc',
  describe: 'remove layers that no slot references (never the booted stack\'s)',
  builder: (y) => nodeOptions(y).option('dry-run', { type: 'boolean' }),
  handler: async (a) => {
    const out = makeOut(a);
    const { gc } = await import('../../node/index.js');
    const r = await gc(await ctxOf(a), { dryRun: a.dryRun });
    out.result(r);
    out.line(`${r.dryRun ? 'would remove' : 'removed'} ${r.removed.length} layer(s), ${fmtBytes(r.freed)}${r.partials.length ? ` and ${r.partials.length} partial file(s)` : ''}; ${r.kept} referenced`);
  },
};

export const doctorCommand: CommandModule<any, any> = {
  command: 'doctor',
  describe: 'report what is wrong on a node: modules, keys, space, config, stacks',
  builder: (y) => nodeOptions(y).option('full', { type: 'boolean', describe: 'sha256 every layer' }).option('keys', { type: 'string', describe: 'public keys folder (default: KEYS_DIR of the config)' }),
  handler: async (a) => {
    const out = makeOut(a);
    const { doctor } = await import('../../node/index.js');
    const cfg = await loadConfig(a.config);
    if (a.keys) cfg.node.KEYS_DIR = a.keys;
    let storeError: string | undefined;
    const ctx = await ctxOf(a).catch((e: Error) => {
      storeError = e.message;
      return null;
    });
    const r = await doctor({ ctx, config: cfg, full: a.full, runDir: a.runDir, storeError });
    out.result(r);
    // --quiet keeps what is wrong
    for (const x of r.findings) (x.level === 'ok' ? out.line : out.report)(`${x.level.padEnd(4)} ${x.check.padEnd(7)} ${x.message}`);
    if (!r.ok) throw new StackbootError('STORE', `doctor found ${r.findings.filter((x) => x.level === 'fail').length} problem(s)`);
  },
};

export const statusCommand: CommandModule<any, any> = {
  command: 'status',
  describe: 'booted stack, slot states, next candidates, last events',
  builder: (y) => nodeOptions(y),
  handler: async (a) => {
    const out = makeOut(a);
    const { nodeStatus } = await rollbackLib();
    const s = await nodeStatus(await ctxOf(a));
    out.result(s);
    out.report(`store ${s.store} (${s.storeId})`);
    if (s.booted) out.report(`booted: slot ${s.booted.slot} ${s.booted.stack.slice(0, 12)} ${s.booted.status}${s.booted.tries ? ` tries=${s.booted.tries}` : ''}${s.booted.fallback ? ` fallback: ${s.booted.fallback}` : ''}`);
    for (const x of s.slots) out.report(`slot ${x.slot}: ${x.status}${x.stack ? ` ${x.stack.slice(0, 12)}` : ''}${x.tries !== undefined ? ` tries=${x.tries}` : ''}${x.name ? ` ${x.name} ${x.version}` : ''}${x.kernel ? ` kernel ${x.kernel}` : ''}${x.stack && !x.matches ? ' (manifest mismatch)' : ''}${x.current ? ' current' : ''}${x.booted ? ' booted' : ''}`);
    out.report(`next boot: ${s.next.map((c) => `${c.slot} (${c.why})`).join(', ') || 'nothing bootable'}`);
    if (s.reset) out.report(`factory reset requested (${s.reset.by}, ${new Date(s.reset.requested * 1000).toISOString()}): the next boot wipes the disk uppers and the data partition`);
  },
};

export const factoryResetCommand: CommandModule<any, any> = {
  command: 'factory-reset',
  describe: 'at the next boot, wipe the node\'s writable state (disk uppers, data partition); the stacks stay',
  builder: (y) =>
    nodeOptions(y)
      .option('cancel', { type: 'boolean', describe: 'remove a pending request' })
      .option('dry-run', { type: 'boolean', describe: 'say what the next boot would wipe; write nothing' })
      .example('$0 factory-reset && reboot', 'the next boot wipes the data partition and the disk uppers, then boots the same stack')
      .example('$0 factory-reset --cancel', 'undo the request before the reboot'),
  handler: async (a) => {
    const out = makeOut(a);
    const { factoryReset } = await import('../../node/index.js');
    const cfg = await loadConfig(a.config);
    const r = await factoryReset(await ctxOf(a), { cancel: a.cancel, dryRun: a.dryRun, dataLabel: cfg.boot.DATA_LABEL });
    out.result(r);
    if (r.action === 'cancel') {
      out.line(r.previous ? `${r.dryRun ? 'would cancel' : 'cancelled'} the factory reset requested by ${r.previous.by}` : 'no factory reset was requested');
      return;
    }
    out.line(`${r.dryRun ? 'dry run: would request' : 'requested'} a factory reset of ${r.store}${r.previous ? ' (it was requested already)' : ''}; at the next boot the hook wipes:`);
    for (const w of r.wipes) out.line(`  ${w}`);
    out.line(r.dryRun ? 'nothing written' : 'the stacks stay; reboot to reset (stackboot factory-reset --cancel undoes the request)');
  },
};

export const markGoodCommand: CommandModule<any, any> = {
  command: 'mark-good',
  describe: 'the booted stack becomes the good one',
  builder: (y) => nodeOptions(y),
  handler: async (a) => {
    const out = makeOut(a);
    const { markBootedGood, firmwareSlots } = await rollbackLib();
    const cfg = await loadConfig(a.config);
    const r = await markBootedGood(await ctxOf(a), firmwareSlots(cfg.node.FIRMWARE));
    out.result(r);
    out.line(`slot ${r.slot} (${r.stack.slice(0, 12)}) is good and current (was ${r.was})${r.firmware ? `; the ${r.firmware} firmware was told` : ''}`);
    if (r.watchdog) out.line(WATCHDOG_SAYS[r.watchdog.result]!(r.watchdog.dev, r.watchdog.error));
  },
};

const WATCHDOG_SAYS: Record<string, (dev: string, error?: string) => string> = {
  stopped: (d) => `the watchdog ${d} armed for its try is stopped`,
  held: (d) => `the watchdog ${d} is held by another process (systemd's RuntimeWatchdogSec?), which feeds it`,
  running: (d) => `warning: the watchdog ${d} runs on after its magic close (nowayout): feed it, or the board resets`,
  gone: (d) => `the watchdog ${d} armed at boot is gone`,
  error: (d, e) => `warning: the watchdog ${d} armed for its try could not be stopped (${e}): feed it, or the board resets`,
};

export const markBadCommand: CommandModule<any, any> = {
  command: 'mark-bad',
  describe: 'the booted stack becomes bad (the good one boots next)',
  builder: (y) => nodeOptions(y),
  handler: async (a) => {
    const out = makeOut(a);
    const { markBootedBad } = await rollbackLib();
    const r = await markBootedBad(await ctxOf(a));
    out.result(r);
    out.line(`slot ${r.slot} (${r.stack.slice(0, 12)}) is bad (was ${r.was})`);
    if (!r.bootable) out.line('warning: no stack of this store is good or pending now: the next boot tries the other stores (STORES), then ON_FAIL; install a stack or mark-good one to boot from here');
  },
};
