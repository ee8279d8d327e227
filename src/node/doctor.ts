/**
 * doctor: what is wrong on a node. Each check gives ok / warn / fail and a message:
 * kernel support (overlay, squashfs, loop), the keys, the store's free space, the node
 * config against the boot.conf baked into the booted initramfs (the hook leaves a copy at
 * /run/stackboot/boot.conf), the boot partition (found as boot-update finds it, and named
 * so that JetPack 5/6's L4TLauncher reads it), and every slot's stack (manifest matches the
 * state, layers present with the right size, or sha256 with `full`, signature valid), state
 * lines the hook skips, and a pending factory reset.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { diffBootConfig, type NodeConfig } from './config.js';
import { describeUnmet, makeBootConfig } from '../boot/index.js';
import { parseBooted, type NodeContext } from './context.js';
import { findBootPartition } from './boot-update.js';
import { bootKernelReads } from './kernel-support.js';
import { armedWatchdog } from './watchdog.js';
import { partitionName } from '../media/index.js';
import { checkPublicKey, listPublicKeys, verifyWithKeyDir, SLOTS } from '../format/index.js';

export type Level = 'ok' | 'warn' | 'fail';

export interface Finding {
  check: string;
  level: Level;
  message: string;
}

export interface DoctorOptions {
  ctx: NodeContext | null;
  config: NodeConfig;
  /** default /proc */
  procDir?: string;
  /** default /run */
  runDir?: string;
  /** hash every layer (slow) */
  full?: boolean;
  /** why there is no ctx (shown in the report) */
  storeError?: string;
  /** warn below this many free bytes on the store (default 64 MiB) */
  lowSpace?: number;
  /** test seams for the boot partition: sysfs and /dev */
  sysRoot?: string;
  devDir?: string;
  /** test seams for the running kernel's config: /boot and its release (default uname -r) */
  bootDir?: string;
  kernelRelease?: string;
}

export interface DoctorReport {
  findings: Finding[];
  ok: boolean;
}

/**
 * The watchdog over a pending try (WATCHDOG= of the booted initrd, initramfs/watchdog.sh):
 * a device to arm, the hook's arming of this boot still running after the stack is good,
 * and a kernel that would stop it at the kexec into a stack's own kernel.
 */
async function watchdogFindings(o: DoctorOptions, run: string, secs: number, add: (check: string, level: Level, message: string) => void): Promise<void> {
  const booted = parseBooted((await readText(path.join(run, 'stackboot', 'booted'))) ?? '');
  const armed = armedWatchdog(booted.watchdog);
  if (secs === 0 && !armed) return;
  const dev = path.join(o.devDir ?? '/dev', 'watchdog');
  const present = await fs.stat(dev).then((st) => st.isCharacterDevice(), () => false);
  if (secs > 0) {
    if (present) add('watchdog', 'ok', `WATCHDOG=${secs}: the hook arms ${dev} for each pending stack`);
    else add('watchdog', 'warn', `WATCHDOG=${secs}, but there is no ${dev}: the initrd loads no watchdog driver, and a pending stack that hangs is not reset (docs/boot.md)`);
    const sor = (await readText(path.join(o.sysRoot ?? '/sys', 'module', 'watchdog', 'parameters', 'stop_on_reboot')))?.trim();
    if (present && sor !== undefined && sor !== '0') add('watchdog', 'warn', `watchdog.stop_on_reboot is ${sor}: the kexec into a stack's own kernel may stop the watchdog (put watchdog.stop_on_reboot=0 on the kernel command line)`);
  }
  if (armed) {
    if (booted.status === 'pending') add('watchdog', 'ok', `armed by the hook for this boot: the pending stack has ${armed.seconds} s from the hand-over to be marked good`);
    else add('watchdog', 'warn', `${armed.dev} was armed by the hook for this boot and is still running though the stack is ${booted.status || 'not pending'}: the board resets unless something feeds it (stackboot mark-good stops it)`);
  }
}

async function readText(f: string): Promise<string | null> {
  return fs.readFile(f, 'utf8').catch(() => null);
}

