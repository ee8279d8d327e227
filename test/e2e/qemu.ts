/**
 * QEMU harness for the boot tests (TCG only: KVM hangs on the CI machines).
 *
 *   const vm = Vm.start({ target, initrd, disks: [{ file: img, bus: 'nvme' }] });
 *   await vm.waitFor(/stackboot: booted slot a/);
 *   const exit = await vm.waitExit();          // guest powered off / rebooted / panicked
 *
 * - QEMU runs through src/exec.ts `spawn`, under `setpriv --pdeathsig KILL` when
 *   available, so a QEMU never outlives the test worker, even when that is SIGKILLed.
 * - The guest console (the serial port) is kept in memory (`\r` and escape sequences
 *   removed) and optionally appended to a log file. Every failure message carries the
 *   console tail. QEMU writes it into a FIFO (`-chardev pipe`), not to its stdout: the
 *   UART hands QEMU one byte at a time, a socket (Node's child stdio) is full after a few
 *   hundred one-byte writes, and QEMU then holds the rest back; a guest that powered off
 *   meanwhile took that rest with it (a boot's last ~300 bytes lost, twice, with two VMs
 *   beside a busy test process). A pipe holds 64 KiB of such writes; the harness drains it
 *   every few ms and once more after QEMU exits, so the console is whole.
 * - `-no-reboot` (unless `reboot: true`): a guest reboot ends QEMU. Kernel panics end it too: `panic=-1` is added
 *   to the command line (reboot at once on panic, which -no-reboot turns into an exit),
 *   so a dying init never leaves a VM spinning until the timeout. `VmExit.how` says which.
 * - Every wait is bounded; on a timeout the VM is killed. `killAllVms()` (registered with
 *   vitest's afterEach by `useVmCleanup(afterEach)`, and on process exit) kills whatever
 *   is left. A VM started inside `ownVms(id, fn)` belongs to `id` (a test's id: the
 *   concurrent tests of concurrent.ts), and the cleanup after that test kills only its
 *   own VMs, not those of a test still running beside it.
 * - `vm.kill()` is a power cut: SIGKILL, nothing is flushed by the guest. Writes that the
 *   guest already handed to QEMU are in the host page cache and survive, as if the disk
 *   had a non-volatile write cache; writes still in the guest's page cache are lost.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { execFileSync } from 'node:child_process';
import { closeSync, constants as fsc, createWriteStream, existsSync, mkdtempSync, openSync, readSync, rmSync, writeSync, type WriteStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { spawn, type Spawned } from '../../src/sys/exec.js';
import type { Target } from '../../src/boot/target.js';
import type { Arch } from '../../src/sys/arch.js';

export type Bus = 'virtio' | 'nvme' | 'sd';

export interface Disk {
  /** Image file on the host. */
  file: string;
  bus: Bus;
  /** Serial number (virtio, nvme; shows in /sys/block/<dev>/serial or .../device/serial). nvme needs one: default `sbnvme<N>`. */
  serial?: string;
  readonly?: boolean;
  /** Image format, default raw. */
  format?: 'raw' | 'qcow2';
  /** QEMU cache mode, default writeback (guest flushes reach the host disk). */
  cache?: 'writeback' | 'writethrough' | 'unsafe' | 'directsync' | 'none';
}

