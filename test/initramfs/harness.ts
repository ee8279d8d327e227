/**
 * Test harness for the boot shell core (initramfs/*.sh): builds a fake root in a temp
 * dir (sysfs block entries, device files, stores with manifests and layer files of the
 * right size and real sha256) and runs the real library under `busybox sh` with the
 * sb_sys_* functions replaced by fakes that record their calls.
 */
import { createHash, randomBytes } from 'node:crypto';
import { symlinkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach } from 'vitest';
import { run } from '../../src/sys/exec.js';
import { withStacks } from '../protocol/vectors.js';

export const LIB = fileURLToPath(new URL('../../initramfs', import.meta.url));
export const NODE_TOOL = join(LIB, 'stackboot-node');

export const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

export interface LayerSpec {
  name: string;
  size: number;
  /** Leave the file out of layers/. */
  missing?: boolean;
  /** Flip a byte (same size, wrong sha256). */
  corrupt?: boolean;
  /** Write a file of a different size. */
  wrongSize?: boolean;
}

export interface SlotSpec {
  status: 'good' | 'pending' | 'bad';
  tries?: number;
  layers?: LayerSpec[];
  /** Record a different stack id in the state than the manifest hashes to. */
  idMismatch?: boolean;
}

export interface StoreSpec {
  storeId?: string;
  current?: 'a' | 'b' | '-';
  a?: SlotSpec;
  b?: SlotSpec;
  /** No state file at all. */
  noState?: boolean;
}

export interface Store {
  dir: string;
  id: string;
  stack: Partial<Record<'a' | 'b', string>>;
  layerHashes: Partial<Record<'a' | 'b', string[]>>;
}

const DEFAULT_LAYERS: LayerSpec[] = [
  { name: 'base', size: 3000 },
  { name: 'app', size: 1200 },
];