export async function doctor(o: DoctorOptions): Promise<DoctorReport> {
  const f: Finding[] = [];
  const add = (check: string, level: Level, message: string) => f.push({ check, level, message });
  const proc = o.procDir ?? '/proc';
  const run = o.runDir ?? '/run';

  // kernel support
  const filesystems = (await readText(path.join(proc, 'filesystems'))) ?? '';
  const modules = (await readText(path.join(proc, 'modules'))) ?? '';
  const fsNames = new Set(filesystems.split('\n').map((l) => l.trim().split(/\s+/).pop() ?? ''));
  for (const m of ['overlay', 'squashfs']) {
    if (fsNames.has(m)) add('kernel', 'ok', `${m} filesystem available`);
    else add('kernel', 'fail', `${m} filesystem not available (no "${m}" in ${proc}/filesystems): load the ${m} module, or put it in the initramfs`);
  }
  const loopMod = modules.split('\n').some((l) => l.startsWith('loop '));
  const loopCtl = await fs.stat('/dev/loop-control').then(() => true, () => false);
  if (loopMod || loopCtl) add('kernel', 'ok', `loop devices available${loopMod ? ' (module loaded)' : ''}`);
  else add('kernel', 'fail', 'loop module missing (no loop in /proc/modules and no /dev/loop-control)');

  // keys
  const keysDir = o.config.node.KEYS_DIR;
  const keys = await listPublicKeys(keysDir).catch(() => null);
  if (keys === null) add('keys', o.config.node.ALLOW_UNSIGNED ? 'warn' : 'fail', `no keys directory ${keysDir}: installs will be refused`);
  else if (keys.length === 0) add('keys', o.config.node.ALLOW_UNSIGNED ? 'warn' : 'fail', `no public keys (*.pub) in ${keysDir}: installs will be refused`);
  else {
    const bad: string[] = [];
    for (const k of keys) await checkPublicKey(k).catch((e: Error) => bad.push(e.message));
    for (const b of bad) add('keys', 'fail', b);
    if (bad.length < keys.length) add('keys', 'ok', `${keys.length - bad.length} public key(s) in ${keysDir}`);
  }

  // config against the initramfs's copy
  let baked: ReturnType<typeof makeBootConfig> | null = null;
  const initrdConf = await readText(path.join(run, 'stackboot', 'boot.conf'));
  if (initrdConf === null) add('config', 'warn', `no ${path.join(run, 'stackboot', 'boot.conf')} (the booted initramfs's boot config): cannot compare with ${o.config.file ?? 'the defaults'}`);
  else {
    try {
      baked = makeBootConfig({ text: initrdConf, origin: 'initramfs boot.conf' });
      const d = diffBootConfig(o.config.boot, baked);
      if (d.length === 0) add('config', 'ok', `${o.config.file ?? 'node config (defaults)'} matches the initramfs's boot.conf`);
      for (const x of d) add('config', 'warn', `${x.key}: node config says ${JSON.stringify(x.node)}, the initramfs was built with ${JSON.stringify(x.initramfs)} (rebuild the initramfs or fix the config)`);
    } catch (e) {
      add('config', 'fail', `the initramfs's boot.conf does not parse: ${(e as Error).message}`);
    }
  }

  await watchdogFindings(o, run, baked?.WATCHDOG ?? o.config.boot.WATCHDOG, add);

  // the boot partition: the one boot-update would change, and its GPT name
  const boot = await findBootPartition({ bootedFile: path.join(run, 'stackboot', 'booted'), sysRoot: o.sysRoot, devDir: o.devDir }).catch((e: Error) => {
    add('boot', 'warn', `no boot partition for boot-update: ${e.message}`);
    return null;
  });
  if (boot) {
    const name = await partitionName(path.basename(boot), { sysRoot: o.sysRoot, devDir: o.devDir });
    if (/^(APP|[AaBb]_APP|APP_[AaBb])$/.test(name)) add('boot', 'ok', `${boot} (GPT name ${name}): the boot partition, read by U-Boot and by JetPack 5/6's L4TLauncher`);
    else add('boot', 'warn', `${boot} is the boot partition, but its GPT name is ${JSON.stringify(name)}: U-Boot boots it, JetPack 5/6's L4TLauncher reads only a partition named APP (and boot/extlinux/extlinux.conf on it): docs/boot.md, "Jetson"`);
  }

  const ctx = o.ctx;
  if (!ctx) {
    add('store', 'fail', `no store: ${o.storeError ?? 'not booted by stackboot, and no --store'}`);
    return { findings: f, ok: !f.some((x) => x.level === 'fail') };
  }
  const store = ctx.store;
  // space
  try {
    const s = await fs.statfs(store.dir);
    const free = Number(s.bavail) * Number(s.bsize);
    const low = o.lowSpace ?? 64 << 20;
    add('space', free < low ? 'warn' : 'ok', `${free} bytes free on the store (${store.dir})${free < low ? ': run stackboot gc' : ''}`);
  } catch (e) {
    add('space', 'fail', `cannot statfs ${store.dir}: ${(e as Error).message}`);
  }
  // stacks
  let st;
  const skipped: string[] = [];
  try {
    st = await store.readState(skipped);
  } catch (e) {
    add('state', 'fail', `state unreadable: ${(e as Error).message}`);
    return { findings: f, ok: false };
  }
  // a hand edit or a disk error: the next state write (a boot's try, an install) drops it
  for (const p of skipped) add('state', 'warn', `state: ${p}`);
  const reset = await store.resetRequest();
  if (reset) add('reset', 'warn', `a factory reset is requested (${reset.by}, ${new Date(reset.requested * 1000).toISOString()}): the next boot wipes the disk uppers and the data partition (stackboot factory-reset --cancel undoes it)`);
  // a reset entry picked once is fine; the same word in the default entry wipes every boot
  const cmdline = await fs.readFile(path.join(proc, 'cmdline'), 'utf8').catch(() => '');
  // the words the hook takes (initramfs/config.sh): stackboot.reset, =1, =y…
  if (/(^|\s)stackboot\.reset(=(1|y\S*))?(\s|$)/.test(cmdline)) add('reset', 'warn', 'this boot ran with stackboot.reset on the kernel command line (the data partition was wiped at its start): if the boot menu\'s default entry has it, every boot wipes; only the factory-reset entry should');
  const kernelSaid = new Set<string>();
  for (const s of SLOTS) {
    const v = st.slots[s];
    let unparsed: string | null = null;
    const m = await store.slotManifest(s).catch((e) => {
      unparsed = (e as Error).message;
      return null;
    });
    if (!v) {
      if (m) add('stack', 'ok', `slot ${s}: empty in the state (a manifest is there: an interrupted install, or a gc candidate)`);
      else if (unparsed !== null) add('stack', 'warn', `slot ${s}: empty in the state, and its manifest does not parse: ${unparsed}`);
      continue;
    }
    const label = `slot ${s} (${v.status} ${v.stack.slice(0, 12)})`;
    if (!m) {
      // one finding per slot: "does not parse" or "missing", not both
      add('stack', 'fail', `${label}: ${unparsed !== null ? `manifest does not parse: ${unparsed}` : 'no manifest'}`);
      continue;
    }
    if (m.id !== v.stack) {
      add('stack', 'fail', `${label}: the manifest hashes to ${m.id.slice(0, 12)}, not the state's stack: not bootable`);
      continue;
    }
    const bad = await store.checkLayers(m.manifest, !!o.full);
    if (bad.length) add('stack', 'fail', `${label}: unverifiable: ${bad.map((b) => `${b.name} ${b.problem}`).join(', ')}`);
    const sig = await readText(path.join(store.slotDir(s), 'manifest.sig'));
    if (sig === null) add('stack', 'warn', `${label}: no manifest.sig`);
    else if (keys && keys.length) {
      const why = await verifyWithKeyDir(Buffer.from(m.text), sig, keysDir).then(
        () => null,
        (e: Error) => e.message,
      );
      if (why !== null) {
        add('stack', 'fail', `${label}: bad signature (${why}); its layers are ${bad.length ? 'not all there either' : 'present'}`);
        continue;
      }
    }
    if (!bad.length) add('stack', 'ok', `${label}: ${m.manifest.name} ${m.manifest.version}, ${m.manifest.layers.length} layers ${o.full ? 'verified (sha256)' : 'present'}`);
    // the boot partition's kernel mounts its layers (node/kernel-support.ts)
    const k = await bootKernelReads(ctx, m.manifest, { procDir: proc, bootDir: o.bootDir, release: o.kernelRelease });
    if (k.known && k.unmet.length) add('kernel', 'fail', `${label}: the boot kernel ${k.release} (${k.source}) lacks ${describeUnmet(k.unmet)}: it cannot boot this stack`);
    else {
      const msg = k.known ? `the boot kernel ${k.release} (${k.source}) reads ${m.manifest.compression ?? 'zstd'} squashfs, overlayfs and loop devices` : `the stacks' layers are not checked against the boot kernel: ${k.why}`;
      if (!kernelSaid.has(msg)) add('kernel', 'ok', msg);
      kernelSaid.add(msg);
    }
  }
  return { findings: f, ok: !f.some((x) => x.level === 'fail') };
}