export interface BootOptions {
  target: Target;
  /** The initramfs (cpio, optionally compressed); ignored with `firmware`. */
  initrd: string;
  /**
   * Boot through this firmware (`-bios`, e.g. U-Boot) instead of QEMU's direct kernel
   * boot: no -kernel, -initrd or -append; the firmware finds them on the disks.
   */
  firmware?: string;
  /**
   * Kernel image; default target.vmlinux (amd64: the same kernel unpacked, booted via PVH,
   * ~3.5 s faster under TCG) or else target.kernel. Pass target.kernel to boot the bzImage.
   */
  kernel?: string;
  /** Extra kernel command line; `console=` and `panic=-1` are added unless present. */
  append?: string;
  disks?: Disk[];
  /** Guest memory, default 512. */
  memoryMiB?: number;
  /** Guest CPUs, default 1 (TCG on a 2-core host gains little from more). */
  smp?: number;
  /** Hard limit for the whole VM life; it is killed after this. Default 600 000 ms. */
  timeoutMs?: number;
  /** Append the console to this file too. */
  logFile?: string;
  /**
   * A network card: 'user' is a virtio-net NIC on QEMU's user-mode network (slirp, no
   * root, no host interface): the guest's eth0 reaches the host's 127.0.0.1 as
   * 10.0.2.2. Default none (no NIC at all).
   */
  nic?: 'none' | 'user';
  /** Extra QEMU arguments, appended last. */
  qemuArgs?: string[];
  /** A label for messages (default: the arch). */
  name?: string;
  /**
   * Let a guest reboot (or a watchdog reset) restart the guest inside the same QEMU, as a
   * board would, instead of ending QEMU (-no-reboot, the default). `panic=-1` then loops:
   * bound the VM with timeoutMs.
   */
  reboot?: boolean;
}

export type ExitHow = 'poweroff' | 'reboot' | 'panic' | 'killed' | 'timeout' | 'error';

export interface VmExit {
  /** QEMU's exit code (0 after a guest poweroff or reboot), null when killed by a signal. */
  code: number | null;
  signal: string | null;
  /** What ended the VM, read from the console and from how QEMU ended. */
  how: ExitHow;
  /** Milliseconds from start to exit. */
  durationMs: number;
  output: string;
}

// ---------------------------------------------------------------------------------------
// Guest kernel modules per bus (module names as modprobe/modules.dep spell them, `_`).
// These are the top-level drivers; their dependencies come from modules.dep. Which of
// them are built in differs per arch (Debian 6.1 arm64 has virtio, virtio_ring, mmc_core
// and mmc_block built in; amd64 has them as modules); a resolver skips built-ins
// (modules.builtin). With the Debian 6.1 kernels, `modprobe --show-depends` gives:
//   virtio  amd64: virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
//           arm64: virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
//   nvme    both:  crct10dif_common crc64 [crct10dif_pclmul (amd64) | crct10dif_ce (arm64)
//                  crct10dif_generic: softdeps of crc_t10dif, optional] crc_t10dif
//                  crc64_rocksoft t10_pi nvme_core nvme   (+ crc64_rocksoft_generic)
//   sd      amd64: mmc_core sdhci cqhci sdhci_pci mmc_block
//           arm64: sdhci cqhci sdhci_pci
// Hard dependencies alone (modules.dep, as the smoke test loads them) are enough to see
// the disks. Every module is uncompressed (.ko) in Debian 12 (bookworm) kernels, both arches.
export const BUS_MODULES: Readonly<Record<Bus, readonly string[]>> = {
  // virtio_pci is the transport (not a dependency of virtio_blk); QEMU's virtio-blk-pci.
  virtio: ['virtio_pci', 'virtio_blk'],
  // crc64_rocksoft asks the crypto API for crc64-rocksoft (crc64_rocksoft_generic) and
  // falls back to its library code without it; include it so no request_module is needed.
  nvme: ['nvme', 'crc64_rocksoft_generic'],
  sd: ['sdhci_pci', 'mmc_block'],
};

/** The top-level guest modules needed for these buses (dependencies not expanded), deduplicated. */
export function modulesForBuses(buses: Iterable<Bus>): string[] {
  const out: string[] = [];
  for (const b of buses) for (const m of BUS_MODULES[b]) if (!out.includes(m)) out.push(m);
  return out;
}

/**
 * The guest's block device names for `disks`, in order, as the Debian kernels name them
 * with this harness: virtio → vda, vdb… ; nvme → nvme0n1, nvme1n1… ; sd → mmcblk0….
 * (Probe order follows the QEMU command line, i.e. the order of `disks` per bus.)
 */
