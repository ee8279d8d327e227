/**
 * Run sources: a command run in a chroot over the lower layers of the stack, captured as
 * the overlay's upper directory (whiteouts and opaque dirs included). Needs root, since
 * it mounts the lower layers, an overlay, /proc and /dev.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StackbootError, run, bindMount, mountOverlay, mountSquashfs, mountTmpfs, mountsUnder, umountAll, onInterrupt } from '../../sys/index.js';

export interface RunCapture {
  /** the upper directory holding the command's changes */
  upper: string;
  /** unmount and remove everything */
  cleanup(): Promise<void>;
  log: string;
}

/** Host variables a run source's command gets (docker build passes the same through): the network's proxies. */
export const PASSED_THROUGH = ['http_proxy', 'https_proxy', 'ftp_proxy', 'no_proxy', 'all_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'FTP_PROXY', 'NO_PROXY', 'ALL_PROXY'];

/**
 * The command's whole environment: fixed variables, SOURCE_DATE_EPOCH, the caller's
 * `passed` (its proxies, see PASSED_THROUGH), then the recipe's `env`. Nothing else of the
 * host's: the layer is cached by its lowers, command, env and epoch, so what the command
 * sees must not depend on who runs the build (a host's TMPDIR, LC_ALL or PYTHONPATH).
 */
export function commandEnv(o: { epoch: number; passed?: Record<string, string>; env?: Record<string, string> }): Record<string, string> {
  return {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: '/root',
    LANG: 'C.UTF-8',
    DEBIAN_FRONTEND: 'noninteractive',
    SOURCE_DATE_EPOCH: String(o.epoch),
    ...(o.passed ?? {}),
    ...(o.env ?? {}),
  };
}

/**
 * Runs `command` with `/bin/sh -c` in a chroot of the lowers (bottom first) and
 * returns the upper dir. The caller packs it and then calls cleanup().
 */
export async function runOverLayers(opts: {
  name: string;
  lowers: string[];
  command: string;
  env?: Record<string, string>;
  /** host variables for the command (proxies, see PASSED_THROUGH) */
  passed?: Record<string, string>;
  epoch?: number;
  uid: number | undefined;
  tmpRoot?: string;
}): Promise<RunCapture> {
  if (opts.uid !== 0) {
    throw new StackbootError('NEEDS_ROOT', `layer ${opts.name}: a "run" source needs root (it mounts the lower layers and an overlay to run its command); run the build as root, or build this layer from a dir or tar source`);
  }
  const base = await fs.mkdtemp(path.join(opts.tmpRoot ?? os.tmpdir(), 'sb-run-'));
  const mounted: string[] = [];
  // an interrupt must unmount (the binds of the host's /proc, /dev, /sys first) before
  // the folder is removed: rm -rf through a bind mount deletes the host's files
  const off = onInterrupt(() => cleanup());
  // one cleanup, however many ask: an interrupt stops the command, whose failure runs
  // this too, and the interrupt must wait for all of it before the process exits
  let cleaning: Promise<void> | null = null;
  const cleanup = (): Promise<void> => (cleaning ??= unmountAndRemove());
  const unmountAndRemove = async () => {
    off();
    await umountAll(mounted);
    // a mount an interrupt caught before it was listed: off too, and never rm -rf
    // through one
    await umountAll(await mountsUnder(base));
    const left = await mountsUnder(base);
    if (left.length) throw new StackbootError('IO', `layer ${opts.name}: cannot unmount ${left.join(', ')}; ${base} is left in place`);
    await fs.rm(base, { recursive: true, force: true });
  };
  try {
    const lowerDirs: string[] = [];
    for (let i = 0; i < opts.lowers.length; i++) {
      const d = path.join(base, `l${i}`);
      await mountSquashfs(opts.lowers[i], d);
      mounted.push(d);
      lowerDirs.push(d);
    }
    const rw = path.join(base, 'rw');
    await mountTmpfs(rw, '75%');
    mounted.push(rw);
    const upper = path.join(rw, 'upper');
    const work = path.join(rw, 'work');
    await fs.mkdir(upper);
    await fs.mkdir(work);
    const merged = path.join(base, 'm');
    // index/redirect/metacopy off: the upper must hold plain files, whiteouts and opaque dirs only
    await mountOverlay(merged, [...lowerDirs].reverse(), { upper, work }, ['index=off', 'redirect_dir=off', 'metacopy=off', 'xino=off']);
    mounted.push(merged);
    for (const [src, dst] of [['/proc', 'proc'], ['/dev', 'dev'], ['/sys', 'sys']] as const) {
      const target = path.join(merged, dst);
      const has = await fs.stat(target).then((s) => s.isDirectory(), () => false);
      if (!has) continue;
      await bindMount(src, target);
      mounted.push(target);
    }
    // name resolution for package managers: the host's resolv.conf, bound read-only over
    // the root's (created for the run and removed from the upper after, when it had none)
    const resolv = path.join(merged, 'etc/resolv.conf');
    let createdResolv = false;
    const hostResolv = await fs.stat('/etc/resolv.conf').then((x) => x.isFile(), () => false);
    const hasEtc = await fs.stat(path.join(merged, 'etc')).then((x) => x.isDirectory(), () => false);
    if (hostResolv && hasEtc) {
      const st = await fs.lstat(resolv).catch(() => null);
      if (!st || st.isSymbolicLink()) {
        if (st) await fs.rm(resolv);
        await fs.writeFile(resolv, '');
        createdResolv = true;
      }
      await bindMount('/etc/resolv.conf', resolv, true);
      mounted.push(resolv);
    }
    const r = await run('chroot', [merged, '/bin/sh', '-c', opts.command], {
      env: commandEnv({ epoch: opts.epoch ?? 0, passed: opts.passed, env: opts.env }),
      extendEnv: false,
      reject: false,
    });
    if (r.exitCode !== 0) {
      throw new StackbootError('SOURCE', `layer ${opts.name}: command failed (exit ${r.exitCode}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    }
    // unmount the binds and the overlay; keep the tmpfs with the upper
    await umountAll(mounted.slice(lowerDirs.length + 1));
    mounted.length = lowerDirs.length + 1;
    if (createdResolv) {
      // what we created (and any whiteout of a symlink we replaced) is not the command's
      await fs.rm(path.join(upper, 'etc/resolv.conf'), { force: true });
    }
    // the work dir is overlay's scratch space, not part of the layer
    await fs.rm(work, { recursive: true, force: true });
    return { upper, cleanup, log: r.stdout + r.stderr };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
