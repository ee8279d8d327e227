/**
 * The stack kernel step of the boot core (initramfs/kexec.sh) under busybox sh with a
 * fake root: when a stack names a kernel other than the running one, its try is counted,
 * its boot files are checked against the manifest, and it is loaded and jumped into with
 * kexec; the second stage boots the same slot without counting another try; a bad kernel
 * file falls back on the same boot.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fakeRoots, readEvents, readState, sha256, type FakeRoot, type Store } from './harness.js';

const roots = fakeRoots();
const CONF = 'STORES=vda\nTRIES=3\n';
const RUNNING = '6.1.0-41-amd64';
const NEW = '6.12.48+deb12-amd64';

/** Adds kernel/initrd (and fdt) lines to SLOT's manifest and the files to the new root; returns the new stack id. */
function giveKernel(r: FakeRoot, store: Store, slot: 'a' | 'b', o: { release?: string; corrupt?: boolean; fdt?: boolean; line?: string } = {}): string {
  const release = o.release ?? NEW;
  const files: [string, string, Buffer][] = [
    ['kernel', `/boot/vmlinuz-${release}`, Buffer.from(`kernel ${release} ${slot}`)],
    ['initrd', `/boot/stackboot/initrd-${release}.img`, Buffer.from(`initrd ${release} ${slot}`)],
  ];
  if (o.fdt) files.push(['fdt', `/boot/dtb/${release}.dtb`, Buffer.from(`fdt ${release}`)]);
  const lines = files.map(([k, p, b]) => `${k} ${k === 'kernel' ? `${release} ` : ''}${p} sha256:${sha256(b)} ${b.length}`);
  for (const [, p, b] of files) {
    mkdirSync(dirname(join(r.newRoot, p)), { recursive: true });
    const out = Buffer.from(b);
    if (o.corrupt && p.includes('vmlinuz')) out[0] = out[0]! ^ 1;
    writeFileSync(join(r.newRoot, p), out);
  }
  const mf = join(store.dir, 'slots', slot, 'manifest');
  const text = readFileSync(mf, 'utf8').replace('\nlayer ', `\n${o.line ?? lines.join('\n')}\nlayer `);
  writeFileSync(mf, text);
  const id = sha256(text);
  writeFileSync(join(store.dir, 'state'), readState(store).replace(store.stack[slot]!, id));
  store.stack[slot] = id;
  return id;
}

/** The sb_sys_* kexec fakes: release RELEASE; load/exec recorded; a jump ends the script. */
const kexecFakes = (release: string, o: { loadFails?: boolean; noKexec?: boolean } = {}) => `
sb_sys_kernel_release() { echo '${release}'; }
sb_sys_has_kexec() { ${o.noKexec ? 'return 1' : 'return 0'}; }
sb_sys_kexec_load() { sb__rec "kexec-load $1 $2 [$3] $4"; ${o.loadFails ? 'return 1' : 'return 0'}; }
sb_sys_kexec_exec() { sb__rec "kexec-exec"; echo JUMPED; exit 0; }
`;

async function boot(r: FakeRoot, release: string, env: Record<string, string> = {}, o: { loadFails?: boolean; noKexec?: boolean } = {}) {
  writeFileSync(join(r.dir, 'boot.conf'), CONF);
  return r.sh(`${kexecFakes(release, o)}
sb_config_load "$SB_T/boot.conf"
sb_boot "$SB_T/root"; rc=$?
echo "BOOT=$rc"`, env);
}

function oneStore(r: FakeRoot, spec: Parameters<FakeRoot['makeStore']>[1]): Store {
  const store = r.makeStore('s1', spec);
  r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: store.dir }]);
  return store;
}

