import type { CommandModule } from 'yargs';
import { fmtBytes, makeOut } from '../output.js';
import { isStdio } from '../args.js';

/** The layers of a build output that its manifest names a chunk index for. */
async function chunkedLayers(buildDir: string): Promise<string[]> {
  const { chunkIndexRefs, parseManifest } = await import('../../format/index.js');
  const { readFile } = await import('node:fs/promises');
  return [...chunkIndexRefs(parseManifest(await readFile(`${buildDir}/manifest`, 'utf8'))).keys()];
}

/** The chunk deltas of the chunked layers that the base lacks, against the base build output's layers. */
async function chunkDeltas(buildDir: string, baseDir: string, baseDigests: Set<string>, chunked: string[]) {
  const { chunkDelta, parseManifest } = await import('../../format/index.js');
  const { StackbootError } = await import('../../sys/index.js');
  const { readFile, stat } = await import('node:fs/promises');
  const baseFiles = [...baseDigests].map((d) => `${baseDir}/layers/${d}.sqfs`);
  for (const f of baseFiles) {
    if (!(await stat(f).catch(() => null))) throw new StackbootError('USAGE', `--chunks with --base needs the base's layers: ${f} is missing (give the base's build output folder)`);
  }
  const layers = parseManifest(await readFile(`${buildDir}/manifest`, 'utf8')).layers;
  const out = [];
  for (const d of chunked.filter((x) => !baseDigests.has(x))) out.push(await chunkDelta(d, await readFile(`${buildDir}/layers/${d}.chunks`), baseFiles, layers.find((l) => l.digest === d)));
  return out;
}

export const bundleCommand: CommandModule<any, any> = {
  command: 'bundle <build>',
  describe: 'write a signed bundle (tar: manifest, manifest.sig, layers) of a build output',
  builder: (y) =>
    y
      .positional('build', { type: 'string', demandOption: true, describe: 'build output folder (manifest, layers/)' })
      .option('out', { alias: 'o', type: 'string', demandOption: true, describe: 'bundle file, or - for stdout (then --json prints its result on stderr)' })
      .option('key', { type: 'string', describe: 'private key to sign with (default: the build output\'s manifest.sig)' })
      .option('chunks', { type: 'boolean', describe: 'layers with a chunk index (build --chunks): with --base (a build output folder), only the chunks its layers lack; without, none (nodes fetch them: install --chunks-from)' })
      .option('base', { type: 'string', describe: 'a manifest, build output or bundle: keep only the layers it lacks (delta)' })
      .example('$0 bundle out/demo -o demo.stackbundle --key keys/release.key', 'a full bundle')
      .example('$0 bundle out/demo2 -o d.stackbundle --base out/demo/manifest --key k.key', 'a delta bundle'),
  handler: async (a) => {
    const { baseLayers, writeBundle, writeBundleFile } = await import('../../format/index.js');
    const out = makeOut(a);
    const base = a.base ? await baseLayers(a.base) : null;
    const chunked = a.chunks ? await chunkedLayers(a.build) : [];
    // with a base: the chunked layers it lacks go as chunk deltas against its layers; without: not at all
    const deltas = a.chunks && base ? await chunkDeltas(a.build, a.base, base.digests, chunked) : undefined;
    const whole = deltas ? [...(base?.digests ?? [])] : [...(base?.digests ?? []), ...chunked];
    const opts = { buildDir: a.build, key: a.key, baseDigests: whole.length ? new Set(whole) : undefined, chunks: deltas, progress: out.progress };
    const toStdout = isStdio(a.out);
    const r = toStdout ? await writeBundle({ ...opts, out: process.stdout }) : await writeBundleFile({ ...opts, file: a.out });
    const result = { stack: r.stackId, bytes: r.bytes, carried: r.carried.map((l) => l.name), skipped: r.skipped.map((l) => l.name), base: base ? base.manifest.version : null };
    // stdout holds the bundle: the JSON result goes to stderr, as one line after the progress
    if (toStdout) {
      if (a.json) process.stderr.write(JSON.stringify({ result }) + '\n');
    } else out.result(result);
    if (!toStdout) {
      out.line(`bundle ${a.out}: ${r.manifest.name} ${r.manifest.version} (${r.stackId.slice(0, 12)}), ${fmtBytes(r.bytes)}`);
      out.line(`  carries: ${r.carried.map((l) => l.name).join(' ') || '(no layers)'}${r.skipped.length ? `; from the base: ${r.skipped.map((l) => l.name).join(' ')}` : ''}`);
    }
  },
};
