/**
 * Smoke test of the QEMU harness on both arches, with the Debian test kernels from
 * `npm run setup`: a tiny busybox initrd boots, prints a marker and powers off; disks on
 * virtio, nvme and sd show up in the guest once their modules are insmodded; kill() is a
 * power cut; a panic ends the VM.
 */
import { describe, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { itConcurrent } from './concurrent.js';
import { mkdtemp, mkdir, copyFile, writeFile, readFile, rm, symlink, chmod, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/sys/exec.js';
import { loadTarget, type Target } from '../../src/boot/target.js';
import { type Arch } from '../../src/sys/arch.js';
import { Vm, bootOnce, consoleTail, useVmCleanup, modulesForBuses, guestDeviceNames, type Disk } from './qemu.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CACHE = path.join(REPO, '.cache');

useVmCleanup(afterEach);

const timings: string[] = [];
afterAll(() => {
  if (timings.length) console.log(`boot timings (TCG):\n  ${timings.join('\n  ')}`);
});

// ---------------------------------------------------------------------------------------
// Minimal module resolution, local to this test (src/kernel.ts is the real resolver).
async function resolveModules(modulesDir: string, names: string[]): Promise<string[]> {
  const norm = (s: string) => s.replace(/-/g, '_');
  const modName = (p: string) => norm(path.basename(p).replace(/\.ko(\.(xz|zst|gz))?$/, ''));
  const deps = new Map<string, { file: string; deps: string[] }>();
  for (const line of (await readFile(path.join(modulesDir, 'modules.dep'), 'utf8')).split('\n')) {
    const m = /^([^:]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    deps.set(modName(m[1]!), { file: m[1]!, deps: m[2]!.split(/\s+/).filter(Boolean).map(modName) });
  }
  const builtin = new Set(
    (await readFile(path.join(modulesDir, 'modules.builtin'), 'utf8')).split('\n').filter(Boolean).map(modName),
  );
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (name: string) => {
    const n = norm(name);
    if (seen.has(n)) return;
    seen.add(n);
    if (builtin.has(n)) return;
    const e = deps.get(n);
    if (!e) throw new Error(`module ${n} is neither in modules.dep nor built in (${modulesDir})`);
    for (const d of e.deps) visit(d);
    order.push(e.file);
  };
  names.forEach(visit);
  return order;
}

/** Builds a newc cpio initrd: busybox at /bin/busybox, applet links, /init, modules. */
async function buildInitrd(t: Target, dir: string, initScript: string, modules: string[] = []): Promise<string> {
  const root = path.join(dir, 'root');
  await rm(root, { recursive: true, force: true });
  for (const d of ['bin', 'sbin', 'proc', 'sys', 'dev', 'tmp', 'etc', 'lib/modules']) await mkdir(path.join(root, d), { recursive: true });
  await copyFile(t.busybox, path.join(root, 'bin/busybox'));
  await chmod(path.join(root, 'bin/busybox'), 0o755);
  for (const a of ['sh', 'mount', 'cat', 'ls', 'echo', 'sleep', 'insmod', 'poweroff', 'reboot']) await symlink('busybox', path.join(root, 'bin', a));
  await writeFile(path.join(root, 'init'), initScript, { mode: 0o755 });
  const files = await resolveModules(t.modules, modules);
  const names: string[] = [];
  for (const f of files) {
    const base = path.basename(f);
    await copyFile(path.join(t.modules, f), path.join(root, 'lib/modules', base));
    names.push(base);
  }
  await writeFile(path.join(root, 'etc/modules'), names.map((n) => n + '\n').join(''));
  const list = (await run('find', ['.', '-mindepth', '1'], { cwd: root })).stdout.split('\n').filter(Boolean).sort().join('\n') + '\n';
  const cpio = await run('cpio', ['-o', '-H', 'newc', '--quiet', '-R', '0:0', '--reproducible'], { cwd: root, input: list, binary: true });
  const out = path.join(dir, 'initrd.cpio');
  await writeFile(out, cpio.stdoutBuffer!);
  return out;
}

const INIT_HEAD = `#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
`;

const ARCHES: Arch[] = ['amd64', 'arm64'];

describe.concurrent.each(ARCHES)('qemu harness on %s', (arch) => {
  let target: Target;
  let tmp: string;

  beforeAll(async () => {
    target = await loadTarget(arch, CACHE);
    tmp = await mkdtemp(path.join(tmpdir(), `sb-qemu-${arch}-`));
  });
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  itConcurrent('boots a busybox initrd to a marker and powers off', async () => {
    const dir = path.join(tmp, 'hello');
    await mkdir(dir);
    const initrd = await buildInitrd(
      target,
      dir,
      INIT_HEAD +
        `echo "SB-HELLO arch=$(uname -m) kernel=$(uname -r) cmdline=$(cat /proc/cmdline)"
poweroff -f
`,
    );
    const r = await bootOnce({ target, initrd, append: 'quiet', until: /SB-HELLO arch=(\S+) kernel=(\S+)/, timeoutMs: 300_000, logFile: path.join(dir, 'console.log') });
    timings.push(`${arch} hello: marker after ${r.matchMs} ms, exit after ${r.durationMs} ms`);
    expect(r.match?.[1], r.output).toBe(arch === 'amd64' ? 'x86_64' : 'aarch64');
    expect(r.match?.[2]).toBe(target.kver);
    expect(r.how, r.output).toBe('poweroff');
    expect(r.code).toBe(0);
    expect(r.output).toContain('panic=-1');
    expect(await readFile(path.join(dir, 'console.log'), 'utf8')).toContain('SB-HELLO');
  });

  if (arch === 'amd64') itConcurrent('also boots the compressed bzImage (default is the PVH vmlinux)', async () => {
    expect(target.vmlinux, 'setup should have unpacked vmlinux').toBeDefined();
    const dir = path.join(tmp, 'bzimage');
    await mkdir(dir);
    const initrd = await buildInitrd(target, dir, INIT_HEAD + `echo "SB-HELLO $(uname -r)"\npoweroff -f\n`);
    const r = await bootOnce({ target, initrd, kernel: target.kernel, append: 'quiet', until: /SB-HELLO (\S+)/, timeoutMs: 300_000 });
    timings.push(`${arch} hello (bzImage): marker after ${r.matchMs} ms, exit after ${r.durationMs} ms`);
    expect(r.match?.[1], r.output).toBe(target.kver);
    expect(r.how).toBe('poweroff');
  });

  itConcurrent('the whole console reaches the test, even when the test process is busy and the guest powers off at once', async () => {
    const dir = path.join(tmp, 'busy');
    await mkdir(dir);
    // ~50 kB: less than a pipe holds, so nothing depends on a read in the 1 ms breaks
    const lines = 1000;
    const initrd = await buildInitrd(target, dir, INIT_HEAD + `i=0; while [ $i -lt ${lines} ]; do echo "SB-LINE $i of a console that must arrive whole"; i=$((i+1)); done\necho SB-END\npoweroff -f\n`);
    const vm = Vm.start({ target, initrd, append: 'quiet', timeoutMs: 300_000, name: `${arch}-busy` });
    // the test process mostly busy (as when the test beside it hashes or builds): 200 ms
    // of work, 1 ms to breathe, until the guest is gone
    let gone = false;
    void vm.waitExit(290_000).finally(() => (gone = true));
    while (!gone) {
      const until = Date.now() + 200;
      while (Date.now() < until) {
        /* busy */
      }
      await new Promise((r) => setTimeout(r, 1));
    }
    const exit = await vm.waitExit(1000);
    expect(exit.how).toBe('poweroff');
    const got = exit.output.split('\n').filter((l) => l.startsWith('SB-LINE ')).length;
    expect(got, consoleTail(exit.output, 5)).toBe(lines);
    expect(exit.output).toMatch(/^SB-END$/m);
    expect(exit.output, 'the kernel\'s last line').toMatch(/reboot: Power down/);
  });

  itConcurrent('sees virtio, nvme and sd disks after insmod of the bus modules', async () => {
    const dir = path.join(tmp, 'disks');
    await mkdir(dir);
    const disks: Disk[] = [
      { file: path.join(dir, 'v0.img'), bus: 'virtio', serial: 'sb-virtio-0' },
      { file: path.join(dir, 'n0.img'), bus: 'nvme', serial: 'sb-nvme-0' },
      { file: path.join(dir, 's0.img'), bus: 'sd' },
      { file: path.join(dir, 'v1.img'), bus: 'virtio', serial: 'sb-virtio-1', readonly: true },
    ];
    const sizes = [16, 32, 64, 8]; // MiB; SD card images must be a power of two
    for (const [i, d] of disks.entries()) {
      await writeFile(d.file, '');
      await truncate(d.file, sizes[i]! * 1024 * 1024);
    }
    const names = guestDeviceNames(disks);
    expect(names).toEqual(['vda', 'nvme0n1', 'mmcblk0', 'vdb']);
    const mods = modulesForBuses(disks.map((d) => d.bus));
    const initrd = await buildInitrd(
      target,
      dir,
      INIT_HEAD +
        `for m in $(cat /etc/modules); do insmod /lib/modules/$m || echo "SB-INSMOD-FAILED $m"; done
n=0
while [ $n -lt 100 ]; do
  ok=1
  for d in ${names.join(' ')}; do [ -e /sys/block/$d ] || ok=0; done
  [ $ok = 1 ] && break
  sleep 0.1; n=$((n+1))
done
for d in ${names.join(' ')}; do
  if [ -e /sys/block/$d ]; then
    s=$(cat /sys/block/$d/serial 2>/dev/null || cat /sys/block/$d/device/serial 2>/dev/null)
    echo "SB-DISK $d size=$(cat /sys/block/$d/size) ro=$(cat /sys/block/$d/ro) serial=$s"
  else
    echo "SB-DISK $d missing"
  fi
done
echo "SB-PARTITIONS"; cat /proc/partitions
echo "SB-DONE"
poweroff -f
`,
      mods,
    );
    const vm = Vm.start({ target, initrd, disks, append: 'quiet', timeoutMs: 300_000, logFile: path.join(dir, 'console.log') });
    await vm.waitFor(/SB-DONE/);
    const exit = await vm.waitExit(60_000);
    timings.push(`${arch} disks: exit after ${exit.durationMs} ms`);
    const out = vm.output();
    expect(out, vm.failMessage('an insmod failed')).not.toMatch(/SB-INSMOD-FAILED/);
    const expected = [
      ['vda', 16, 0, 'sb-virtio-0'],
      ['nvme0n1', 32, 0, 'sb-nvme-0'],
      ['mmcblk0', 64, 0, ''],
      ['vdb', 8, 1, 'sb-virtio-1'],
    ] as const;
    for (const [dev, mib, ro, serial] of expected) {
      const m = new RegExp(`^SB-DISK ${dev} size=(\\d+) ro=(\\d) serial=(.*)$`, 'm').exec(out);
      expect(m, vm.failMessage(`${dev} not seen by the guest`)).not.toBeNull();
      expect(Number(m![1]), vm.failMessage(`${dev} size`)).toBe(mib * 2048);
      expect(Number(m![2]), vm.failMessage(`${dev} ro`)).toBe(ro);
      if (serial) expect(m![3]!.trim()).toBe(serial);
    }
    expect(exit.how).toBe('poweroff');
  });

  itConcurrent('kill() is a power cut at a chosen console line', async () => {
    const dir = path.join(tmp, 'kill');
    await mkdir(dir);
    const initrd = await buildInitrd(target, dir, INIT_HEAD + `echo SB-ALIVE\nwhile true; do sleep 1; done\n`);
    const vm = Vm.start({ target, initrd, append: 'quiet', timeoutMs: 300_000 });
    await vm.killWhen(/SB-ALIVE/);
    const exit = await vm.waitExit(10_000);
    timings.push(`${arch} kill: killed after ${exit.durationMs} ms`);
    expect(exit.how).toBe('killed');
    expect(exit.signal).toBe('SIGKILL');
  });

  itConcurrent('a kernel panic (init exits) ends the VM instead of hanging', async () => {
    const dir = path.join(tmp, 'panic');
    await mkdir(dir);
    const initrd = await buildInitrd(target, dir, INIT_HEAD + `echo SB-EXITING\nexit 3\n`);
    const r = await bootOnce({ target, initrd, append: 'quiet', until: /SB-EXITING/, timeoutMs: 300_000 });
    timings.push(`${arch} panic: exit after ${r.durationMs} ms`);
    expect(r.how, r.output).toBe('panic');
    expect(r.output).toMatch(/Attempted to kill init/);
  });
});

describe('loadTarget', () => {
  itConcurrent('says to run setup when the test kernel is missing', async () => {
    await expect(loadTarget('arm64', '/nonexistent')).rejects.toMatchObject({
      code: 'TOOL',
      message: expect.stringContaining('test kernel for arm64 is missing: run npm run setup'),
    });
  });
});

describe('harness timeouts', () => {
  itConcurrent('waitFor rejects with the console tail and kills the VM', async () => {
    const target = await loadTarget('amd64', CACHE);
    const dir = await mkdtemp(path.join(tmpdir(), 'sb-qemu-timeout-'));
    try {
      const initrd = await buildInitrd(target, dir, INIT_HEAD + `echo SB-WAITING\nwhile true; do sleep 1; done\n`);
      const vm = Vm.start({ target, initrd, append: 'quiet' });
      await vm.waitFor(/SB-WAITING/);
      const mark = vm.mark();
      await expect(vm.waitFor(/never printed/, { timeoutMs: 1000, from: mark })).rejects.toThrow(/timed out after 1000 ms[\s\S]*console tail[\s\S]*SB-WAITING/);
      const exit = await vm.waitExit(10_000);
      expect(exit.how).toBe('killed');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