describe('stack kernels (kexec)', () => {
  it('a stack without a kernel line boots on the running kernel, no kexec', async () => {
    const r = roots();
    oneStore(r, { current: 'a', a: { status: 'good' } });
    const res = await boot(r, RUNNING);
    expect(res.out).toContain('BOOT=0');
    expect(r.calls().filter((c) => c.startsWith('kexec'))).toEqual([]);
  });

  it('a stack whose kernel is the running one boots as today', async () => {
    const r = roots();
    const store = oneStore(r, { current: 'a', a: { status: 'good' } });
    giveKernel(r, store, 'a', { release: RUNNING });
    const res = await boot(r, RUNNING);
    expect(res.out).toContain('BOOT=0');
    expect(r.calls().filter((c) => c.startsWith('kexec'))).toEqual([]);
    expect(r.booted().slot).toBe('a');
  });

  it('a pending stack with another kernel: the try is counted, the files checked, then kexec with the slot on the command line', async () => {
    const r = roots();
    const store = oneStore(r, { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3 } });
    const id = giveKernel(r, store, 'b');
    const res = await boot(r, RUNNING, { SB_CMDLINE: 'BOOT_IMAGE=/vmlinuz console=ttyS0 panic=10 stackboot.kexec=junk' });
    expect(res.out).toContain('JUMPED');
    expect(res.out).not.toContain('BOOT=');
    expect(readState(store)).toContain(`b pending ${id} 2`);
    const load = r.calls().find((c) => c.startsWith('kexec-load'))!;
    expect(load).toBe(`kexec-load ${r.newRoot}/boot/vmlinuz-${NEW} ${r.newRoot}/boot/stackboot/initrd-${NEW}.img [] console=ttyS0 panic=10 stackboot.kexec=${store.id}:b:${id}`);
    const calls = r.calls();
    // the jump comes after the stack is unmounted and the store is read-only again
    const exec = calls.indexOf('kexec-exec');
    expect(calls.slice(0, exec).some((c) => c.includes('umount') && c.includes('/root'))).toBe(true);
    expect(calls.slice(0, exec).filter((c) => c.includes('remount')).at(-1)).toMatch(/remount,ro/);
    expect(readEvents(store).map((e) => `${e.event} ${e.slot} ${e.reason}`)).toEqual([`try b pending, 2 tries left after this one`, `kexec b kernel ${RUNNING} -> ${NEW}`]);
  });

  it('passes the device tree when the stack has one', async () => {
    const r = roots();
    const store = oneStore(r, { current: 'a', a: { status: 'good' } });
    giveKernel(r, store, 'a', { fdt: true });
    const res = await boot(r, RUNNING);
    expect(res.out).toContain('JUMPED');
    expect(r.calls().find((c) => c.startsWith('kexec-load'))).toContain(`[${r.newRoot}/boot/dtb/${NEW}.dtb]`);
  });

  it('the second stage boots the chosen slot without counting another try', async () => {
    const r = roots();
    const store = oneStore(r, { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 2 } });
    const id = giveKernel(r, store, 'b');
    const res = await boot(r, NEW, { SB_CMDLINE: `console=ttyS0 stackboot.kexec=${store.id}:b:${id}` });
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('b');
    expect(readState(store)).toContain(`b pending ${id} 2`);
    expect(r.calls().filter((c) => c.startsWith('kexec'))).toEqual([]);
    expect(readEvents(store).map((e) => e.event)).toEqual(['boot']);
  });

  it('a corrupt kernel file is refused before kexec and the node falls back on the same boot', async () => {
    const r = roots();
    const store = oneStore(r, { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3 } });
    giveKernel(r, store, 'b', { corrupt: true });
    const res = await boot(r, RUNNING);
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('a');
    expect(r.calls().filter((c) => c.startsWith('kexec'))).toEqual([]);
    expect(readState(store)).toMatch(/\nb bad /);
    const fail = readEvents(store).find((e) => e.event === 'fail')!;
    expect(fail.reason).toMatch(/kernel \/boot\/vmlinuz-6\.12\.48\+deb12-amd64 is corrupt/);
  });

  it('a second stage that still runs another kernel fails that slot (no kexec loop) and falls back', async () => {
    const r = roots();
    const store = oneStore(r, { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 2 } });
    const id = giveKernel(r, store, 'b');
    const res = await boot(r, RUNNING, { SB_CMDLINE: `stackboot.kexec=${store.id}:b:${id}` });
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('a');
    expect(readEvents(store).find((e) => e.event === 'fail')!.reason).toContain(`kexec'ed for kernel ${NEW} but ${RUNNING} runs`);
  });

  it('an initrd without kexec: the slot fails but is not marked bad (the machine is at fault)', async () => {
    const r = roots();
    const store = oneStore(r, { current: 'a', a: { status: 'good' }, b: { status: 'good' } });
    giveKernel(r, store, 'a');
    const res = await boot(r, RUNNING, {}, { loadFails: true, noKexec: true });
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('b');
    expect(readState(store)).toMatch(/\na good /);
    expect(readEvents(store).find((e) => e.event === 'fail')!.reason).toContain('no kexec in this initrd (not marked bad)');
  });

  it.each([
    ['a relative path', `kernel ${NEW} boot/vmlinuz sha256:${'a'.repeat(64)} 10`],
    ['a short digest', `kernel ${NEW} /boot/vmlinuz sha256:abc 10`],
    ['a path with ..', `kernel ${NEW} /boot/../vmlinuz sha256:${'a'.repeat(64)} 10`],
    ['no initrd', `kernel ${NEW} /boot/vmlinuz sha256:${'a'.repeat(64)} 10`],
  ])('a malformed kernel line (%s) fails the slot, never the boot', async (_n, line) => {
    const r = roots();
    const store = oneStore(r, { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3 } });
    giveKernel(r, store, 'b', { line });
    const res = await boot(r, RUNNING);
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('a');
    expect(readState(store)).toMatch(/\nb bad /);
  });
});