export function guestDeviceNames(disks: readonly Disk[]): string[] {
  const n: Record<Bus, number> = { virtio: 0, nvme: 0, sd: 0 };
  return disks.map((d) => {
    const i = n[d.bus]++;
    if (d.bus === 'virtio') return 'vd' + String.fromCharCode(97 + i);
    if (d.bus === 'nvme') return `nvme${i}n1`;
    return `mmcblk${i}`;
  });
}

const QEMU_MACHINE: Record<Arch, { console: string; args: string[] }> = {
  amd64: { console: 'ttyS0', args: ['-machine', 'q35'] },
  arm64: { console: 'ttyAMA0', args: ['-machine', 'virt', '-cpu', 'cortex-a57'] },
};

/**
 * The kernel command line the harness passes: `append` plus console= and panic=-1 when
 * absent, and on x86 no_timer_check: on a loaded host TCG can miss the kernel's early
 * IO-APIC timer check and the boot panics ("IO-APIC + timer doesn't work"), which says
 * nothing about stackboot (seen in the power-cut runs).
 */
export function kernelCmdline(arch: Arch, append = ''): string {
  const parts = append.trim() === '' ? [] : [append.trim()];
  if (!/(^|\s)console=/.test(append)) parts.push(`console=${QEMU_MACHINE[arch].console}`);
  if (!/(^|\s)panic=/.test(append)) parts.push('panic=-1');
  if (arch === 'amd64' && !/(^|\s)no_timer_check(\s|$)/.test(append)) parts.push('no_timer_check');
  return parts.join(' ');
}

/**
 * The QEMU command and arguments for a boot (pure). `consolePipe`: the serial port goes
 * to the FIFOs `<consolePipe>.out` (guest output) and `<consolePipe>.in` (its input)
 * instead of QEMU's stdio.
 */
export function qemuCommand(o: BootOptions, consolePipe?: string): { cmd: string; args: string[] } {
  const arch = o.target.arch;
  const args = [
    '-accel', 'tcg',
    ...QEMU_MACHINE[arch].args,
    '-m', String(o.memoryMiB ?? 512),
    '-smp', String(o.smp ?? 1),
    // not -nographic: with it (and no VGA) SeaBIOS also writes its banner and escape
    // sequences to the serial port, glued to the guest's first line
    '-display', 'none', '-vga', 'none', '-monitor', 'none',
    ...(consolePipe ? ['-chardev', `pipe,id=con,path=${consolePipe.replace(/,/g, ',,')}`, '-serial', 'chardev:con'] : ['-serial', 'stdio']),
    // no default NIC; a user-mode one without its iPXE option ROM (booted by -kernel)
    ...(o.nic === 'user' ? ['-netdev', 'user,id=net0', '-device', 'virtio-net-pci,netdev=net0,romfile='] : ['-nic', 'none']),
    ...(o.reboot ? [] : ['-no-reboot']),
    ...(o.firmware
      ? ['-bios', o.firmware]
      : ['-kernel', o.kernel ?? o.target.vmlinux ?? o.target.kernel, '-initrd', o.initrd, '-append', kernelCmdline(arch, o.append)]),
  ];
  (o.disks ?? []).forEach((d, i) => {
    const drive = [`file=${d.file.replace(/,/g, ',,')}`, `format=${d.format ?? 'raw'}`, 'if=none', `id=d${i}`, `cache=${d.cache ?? 'writeback'}`];
    if (d.readonly) drive.push('readonly=on');
    args.push('-drive', drive.join(','));
    const serial = d.serial !== undefined ? `,serial=${d.serial.replace(/,/g, ',,')}` : '';
    switch (d.bus) {
      case 'virtio':
        args.push('-device', `virtio-blk-pci,drive=d${i}${serial}`);
        break;
      case 'nvme':
        args.push('-device', `nvme,drive=d${i},serial=${(d.serial ?? `sbnvme${i}`).replace(/,/g, ',,')}`);
        break;
      case 'sd':
        // one SDHCI controller per card; the root PCIe bus is pcie.0 on both q35 and virt
        args.push('-device', `sdhci-pci,id=sdhci${i}`, '-device', `sd-card,drive=d${i},bus=pcie.0/sdhci${i}/sd-bus`);
        break;
    }
  });
  args.push(...(o.qemuArgs ?? []));
  return { cmd: o.target.qemu, args };
}

