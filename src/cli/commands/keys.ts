import type { CommandModule } from 'yargs';
import { makeOut } from '../output.js';

export const keygenCommand: CommandModule<any, any> = {
  command: 'keygen <name>',
  describe: 'make an ed25519 key pair: <name>.key (private, 0600) and <name>.pub',
  builder: (y) => y.positional('name', { type: 'string', demandOption: true }).example('$0 keygen keys/release', 'writes keys/release.key and keys/release.pub'),
  handler: async (a) => {
    const out = makeOut(a);
    const { writeKeyPair } = await import('../../format/index.js');
    const r = await writeKeyPair(a.name);
    out.result(r);
    out.line(`private key: ${r.privateKey}\npublic key:  ${r.publicKey} (copy it to /etc/stackboot/keys/ on the nodes)`);
  },
};

export const signCommand: CommandModule<any, any> = {
  command: 'sign <manifest>',
  describe: 'sign a manifest, writing <manifest>.sig',
  builder: (y) =>
    y
      .positional('manifest', { type: 'string', demandOption: true })
      .option('key', { type: 'string', demandOption: true, describe: 'private key file' })
      .example('$0 sign out/demo/manifest --key keys/release.key', ''),
  handler: async (a) => {
    const out = makeOut(a);
    const { signManifestFile } = await import('../../format/index.js');
    const sig = await signManifestFile(a.manifest, a.key);
    out.result({ signature: sig });
    out.line(`signed: ${sig}`);
  },
};

export const verifyCommand: CommandModule<any, any> = {
  command: 'verify <manifest>',
  describe: 'verify <manifest>.sig against a public key (or a folder of *.pub keys)',
  builder: (y) =>
    y
      .positional('manifest', { type: 'string', demandOption: true })
      .option('pub', { type: 'string', demandOption: true, describe: 'public key file or keys folder' })
      .example('$0 verify out/demo/manifest --pub keys/release.pub', ''),
  handler: async (a) => {
    const out = makeOut(a);
    const { verifyManifestFile } = await import('../../format/index.js');
    await verifyManifestFile(a.manifest, a.pub);
    out.result({ ok: true });
    out.line('signature ok');
  },
};
