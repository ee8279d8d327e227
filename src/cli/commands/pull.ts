/** `stackboot pull oci://host/repo:tag --out DIR`: a build output folder from a registry. */
import type { CommandModule } from 'yargs';
import { fmtBytes, makeOut } from '../output.js';
import { registryClientFor, registryOptions } from './push.js';

export const pullCommand: CommandModule<any, any> = {
  command: 'pull <ref>',
  describe: 'fetch a stack from an OCI registry into a build output folder (for image, flash, mirrors)',
  builder: (y) =>
    registryOptions(y)
      .positional('ref', { type: 'string', demandOption: true, describe: 'oci://host[:port]/repository[:tag][@sha256:…]' })
      .option('out', { alias: 'o', type: 'string', demandOption: true, describe: 'build output folder (new, or an earlier pull: its layers are kept)' })
      .example('$0 pull oci://ghcr.io/acme/fleet/node:2 --out out/node-2', ''),
  handler: async (a) => {
    const out = makeOut(a);
    const { pullStack } = await import('../../registry/index.js');
    const note = (s: string) => process.stderr.write(`stackboot: ${s}\n`);
    const { ref, client } = await registryClientFor(a, a.ref, note);
    const r = await pullStack(client, ref, a.out, {
      onLayer: (name, size) => out.line(`  layer ${name} ${fmtBytes(size)}`),
      onRetry: (x) => note(`blob ${x.digest.slice(7, 19)}: ${x.reason}; resuming at byte ${x.received} (try ${x.attempt})`),
    });
    out.result(r);
    out.line(`${r.reference} -> ${r.dir}: ${r.fetched.length} layer(s) fetched (${fmtBytes(r.bytes)}), ${r.present.length} present`);
  },
};