/** Console text as the harness keeps it: no `\r`, no terminal escape sequences. */
export function cleanConsole(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\r/g, '').replace(/\x1b\[[0-9;?]*[ -\/]*[@-~]|\x1b[@-Z\\-_]|\x1b[()][0-9A-Za-z]|\x1bc/g, '');
}

/** The last `lines` lines of a console output. */
export function consoleTail(output: string, lines = 40): string {
  const all = output.replace(/\s+$/, '').split('\n');
  return all.slice(-lines).join('\n');
}

/** An error whose message ends with the console tail. */
export class VmError extends Error {
  constructor(message: string, readonly output: string, tailLines = 40) {
    super(`${message}\n----- console tail -----\n${consoleTail(output, tailLines)}\n------------------------`);
    this.name = 'VmError';
  }
}

let setprivPath: string | null | undefined;
/** A FIFO at `file` (no Node API makes one; the VM's constructor is synchronous). */
function mkfifo(file: string): void {
  execFileSync('mkfifo', ['-m', '600', file]);
}

function findSetpriv(): string | null {
  if (setprivPath !== undefined) return setprivPath;
  setprivPath = null;
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir || '.', 'setpriv');
    if (existsSync(p)) {
      setprivPath = p;
      break;
    }
  }
  return setprivPath;
}

const live = new Set<Vm>();
let exitHookInstalled = false;
const owners = new AsyncLocalStorage<string>();

/** Runs `fn` so that every VM it starts (however deep, across awaits) belongs to `owner`. */
export function ownVms<T>(owner: string, fn: () => T): T {
  return owners.run(owner, fn);
}

/**
 * Kills (SIGKILL) the VMs still running and waits for them to be gone: those of `owner`
 * and those started outside any `ownVms`; every one when no owner is given.
 */
export async function killAllVms(owner?: string): Promise<void> {
  const vms = [...live].filter((vm) => owner === undefined || vm.owner === undefined || vm.owner === owner);
  for (const vm of vms) vm.kill();
  await Promise.all(vms.map((vm) => vm.waitExit(10_000).catch(() => undefined)));
}

/**
 * Registers the cleanup with a test runner's afterEach: `useVmCleanup(afterEach)` at the
 * top of a test file. After a test it kills that test's VMs (vitest passes the test's
 * context, whose task id `ownVms` recorded) and any VM without an owner. (Passed in so
 * that this module does not import vitest and can be used outside it, e.g. by bench
 * scripts.)
 */
export function useVmCleanup(afterEachHook: (fn: (ctx: { task?: { id?: string } }) => Promise<void>) => void): void {
  afterEachHook(async (ctx) => {
    await killAllVms(ctx?.task?.id ?? undefined);
  });
}

