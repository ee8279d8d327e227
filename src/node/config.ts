/**
 * The node's config, `/etc/stackboot/config`: the same KEY=value format as the boot.conf
 * baked into the initramfs (parsed by src/boot/bootconfig.ts, never a second parser), plus
 * node-only keys:
 *
 *   KEYS_DIR=/etc/stackboot/keys   public keys (*.pub) that may sign stacks
 *   COMPATIBLE=<word>              the compatible string this node accepts (default: the
 *                                  booted stack's)
 *   ALLOW_UNSIGNED=0|1             install stacks without a valid signature (default 0)
 *   MIN_FREE=<bytes>               space to keep free on the store after an install
 *   FIRMWARE=none|jetson|uboot     a firmware-slot backend mark-good also tells (firmware.ts)
 *   REGISTRY_AUTH=<file>           credentials for `install oci://…`: a docker-style auths
 *                                  file ({"auths": {"host:port": {"auth": …}}}), mode 0600
 *   REGISTRY_CA=<file>             CAs (PEM) trusted for registries besides the system's
 */
import { promises as fs } from 'node:fs';
import { StackbootError } from '../sys/index.js';
import { BOOT_CONFIG_KEYS, makeBootConfig, parseBootConfigText, type BootConfig, type BootConfigKey } from '../boot/index.js';

import { DEFAULT_KEYS_DIR, NODE_CONFIG } from './paths.js';
import { FIRMWARE_KINDS, type FirmwareKind } from './firmware.js';
export { DEFAULT_KEYS_DIR, NODE_CONFIG };

export interface NodeOnly {
  KEYS_DIR: string;
  COMPATIBLE: string | null;
  ALLOW_UNSIGNED: boolean;
  MIN_FREE: number;
  REGISTRY_AUTH: string | null;
  REGISTRY_CA: string | null;
  /** the firmware-slot backend mark-good also tells (node/firmware.ts) */
  FIRMWARE: FirmwareKind;
}

export interface NodeConfig {
  boot: BootConfig;
  node: NodeOnly;
  /** where it was read from, or null for the defaults */
  file: string | null;
}

export const NODE_ONLY_KEYS = ['KEYS_DIR', 'COMPATIBLE', 'ALLOW_UNSIGNED', 'MIN_FREE', 'REGISTRY_AUTH', 'REGISTRY_CA', 'FIRMWARE'] as const;

export function parseNodeConfig(text: string, origin = 'node config'): NodeConfig {
  const node: NodeOnly = { KEYS_DIR: DEFAULT_KEYS_DIR, COMPATIBLE: null, ALLOW_UNSIGNED: false, MIN_FREE: 1 << 20, REGISTRY_AUTH: null, REGISTRY_CA: null, FIRMWARE: 'none' };
  const bootPairs: [string, string][] = [];
  for (const [k, v] of parseBootConfigText(text, origin)) {
    switch (k) {
      case 'KEYS_DIR':
        if (!v.startsWith('/')) throw new StackbootError('CONFIG', `${origin}: KEYS_DIR must be an absolute path`);
        node.KEYS_DIR = v;
        break;
      case 'COMPATIBLE':
        if (!/^\S+$/.test(v)) throw new StackbootError('CONFIG', `${origin}: COMPATIBLE must be one word`);
        node.COMPATIBLE = v;
        break;
      case 'ALLOW_UNSIGNED':
        if (!/^[01]$/.test(v)) throw new StackbootError('CONFIG', `${origin}: ALLOW_UNSIGNED must be 0 or 1`);
        node.ALLOW_UNSIGNED = v === '1';
        // the same key in boot.conf lets the initrd boot unsigned manifests (verified boot)
        bootPairs.push([k, v]);
        break;
      case 'MIN_FREE':
        if (!/^\d+$/.test(v)) throw new StackbootError('CONFIG', `${origin}: MIN_FREE must be a number of bytes`);
        node.MIN_FREE = Number(v);
        break;
      case 'REGISTRY_AUTH':
      case 'REGISTRY_CA':
        if (!v.startsWith('/')) throw new StackbootError('CONFIG', `${origin}: ${k} must be an absolute path`);
        node[k] = v;
        break;
      case 'FIRMWARE':
        if (!(FIRMWARE_KINDS as readonly string[]).includes(v)) throw new StackbootError('CONFIG', `${origin}: FIRMWARE must be one of ${FIRMWARE_KINDS.join(', ')}`);
        node.FIRMWARE = v as FirmwareKind;
        break;
      default:
        bootPairs.push([k, v]);
    }
  }
  const boot = makeBootConfig({ set: bootPairs.map(([k, v]) => [k, v] as [string, string]) });
  return { boot, node, file: null };
}

/** Reads the node config; a missing file gives the defaults. */
export async function loadNodeConfig(file = NODE_CONFIG): Promise<NodeConfig> {
  const text = await fs.readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw new StackbootError('CONFIG', `cannot read ${file}`, { cause: e });
  });
  if (text === null) return parseNodeConfig('', file);
  const c = parseNodeConfig(text, file);
  c.file = file;
  return c;
}

export interface ConfigDiff {
  key: BootConfigKey;
  node: string;
  initramfs: string;
}

/** The boot keys on which two configs differ (the node's and the initramfs's). */
export function diffBootConfig(node: BootConfig, initrd: BootConfig): ConfigDiff[] {
  const s = (v: unknown) => (Array.isArray(v) ? v.join(' ') : String(v));
  return BOOT_CONFIG_KEYS.filter((k) => s(node[k]) !== s(initrd[k])).map((k) => ({ key: k, node: s(node[k]), initramfs: s(initrd[k]) }));
}