export class FakeRoot {
  readonly dir: string;
  readonly runDir: string;
  readonly newRoot: string;
  private devmap: string[] = [];
  private labels: string[] = [];
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'sb-initramfs-'));
    this.runDir = join(this.dir, 'run');
    this.newRoot = join(this.dir, 'root');
    for (const d of ['sys/class/block', 'dev', 'run', 'stores', 'root']) mkdirSync(join(this.dir, d), { recursive: true });
    writeFileSync(join(this.dir, 'calls'), '');
    writeFileSync(join(this.dir, 'mounts'), '');
    writeFileSync(join(this.dir, 'kmsg'), '');
    writeFileSync(join(this.dir, 'dev/loop-control'), '');
    writeFileSync(join(this.dir, 'filesystems'), 'nodev\ttmpfs\n\text4\n\tsquashfs\nnodev\toverlay\n');
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A disk with partitions; a partition may hold a store directory (by path). */
  addDisk(disk: string, parts: { name: string; label?: string; store?: string; partname?: string }[]): void {
    const sys = join(this.dir, 'sys/class/block');
    mkdirSync(join(sys, disk), { recursive: true });
    writeFileSync(join(this.dir, 'dev', disk), '');
    for (const p of parts) {
      mkdirSync(join(sys, disk, p.name), { recursive: true });
      writeFileSync(join(sys, disk, p.name, 'partition'), '1\n');
      symlinkSync(`${disk}/${p.name}`, join(sys, p.name));
      if (p.partname) writeFileSync(join(sys, disk, p.name, 'uevent'), `DEVTYPE=partition\nPARTNAME=${p.partname}\n`);
      writeFileSync(join(this.dir, 'dev', p.name), '');
      if (p.label) this.labels.push(`${p.name} ${p.label}`);
      if (p.store) this.devmap.push(`${p.name} ${p.store}`);
    }
    writeFileSync(join(this.dir, 'labels'), this.labels.join('\n') + '\n');
    writeFileSync(join(this.dir, 'devmap'), this.devmap.join('\n') + '\n');
  }

  /** A data partition directory (mounted by the fake mount as a symlink). */
  dataDir(name: string): string {
    const d = join(this.dir, 'stores', name);
    mkdirSync(d, { recursive: true });
    return d;
  }

  makeStore(name: string, spec: StoreSpec): Store {
    const dir = join(this.dir, 'stores', name);
    mkdirSync(join(dir, 'layers'), { recursive: true });
    const id = spec.storeId ?? randomBytes(16).toString('hex');
    writeFileSync(join(dir, 'store-id'), id + '\n');
    const store: Store = { dir, id, stack: {}, layerHashes: {} };
    const stateLines = ['stackboot-state 1', `current ${spec.current ?? 'a'}`];
    for (const slot of ['a', 'b'] as const) {
      const s = spec[slot];
      if (!s) continue;
      const layers = s.layers ?? DEFAULT_LAYERS.map((l) => ({ ...l, name: `${l.name}-${slot}` }));
      const lines = ['stackboot-manifest 1', `name demo-${slot}`, 'version 1', 'compatible test', 'created 0', 'compression zstd'];
      const hashes: string[] = [];
      for (const l of layers) {
        const bytes = Buffer.concat([Buffer.from(`${slot}:${l.name}:`), randomBytes(l.size)]).subarray(0, l.size);
        const h = sha256(bytes);
        hashes.push(h);
        lines.push(`layer sha256:${h} ${l.size} ${l.name}`);
        if (l.missing) continue;
        let out = bytes;
        if (l.corrupt) {
          out = Buffer.from(bytes);
          out[0] = out[0]! ^ 0xff;
        }
        if (l.wrongSize) out = bytes.subarray(0, l.size - 1);
        writeFileSync(join(dir, 'layers', `${h}.sqfs`), out);
      }
      const manifest = lines.join('\n') + '\n';
      mkdirSync(join(dir, 'slots', slot), { recursive: true });
      writeFileSync(join(dir, 'slots', slot, 'manifest'), manifest);
      const stack = sha256(manifest);
      store.stack[slot] = stack;
      store.layerHashes[slot] = hashes;
      const recorded = s.idMismatch ? sha256('something else') : stack;
      stateLines.push(`${slot} ${s.status} ${recorded}${s.status === 'pending' ? ` ${s.tries ?? 0}` : ''}`);
    }
    if (!spec.noState) writeFileSync(join(dir, 'state'), stateLines.join('\n') + '\n');
    return store;
  }

  /** The fakes for sb_sys_*: they record calls in $T/calls and never touch real mounts. */
  fakes(): string {
    const T = this.dir;
    return `
SB_T='${T}'
sb__rec() { echo "$*" >> "$SB_T/calls"; }
sb_sys_fslabel() { local n l; while read -r n l; do [ "$SB_DEV/$n" = "$1" ] && echo "$l"; done < "$SB_T/labels"; return 0; }
sb_sys_mount() {
	sb__rec "mount $*"
	local last prev n d
	for last; do :; done
	case " $* " in
	*" -t ext4 "*)
		prev=$5
		[ -n "\${FAKE_FAIL_DEV-}" ] && [ "$SB_DEV/$FAKE_FAIL_DEV" = "$prev" ] && return 32
		while read -r n d; do
			if [ "$SB_DEV/$n" = "$prev" ]; then rmdir "$last" && ln -s "$d" "$last"; echo "$prev $last ext4 ro 0 0" >> "$SB_T/mounts"; return 0; fi
		done < "$SB_T/devmap"
		return 32 ;;
	*" -t overlay "*)
		[ -n "\${FAKE_FAIL_OVERLAY-}" ] && return 32
		mkdir -p "$last/sbin" "$last/etc"
		[ -n "\${FAKE_NO_INIT-}" ] || : > "$last/sbin/init"
		: > "$last/etc/os-release"
		echo "overlay $last overlay rw 0 0" >> "$SB_T/mounts"
		return 0 ;;
	*" -t tmpfs "*) echo "sb-upper $last tmpfs rw 0 0" >> "$SB_T/mounts"; return 0 ;;
	esac
	return 0
}
sb_sys_mount_layer() {
	sb__rec "layer $1 $2"
	local n
	n=$(ls "$SB_T"/state-at-layer-* 2>/dev/null | wc -l)
	cp "\${1%/layers/*}/state" "$SB_T/state-at-layer-$n" 2>/dev/null
	[ -n "\${FAKE_FAIL_LAYER-}" ] && case "$1" in *"$FAKE_FAIL_LAYER"*) return 1 ;; esac
	return 0
}
sb_sys_umount() {
	sb__rec "umount $*"
	[ -L "$1" ] && rm -f "$1" && mkdir -p "$1"
	return 0
}
sb_sys_umount_layer() { sb__rec "umount-layer $1"; return 0; }
sb_sys_modprobe() { sb__rec "modprobe $1"; [ "$1" != missingmod ]; }
sb_sys_sleep() { sb__rec "sleep $1"; return 0; }
sb_sys_reboot() { sb__rec "reboot"; return 0; }
sb_sys_shell() { sb__rec "shell"; return 0; }
sb_sys_fsync() { sb__rec "fsync $1"; return 0; }
mv() { sb__rec "mv $*"; command mv "$@"; }
# the watchdog (watchdog.sh): a device is a file under $SB_DEV; SB_T_WD_* steer the fakes
sb_sys_watchdog_present() { [ -e "$1" ]; }
sb_sys_watchdog_arm() { sb__rec "watchdog-arm $1 $2"; [ -z "\${SB_T_WD_FAIL-}" ] || return 1; echo "\${SB_T_WD_TOOK:-$2}"; }
sb_sys_watchdog_stop_on_reboot() { echo "\${SB_T_WD_SOR-0}"; }
sb_sys_watchdog_stop() { sb__rec "watchdog-stop $1"; [ -z "\${SB_T_WD_BUSY-}" ] || { echo "can't create $1: Device or resource busy" >&2; return 1; }; }
sb_sys_watchdog_state() { echo "\${SB_T_WD_STATE-inactive}"; }
sb_sys_watchdog_bootstatus() { echo "\${SB_T_WD_BOOTSTATUS-0}"; }
`;
  }

  /** The environment every script gets. */
  env(extra: Record<string, string> = {}): Record<string, string> {
    return {
      SB_LIB: LIB,
      SB_RUN: this.runDir,
      SB_DEV: join(this.dir, 'dev'),
      SB_SYS_BLOCK: join(this.dir, 'sys/class/block'),
      SB_PROC_MOUNTS: join(this.dir, 'mounts'),
      SB_KMSG: join(this.dir, 'kmsg'),
      SB_PROC_FILESYSTEMS: join(this.dir, 'filesystems'),
      SB_CMDLINE: '',
      ...extra,
    };
  }

  /** Runs BODY after sourcing the library and the fakes; returns stdout/stderr/exit code. */
  async sh(body: string, env: Record<string, string> = {}, shell: readonly string[] = ['busybox', 'sh']): Promise<{ code: number; out: string; err: string }> {
    const script = join(this.dir, `script-${Math.random().toString(36).slice(2)}.sh`);
    writeFileSync(script, `. "$SB_LIB/stackboot.sh"\n${this.fakes()}\n${body}\n`);
    const r = await run(shell[0]!, [...shell.slice(1), script], { env: this.env(env), reject: false, timeout: 20_000 });
    return { code: r.exitCode, out: r.stdout, err: r.stderr };
  }

  /** sb_config_load CONF; sb_boot ROOT; sb_all_failed on failure. */
  async boot(conf: string, env: Record<string, string> = {}): Promise<{ code: number; out: string; err: string }> {
    writeFileSync(join(this.dir, 'boot.conf'), conf);
    return this.sh(
      `sb_config_load "$SB_T/boot.conf"
sb_boot "$SB_T/root"; rc=$?
echo "BOOT=$rc"
if [ "$rc" != 0 ]; then sb_all_failed; echo "ALLFAILED=$?"; fi`,
      env,
    );
  }

  calls(): string[] {
    return readFileSync(join(this.dir, 'calls'), 'utf8').split('\n').filter(Boolean);
  }

  booted(): Record<string, string> {
    const f = join(this.runDir, 'stackboot/booted');
    if (!existsSync(f)) return {};
    return Object.fromEntries(
      readFileSync(f, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
  }

  statesAtLayerMount(): string[] {
    return readdirSync(this.dir)
      .filter((f) => f.startsWith('state-at-layer-'))
      .sort((a, b) => Number(a.split('-').pop()) - Number(b.split('-').pop()))
      .map((f) => readFileSync(join(this.dir, f), 'utf8'));
  }
}

export function readState(store: Store): string {
  return readFileSync(join(store.dir, 'state'), 'utf8');
}

export function readEvents(store: Store): { event: string; slot: string; stack: string; tries?: string; reason: string }[] {
  const f = join(store.dir, 'events');
  if (!existsSync(f)) return [];
  return readFileSync(f, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const m = /^(\d+) ([a-z]+) slot=(\S+) stack=(\S+)(?: tries=(\d+))? reason=(.*)$/.exec(line);
      if (!m) throw new Error(`malformed event line: ${line}`);
      return { event: m[2]!, slot: m[3]!, stack: m[4]!, tries: m[5], reason: m[6]! };
    });
}

/**
 * For a test file: a maker of fresh FakeRoots, each cleaned up after the test that made it
 * (registers the afterEach).
 */
export function fakeRoots(): () => FakeRoot {
  let made: FakeRoot[] = [];
  afterEach(() => {
    for (const r of made) r.cleanup();
    made = [];
  });
  return () => {
    const r = new FakeRoot();
    made.push(r);
    return r;
  };
}

/**
 * A store for a shared protocol vector (test/protocol/vectors): both slots hold a stack
 * (manifests and layers), the state file is STATE with the vectors' stand-in stack ids
 * (STACK_A, STACK_B) replaced by the real ones, on disk vda (partition vda2).
 */
export function vectorStore(r: FakeRoot, state: string | Buffer): Store {
  const s = r.makeStore('s1', { current: 'a', a: { status: 'good' }, b: { status: 'good' } });
  writeFileSync(join(s.dir, 'state'), withStacks(state.toString(), s.stack));
  r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }]);
  return s;
}

/** The state file of a vector store, with the real stack ids turned back into the stand-ins. */
export function vectorState(s: Store): string {
  return withStacks(readState(s), s.stack, true);
}
