/** `stackboot push OUT_DIR|BUNDLE oci://host/repo:tag`: a build output (or a bundle) into an OCI registry. */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { StackbootError } from '../../sys/index.js';
import { fmtBytes, makeOut } from '../output.js';

/** The options every registry command takes (push, pull). */
export function registryOptions<T>(y: Argv<T>) {
  return y
    .option('username', { type: 'string', describe: 'registry user (the password from --password-stdin)' })
    .option('password-stdin', { type: 'boolean', describe: 'read the registry password from stdin' })
    .option('ca-file', { type: 'string', describe: 'PEM file of CAs to trust besides the system ones' })
    .option('insecure', { type: 'boolean', describe: 'plain HTTP to any host (loud; loopback hosts without TLS need no flag)' });
}

async function readStdin(): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of process.stdin) parts.push(c as Buffer);
  return Buffer.concat(parts).toString('utf8').replace(/\r?\n$/, '');
}

/** A client for the reference's registry, from the registry options. */
export async function registryClientFor(a: any, refText: string, note: (s: string) => void) {
  const { connectRegistry, parseReference } = await import('../../registry/index.js');
  const ref = parseReference(refText);
  if (a.passwordStdin && a.username === undefined) throw new StackbootError('USAGE', '--password-stdin needs --username');
  const password = a.passwordStdin ? await readStdin() : undefined;
  const client = await connectRegistry(ref, { username: a.username, password, caFile: a.caFile, insecure: a.insecure, onNote: note, env: process.env });
  return { ref, client };
}

export const pushCommand: CommandModule<any, any> = {
  command: 'push <build> <ref>',
  describe: 'push a build output or a bundle to an OCI registry (prints oci://…@sha256:…)',
  builder: (y) =>
    registryOptions(y)
      .positional('build', { type: 'string', demandOption: true, describe: 'build output folder (manifest, manifest.sig, layers/), or a bundle file (a delta bundle: its base must be in the registry already)' })
      .positional('ref', { type: 'string', demandOption: true, describe: 'oci://host[:port]/repository[:tag]' })
      .option('key', { type: 'string', describe: "private key to sign with (default: the build output's manifest.sig)" })
      .option('mount-from', { type: 'string', describe: 'another repository of the same registry to mount layers from' })
      .option('arch', { type: 'string', describe: 'the io.stackboot.arch annotation' })
      .example('$0 push out/node-2 oci://ghcr.io/acme/fleet/node:2', ''),
  handler: async (a) => {
    const out = makeOut(a);
    const { pushStack } = await import('../../registry/index.js');
    const { ref, client } = await registryClientFor(a, a.ref, (s) => process.stderr.write(`stackboot: ${s}\n`));
    // a bundle file: unpacked into a build output folder first (its layers checked)
    const st = await stat(a.build).catch(() => null);
    let buildDir = a.build as string;
    let absentLayers: Set<string> | undefined;
    const scratch = st?.isFile() ? await mkdtemp(path.join(os.tmpdir(), 'sb-push-')) : undefined;
    try {
      if (scratch) {
        const { unpackBundle } = await import('../../format/index.js');
        const u = await unpackBundle(createReadStream(a.build), scratch, a.build);
        buildDir = scratch;
        absentLayers = new Set(u.absent.map((l) => l.digest));
        if (u.absent.length) out.line(`${a.build} is a delta: ${u.absent.map((l) => l.name).join(', ')} must be in the registry already`);
      }
      const r = await pushStack({
        client,
        ref,
        buildDir,
        absentLayers,
        key: a.key,
        mountFrom: a.mountFrom,
        arch: a.arch,
        onBlob: (b) => out.line(`  ${b.what.padEnd(16)} ${b.digest.slice(7, 19)} ${fmtBytes(b.size).padStart(9)} ${b.how}`),
      });
      out.result(r);
      out.line(`pushed ${r.name} ${r.version} (stack ${r.stack.slice(0, 12)}): ${fmtBytes(r.uploaded)} uploaded`);
      out.report(r.reference);
    } finally {
      if (scratch) await rm(scratch, { recursive: true, force: true });
    }
  },
};
