/**
 * Can the kernel that mounts a stack's layers read them (boot/kconfig.ts)? The kernel
 * that mounts every stack first is the boot partition's (the hook runs on it, and a
 * stack with a kernel of its own is kexec'ed only after its layers were mounted), and
 * that is the running kernel when the booted stack has no kernel of its own. Then its
 * config (`/proc/config.gz`, else `/boot/config-<release>`) tells whether it reads the
 * stack's compressor, overlayfs and loop devices; otherwise nothing is known, and
 * nothing is said against the stack.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { parseKernelConfig, stackKernelNeeds, unmetNeeds, type KernelConfig, type KernelNeed } from '../boot/index.js';
import type { Manifest } from '../format/index.js';
import type { NodeContext } from './context.js';

export interface KernelLookup {
  /** default /proc */
  procDir?: string;
  /** default /boot */
  bootDir?: string;
  /** default the running kernel's (uname -r) */
  release?: string;
}

/** The running kernel's config, or null when neither /proc/config.gz nor /boot/config-<release> is there. */
export async function runningKernelConfig(o: KernelLookup = {}): Promise<{ source: string; release: string; config: KernelConfig } | null> {
  const release = o.release ?? os.release();
  const gz = path.join(o.procDir ?? '/proc', 'config.gz');
  const z = await fs.readFile(gz).catch(() => null);
  if (z) {
    try {
      return { source: gz, release, config: parseKernelConfig(gunzipSync(z).toString('utf8')) };
    } catch {
      // unreadable: try /boot
    }
  }
  const file = path.join(o.bootDir ?? '/boot', `config-${release}`);
  const t = await fs.readFile(file, 'utf8').catch(() => null);
  return t === null ? null : { source: file, release, config: parseKernelConfig(t) };
}

export type KernelVerdict =
  | { known: true; release: string; source: string; unmet: KernelNeed[] }
  | { known: false; why: string };

/**
 * Whether the boot partition's kernel reads stacks of `manifest`'s compression, judged on
 * the running kernel when it is that kernel (the booted stack of CTX has no kernel line).
 */
export async function bootKernelReads(ctx: NodeContext, manifest: Pick<Manifest, 'compression'>, o: KernelLookup = {}): Promise<KernelVerdict> {
  if (!ctx.booted || !ctx.bootedSlot) return { known: false, why: 'not booted from this store: the kernel that will boot it is not this one' };
  const booted = await ctx.store.slotManifest(ctx.bootedSlot).catch(() => null);
  if (!booted) return { known: false, why: 'the booted stack has no readable manifest' };
  if (booted.manifest.kernel) return { known: false, why: `the running kernel is the booted stack's own (${booted.manifest.kernel.release}, kexec'ed), not the boot partition's` };
  const k = await runningKernelConfig(o);
  if (!k) return { known: false, why: 'the running kernel has no /proc/config.gz or /boot/config-<release>' };
  return { known: true, release: k.release, source: k.source, unmet: unmetNeeds(k.config, stackKernelNeeds(manifest.compression ?? 'zstd')) };
}
