import type { CommandModule } from 'yargs';
import { fmtBytes, makeOut } from '../output.js';
import { archFromNode } from '../../sys/index.js';
import { defaultCacheDir, sourceDateEpoch, wholeNumber } from '../args.js';

export const buildCommand: CommandModule<any, any> = {
  command: 'build <recipe>',
  describe: 'build a stack (layers/<sha256>.sqfs + manifest) from a recipe',
  builder: (y) =>
    y
      .positional('recipe', { type: 'string', describe: 'recipe folder (images/<name>) or recipe.json', demandOption: true })
      .option('out', { alias: 'o', type: 'string', describe: 'output folder', demandOption: true })
      .option('arch', { type: 'string', choices: ['amd64', 'arm64'], describe: 'target architecture (default: this machine)' })
      .option('cache', { type: 'string', describe: 'layer cache folder (default: $XDG_CACHE_HOME/stackboot or ~/.cache/stackboot)' })
      .option('no-cache', { type: 'boolean', describe: 'build every layer, do not read or write the cache' })
      .option('jobs', { alias: 'j', type: 'number', coerce: wholeNumber('jobs', 1, 1024), describe: 'compressor threads, and libzstd processes for frame deltas (output does not depend on it)' })
      .option('busybox', { type: 'string', describe: 'a recipe with a kernel: busybox-static for its initrd (default: the setup target)' })
      .option('chunks', { type: 'boolean', describe: 'write a chunk index beside each layer, and for zstd layers its frame deltas (needs python3-zstandard), named in the manifest, for chunk-delta installs (install --chunks-from, oci://)' })
      .option('kexec-root', { type: 'string', describe: 'a recipe with a kernel: sysroot with sbin/kexec for its initrd (default: the setup target)' })
      .option('verity-root', { type: 'string', describe: 'a recipe with a kernel: sysroot with dmsetup and signify-openbsd for its initrd (default: the setup target)' })
      .option('pub', { type: 'string', array: true, describe: 'a recipe with a kernel: a public key its initrd checks manifests against (repeatable)' })
      .example('$0 build images/demo --out out/demo', 'build the demo stack'),
  handler: async (a) => {
    // loaded here, not at the top: a CLI start stays small for every other command
    const { loadRecipe, buildStack, PASSED_THROUGH } = await import('../../build/index.js');
    const out = makeOut(a);
    const arch = (a.arch as string | undefined) ?? archFromNode(process.arch) ?? 'amd64';
    const recipe = await loadRecipe(a.recipe, { arch });
    const cacheDir = a.noCache || a.cache === false ? null : (a.cache ?? defaultCacheDir());
    const epoch = sourceDateEpoch();
    // a run source's command gets the host's proxies, and nothing else of its environment
    const runEnv = Object.fromEntries(PASSED_THROUGH.flatMap((k) => (process.env[k] ? [[k, process.env[k]!]] : [])));
    const r = await buildStack(recipe, { outDir: a.out, cacheDir, epoch, arch, jobs: a.jobs, uid: process.getuid?.(), runEnv, busybox: a.busybox, kexecRoot: a.kexecRoot, verityRoot: a.verityRoot, pubKeys: a.pub, chunks: a.chunks, progress: out.progress });
    out.result({
      stack: r.stackId,
      manifest: r.manifestFile,
      name: r.manifest.name,
      version: r.manifest.version,
      ...(r.manifest.kernel ? { kernel: r.manifest.kernel, initrd: r.manifest.initrd } : {}),
      layers: r.layers.map((l) => ({ name: l.name, digest: l.digest, size: l.size, cached: l.cached, builder: l.builder })),
    });
    out.line(`stack ${r.stackId}  ${r.manifest.name} ${r.manifest.version}`);
    for (const l of r.layers) out.line(`  ${l.name.padEnd(16)} sha256:${l.digest.slice(0, 16)}…  ${fmtBytes(l.size).padStart(10)}  ${l.cached ? 'cached' : `built (${l.builder})`}`);
    if (r.manifest.kernel) out.line(`kernel ${r.manifest.kernel.release} (${r.manifest.kernel.path}), initrd ${r.manifest.initrd!.path}`);
    out.line(`manifest: ${r.manifestFile}`);
  },
};