interface Waiter {
  re: RegExp;
  from: number;
  partial: boolean;
  resolve: (m: RegExpMatchArray) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export interface WaitOptions {
  timeoutMs?: number;
  /** Search only the console from this offset (see `mark()`). Default 0. */
  from?: number;
  /**
   * Also match the last, unfinished line (a prompt with no newline). Default false: only
   * complete lines are searched, so `/x=(\S+)/` never matches half of a line still arriving.
   */
  partial?: boolean;
}

export class Vm {
  readonly name: string;
  readonly cmd: string;
  readonly args: readonly string[];
  readonly startedAt: number;
  /** The test that started it (`ownVms`), if any. */
  readonly owner: string | undefined;
  private readonly child: Spawned;
  /** the console FIFOs' folder and our ends of them (read: guest output, write: its input) */
  private readonly conDir: string;
  private conOut: number | undefined;
  private conIn: number | undefined;
  private readonly conDecoder = new StringDecoder('utf8');
  private readonly conBuf = Buffer.allocUnsafe(65536);
  private readonly conTimer: NodeJS.Timeout;
  private out = '';
  private err = '';
  private waiters = new Set<Waiter>();
  private log: WriteStream | undefined;
  private exitInfo: VmExit | undefined;
  private killedByUs = false;
  private timedOut = false;
  private readonly lifeTimer: NodeJS.Timeout;
  private readonly exitPromise: Promise<VmExit>;

  private constructor(o: BootOptions) {
    this.name = o.name ?? o.target.arch;
    this.conDir = mkdtempSync(path.join(os.tmpdir(), 'sb-vm-'));
    const con = path.join(this.conDir, 'console');
    mkfifo(`${con}.out`);
    mkfifo(`${con}.in`);
    // read-write and non-blocking: opening never waits for QEMU, and there is always a
    // writer, so a read finds the data or EAGAIN, never an end
    this.conOut = openSync(`${con}.out`, fsc.O_RDWR | fsc.O_NONBLOCK);
    this.conIn = openSync(`${con}.in`, fsc.O_RDWR | fsc.O_NONBLOCK);
    const { cmd, args } = qemuCommand(o, con);
    this.cmd = cmd;
    this.args = args;
    if (o.logFile) this.log = createWriteStream(o.logFile, { flags: 'a' });
    const setpriv = findSetpriv();
    this.startedAt = Date.now();
    this.owner = owners.getStore();
    this.child = setpriv ? spawn(setpriv, ['--pdeathsig', 'KILL', '--', cmd, ...args], { stdin: 'pipe' }) : spawn(cmd, args, { stdin: 'pipe' });
    live.add(this);
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.once('exit', () => {
        for (const vm of live) vm.kill();
      });
    }
    this.conTimer = setInterval(() => this.drainConsole(), 5);
    this.child.stdout.on('data', (chunk: Buffer) => this.onData(chunk.toString('utf8')));
    this.child.stderr.on('data', (chunk: Buffer) => {
      const s = chunk.toString('utf8');
      this.err += s;
      this.log?.write(s);
    });
    // a failed write to stdin (QEMU gone) must not crash the test process
    (this.child.stdin as NodeJS.WritableStream & { on?: (ev: string, f: () => void) => void } | null)?.on?.('error', () => undefined);
    const limit = o.timeoutMs ?? 600_000;
    this.lifeTimer = setTimeout(() => {
      this.timedOut = true;
      this.child.kill('SIGKILL');
    }, limit);
    this.lifeTimer.unref();
    this.exitPromise = this.child.done.then(({ exitCode, signal }) => {
      clearTimeout(this.lifeTimer);
      // everything QEMU wrote is in the FIFO now: read it to the end, then let it go
      clearInterval(this.conTimer);
      this.drainConsole();
      this.closeConsole();
      live.delete(this);
      const info: VmExit = {
        code: exitCode,
        signal,
        how: this.classify(exitCode),
        durationMs: Date.now() - this.startedAt,
        output: this.out,
      };
      this.exitInfo = info;
      this.log?.end();
      const why = info.how === 'timeout' ? `VM life limit of ${limit} ms reached` : `VM exited (${info.how}, code ${exitCode}, signal ${signal})`;
      for (const w of this.waiters) {
        clearTimeout(w.timer);
        const m = this.search(w.re, w.from, w.from, true); // the last line is complete now
        if (m) w.resolve(m);
        else w.reject(new VmError(`${this.name}: waiting for ${w.re}: ${why}${this.stderrNote()}`, this.out));
      }
      this.waiters.clear();
      return info;
    });
  }

