/**
 * VM snapshots for trials that all start from one instant of one boot (the install
 * power cuts): boot once, stop the VM when the console shows a line, save its whole state
 * (RAM and devices: a QEMU migration into a file) and its writable disks (copied while it
 * is stopped: everything QEMU had written is in the files, and the guest's own page cache
 * is in the RAM state); then start as many VMs as needed from that state, each on its own
 * copy of the disks, already past the boot. A restored guest goes on exactly where the
 * first one was stopped (its clock too: a stopped VM's clock does not run).
 *
 * QEMU is driven through QMP on a unix socket (`-qmp`): `stop`, `migrate` to
 * `exec:cat > file`, and for a restore `-S -incoming exec:cat file` then `cont` once the
 * state is in. Raw disks need no qcow2 (QEMU's internal snapshots, savevm, would).
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { copyImage } from './inspect.js';
import { Vm, type BootOptions, type Disk } from './qemu.js';

/** A minimal QMP client: commands one at a time, events ignored. */
class Qmp {
  private buf = '';
  private waiting: ((msg: Record<string, unknown>) => void)[] = [];

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as Record<string, unknown>;
        if ('event' in msg) continue;
        this.waiting.shift()?.(msg);
      }
    });
    sock.on('error', () => undefined);
  }

  /** Connects to QEMU's QMP socket (retrying while QEMU starts) and leaves the greeting's capabilities negotiation done. */
  static async connect(file: string, vm: Vm, timeoutMs = 30_000): Promise<Qmp> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      if (vm.exited) throw new Error(vm.failMessage('QEMU exited before its QMP socket answered'));
      const sock = await new Promise<net.Socket | null>((resolve) => {
        const s = net.createConnection(file);
        s.once('connect', () => resolve(s));
        s.once('error', () => resolve(null));
      });
      if (sock) {
        const q = new Qmp(sock);
        await q.next(); // the greeting
        await q.cmd('qmp_capabilities');
        return q;
      }
      if (Date.now() > until) throw new Error(vm.failMessage(`no QMP socket at ${file} after ${timeoutMs} ms`));
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  private next(): Promise<Record<string, unknown>> {
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  async cmd(execute: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const reply = this.next();
    this.sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
    const r = await reply;
    if ('error' in r) throw new Error(`QMP ${execute}: ${JSON.stringify(r.error)}`);
    return (r.return ?? {}) as Record<string, unknown>;
  }

  /** Polls `execute` until `done` says its answer is final. */
  async until(execute: string, done: (r: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown>> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const r = await this.cmd(execute);
      if (done(r)) return r;
      if (Date.now() > end) throw new Error(`QMP ${execute}: still ${JSON.stringify(r)} after ${timeoutMs} ms`);
      await new Promise((res) => setTimeout(res, 20));
    }
  }

  close(): void {
    this.sock.destroy();
  }
}

export interface VmSnapshot {
  /** the boot it was taken from (disks are replaced at each restore) */
  options: BootOptions;
  /** the saved RAM and device state */
  state: string;
  /** per disk of options.disks: the copy taken at the snapshot (writable disks), or the disk itself (read-only ones) */
  disks: string[];
  /** ms from QEMU's start to the snapshot */
  atMs: number;
}

const qmpArgs = (sock: string) => ['-qmp', `unix:${sock},server=on,wait=off`];
/** A fresh path for a QMP socket, in the temp folder: a unix socket's path must stay under 108 bytes, which a clone's deep scratch folder need not. */
const qmpSocket = () => path.join(os.tmpdir(), `sb-qmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}.sock`);

/**
 * Boots `o`, waits for `re` on the console, and saves the VM there into `dir`. The
 * booted VM is killed afterwards; its disks are not changed after the instant saved.
 */
export async function snapshotAt(o: BootOptions, re: RegExp, dir: string, timeoutMs = 300_000): Promise<VmSnapshot> {
  await fs.mkdir(dir, { recursive: true });
  const sock = qmpSocket();
  const vm = Vm.start({ ...o, qemuArgs: [...(o.qemuArgs ?? []), ...qmpArgs(sock)], name: o.name ?? 'snapshot' });
  let qmp: Qmp | undefined;
  try {
    qmp = await Qmp.connect(sock, vm);
    await vm.waitFor(re, timeoutMs);
    await qmp.cmd('stop');
    const atMs = vm.elapsed();
    const state = path.join(dir, 'vm.state');
    await qmp.cmd('migrate', { uri: `exec:cat > '${state.replace(/'/g, `'\\''`)}'` });
    const m = await qmp.until('query-migrate', (r) => r.status === 'completed' || r.status === 'failed', 120_000);
    if (m.status !== 'completed') throw new Error(vm.failMessage(`saving the VM state failed: ${JSON.stringify(m)}`));
    const disks: string[] = [];
    for (const [i, d] of (o.disks ?? []).entries()) {
      if (d.readonly) disks.push(d.file);
      else {
        const copy = path.join(dir, `disk${i}.img`);
        await copyImage(d.file, copy);
        disks.push(copy);
      }
    }
    return { options: o, state, disks, atMs };
  } finally {
    qmp?.close();
    vm.kill();
    await vm.waitExit(30_000).catch(() => undefined);
    await fs.rm(sock, { force: true });
  }
}

/**
 * Starts a VM from a snapshot on `disks` (one per snapshot disk: copies of
 * `snap.disks`, made by the caller, for the writable ones) and lets it run: when this
 * resolves, the guest is running from the saved instant (Vm.elapsed() counts from
 * QEMU's start, loading included; the returned `resumedAt` is the instant it ran).
 */
export async function restore(snap: VmSnapshot, disks: string[], opts: { name?: string; timeoutMs?: number; logFile?: string } = {}): Promise<{ vm: Vm; resumedAt: number }> {
  if (disks.length !== snap.disks.length) throw new Error(`restore: ${disks.length} disks for a snapshot of ${snap.disks.length}`);
  const sock = qmpSocket();
  const o: BootOptions = {
    ...snap.options,
    disks: (snap.options.disks ?? []).map((d: Disk, i) => ({ ...d, file: disks[i] })),
    qemuArgs: [...(snap.options.qemuArgs ?? []), ...qmpArgs(sock), '-S', '-incoming', `exec:cat '${snap.state.replace(/'/g, `'\\''`)}'`],
    name: opts.name ?? snap.options.name,
    timeoutMs: opts.timeoutMs ?? snap.options.timeoutMs,
    logFile: opts.logFile,
  };
  const vm = Vm.start(o);
  let qmp: Qmp | undefined;
  try {
    qmp = await Qmp.connect(sock, vm);
    // `inmigrate` while the state loads, then `paused` (-S)
    const st = await qmp.until('query-status', (r) => r.status !== 'inmigrate', 120_000);
    if (st.status !== 'paused' && st.status !== 'prelaunch') throw new Error(vm.failMessage(`restoring the VM state: status ${JSON.stringify(st)}`));
    await qmp.cmd('cont');
    return { vm, resumedAt: vm.elapsed() };
  } catch (e) {
    vm.kill();
    throw e;
  } finally {
    qmp?.close();
    await fs.rm(sock, { force: true });
  }
}

/** Removes a snapshot's files (its folder, made by snapshotAt). */
export async function discard(snap: VmSnapshot): Promise<void> {
  await fs.rm(path.dirname(snap.state), { recursive: true, force: true });
}