  /** Starts QEMU. */
  static start(o: BootOptions): Vm {
    return new Vm(o);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** True once QEMU has exited. */
  get exited(): boolean {
    return this.exitInfo !== undefined;
  }

  /** The whole console so far (`\r` and terminal escape sequences removed). */
  output(): string {
    return this.out;
  }

  /** QEMU's own stderr (warnings, bad arguments). */
  stderr(): string {
    return this.err;
  }

  /** The last lines of the console. */
  tail(lines = 40): string {
    return consoleTail(this.out, lines);
  }

  /** Current console length: pass as `from` to wait only for output after this point. */
  mark(): number {
    return this.out.length;
  }

  /** Milliseconds since start. */
  elapsed(): number {
    return Date.now() - this.startedAt;
  }

  /** A message for a failed assertion: `what`, then the console tail. */
  failMessage(what: string, lines = 40): string {
    return `${this.name}: ${what}${this.stderrNote()}\n----- console tail -----\n${this.tail(lines)}\n------------------------`;
  }

  /**
   * Resolves with the first match of `re` in the console's complete lines (from `from`,
   * default 0; `partial` to include the unfinished last line); the match's `index` is an
   * offset in output(). Rejects (VmError with the console tail) when
   * the VM exits first, or after timeoutMs (default 300 000), and then kills the VM.
   */
  waitFor(re: RegExp, opts: number | WaitOptions = {}): Promise<RegExpMatchArray> {
    const { timeoutMs = 300_000, from = 0, partial = false } = typeof opts === 'number' ? { timeoutMs: opts } : opts;
    const rx = new RegExp(re.source, re.flags.replace(/[gy]/g, ''));
    const hit = this.search(rx, from, from, partial);
    if (hit) return Promise.resolve(hit);
    // once QEMU is gone the last line is complete
    const last = this.exitInfo ? this.search(rx, from, from, true) : null;
    if (last) return Promise.resolve(last);
    if (hit) return Promise.resolve(hit);
    if (this.exitInfo) {
      return Promise.reject(new VmError(`${this.name}: ${re} not found, VM already exited (${this.exitInfo.how})${this.stderrNote()}`, this.out));
    }
    return new Promise<RegExpMatchArray>((resolve, reject) => {
      const w: Waiter = {
        re: rx,
        from,
        partial,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(w);
          this.kill();
          reject(new VmError(`${this.name}: timed out after ${timeoutMs} ms waiting for ${re} (VM killed)${this.stderrNote()}`, this.out));
        }, timeoutMs),
      };
      this.waiters.add(w);
    });
  }

  /**
   * Resolves when QEMU exits. After timeoutMs (default 300 000) the VM is killed and the
   * promise rejects with a VmError.
   */
  async waitExit(timeoutMs = 300_000): Promise<VmExit> {
    if (this.exitInfo) return this.exitInfo;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.kill();
        reject(new VmError(`${this.name}: VM did not exit within ${timeoutMs} ms (killed)${this.stderrNote()}`, this.out));
      }, timeoutMs);
    });
    try {
      return await Promise.race([this.exitPromise, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Types into the guest console (the serial port's input), e.g. for a rescue shell. */
  send(text: string): void {
    if (this.exited || this.conIn === undefined) return;
    const b = Buffer.from(text, 'utf8');
    // a few bytes into an empty 64 KiB pipe: written whole
    for (let off = 0; off < b.length; ) off += writeSync(this.conIn, b, off, b.length - off);
  }

  /** Reads what the guest wrote to its console since the last call. */
  private drainConsole(): void {
    if (this.conOut === undefined) return;
    const buf = this.conBuf;
    for (;;) {
      let n: number;
      try {
        n = readSync(this.conOut, buf, 0, buf.length, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return;
        throw e;
      }
      if (n <= 0) return;
      this.onData(this.conDecoder.write(buf.subarray(0, n)));
    }
  }

  private closeConsole(): void {
    for (const fd of [this.conOut, this.conIn]) if (fd !== undefined) closeSync(fd);
    this.conOut = this.conIn = undefined;
    rmSync(this.conDir, { recursive: true, force: true });
  }

  /** Power cut: SIGKILL QEMU now. Safe to call more than once or after exit. */
  kill(): void {
    if (this.exited) return;
    this.killedByUs = true;
    this.child.kill('SIGKILL');
  }

  /** Power cut after `ms` milliseconds. */
  killAfter(ms: number): void {
    const t = setTimeout(() => this.kill(), ms);
    t.unref();
  }

  /**
   * Power cut as soon as `re` shows on the console (optionally `delayMs` later). Resolves
   * with the match once the VM is gone; rejects like waitFor when `re` never shows.
   */
  async killWhen(re: RegExp, opts: WaitOptions & { delayMs?: number } = {}): Promise<RegExpMatchArray> {
    const m = await this.waitFor(re, opts);
    if (opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs));
    this.kill();
    await this.waitExit(10_000);
    return m;
  }

  private stderrNote(): string {
    const e = this.err.trim();
    return e ? `\nqemu stderr: ${e.split('\n').slice(-5).join(' | ')}` : '';
  }

  private search(rx: RegExp, from: number, scanFrom: number, partial: boolean): RegExpMatchArray | null {
    const start = Math.max(from, scanFrom);
    const end = partial ? this.out.length : this.out.lastIndexOf('\n') + 1;
    if (end <= start) return null;
    const m = this.out.slice(start, end).match(rx);
    if (!m) return null;
    m.index = (m.index ?? 0) + start;
    return m;
  }

  private onData(s: string): void {
    const before = this.out.length;
    s = cleanConsole(s);
    this.out += s;
    this.log?.write(s);
    if (this.waiters.size === 0) return;
    // re-scan a little before the new chunk so that a match split across chunks is found
    const scanFrom = Math.max(0, before - 4096);
    for (const w of [...this.waiters]) {
      const m = this.search(w.re, w.from, scanFrom, w.partial);
      if (m) {
        clearTimeout(w.timer);
        this.waiters.delete(w);
        w.resolve(m);
      }
    }
  }

  private classify(exitCode: number | null): ExitHow {
    if (this.timedOut) return 'timeout';
    if (this.killedByUs) return 'killed';
    if (exitCode === null) return 'killed';
    if (exitCode !== 0) return 'error';
    // the kernel prints these at KERN_EMERG, so they show even with `quiet`
    if (/Kernel panic - not syncing/.test(this.out)) return 'panic';
    const tail = this.out.slice(-4096);
    if (/reboot: Power down/.test(tail)) return 'poweroff';
    if (/reboot: Restarting system/.test(tail)) return 'reboot';
    return 'poweroff';
  }
}

export interface BootResult extends VmExit {
  /** The match of `until`, when given. */
  match?: RegExpMatchArray;
  /** Milliseconds from start to the `until` match. */
  matchMs?: number;
}

/**
 * Boots once and waits for QEMU to exit. With `until`, the console must show it first
 * (else a VmError with the console tail); with `killOnMatch` the VM is then killed
 * instead of waited for. `timeoutMs` bounds the whole boot.
 */
export async function bootOnce(o: BootOptions & { until?: RegExp; killOnMatch?: boolean }): Promise<BootResult> {
  const timeoutMs = o.timeoutMs ?? 600_000;
  const vm = Vm.start({ ...o, timeoutMs });
  try {
    let match: RegExpMatchArray | undefined;
    let matchMs: number | undefined;
    if (o.until) {
      match = await vm.waitFor(o.until, timeoutMs);
      matchMs = vm.elapsed();
      if (o.killOnMatch) vm.kill();
    }
    const exit = await vm.waitExit(timeoutMs);
    return { ...exit, match, matchMs };
  } finally {
    vm.kill();
  }
}
