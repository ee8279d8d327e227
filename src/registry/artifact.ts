/**
 * The OCI artifact a stack travels as (pure): an OCI image manifest with
 *
 *   artifactType  application/vnd.stackboot.stack.v1
 *   config        the OCI empty descriptor (`{}`): registries that refuse unknown config
 *                 media types (GitLab) take it, and Docker Distribution 2.8 stores it
 *   layers        [0] the text manifest (application/vnd.stackboot.manifest.v1; its
 *                     digest is the stack id), title `manifest`
 *                 [1] manifest.sig (application/vnd.stackboot.signature.v1), when signed
 *                 then each squashfs layer, bottom first
 *                     (application/vnd.stackboot.layer.v1.squashfs, digest = the layer's
 *                     own sha256, title `<sha256>.sqfs`, io.stackboot.layer.name)
 *                 then the chunk index of each layer the manifest names one for
 *                     (application/vnd.stackboot.chunks.v1, title `<layer sha256>.chunks`):
 *                     a node rebuilds such a layer from its store's chunks and fetches
 *                     only the missing ones with Range requests on the layer's blob
 *   annotations   io.stackboot.{name,version,compatible[,arch]}, org.opencontainers.image.{version,created}
 *
 * The signature is a layer of the stack's own manifest (Distribution 2.8 has no
 * referrers API), so one manifest fetch names everything a node needs.
 */
import { createHash } from 'node:crypto';
import { StackbootError } from '../sys/index.js';
import { chunkIndexName, chunkIndexRefs, deltaFileName, framesIndexName, framesRefs, type Manifest } from '../format/index.js';

export const OCI_MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';
export const ARTIFACT_TYPE = 'application/vnd.stackboot.stack.v1';
export const MANIFEST_BLOB_TYPE = 'application/vnd.stackboot.manifest.v1';
export const SIGNATURE_BLOB_TYPE = 'application/vnd.stackboot.signature.v1';
export const LAYER_BLOB_TYPE = 'application/vnd.stackboot.layer.v1.squashfs';
export const CHUNKS_BLOB_TYPE = 'application/vnd.stackboot.chunks.v1';
/** frame deltas (format/frames.ts): a layer's frames index (named by the signed manifest) and its delta file (named by the index) */
export const FRAMES_BLOB_TYPE = 'application/vnd.stackboot.frames.v1';
export const DELTA_BLOB_TYPE = 'application/vnd.stackboot.delta.v1';
export const EMPTY_CONFIG = { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 };
export const EMPTY_CONFIG_BYTES = Buffer.from('{}');
export const TITLE = 'org.opencontainers.image.title';
/** the largest OCI manifest, text manifest or signature accepted from a registry */
export const MAX_MANIFEST_BYTES = 4 << 20;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

export interface StackArtifact {
  /** the text manifest's blob */
  manifest: Descriptor;
  signature: Descriptor | null;
  layers: Descriptor[];
  /** the chunk indexes (none from a stack pushed without them) */
  chunks: Descriptor[];
  /** frame deltas: the frames indexes and the delta files (none from a stack pushed without them) */
  frames: Descriptor[];
  deltas: Descriptor[];
  annotations: Record<string, string>;
}

export const sha256Digest = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A layer's delta file as its frames index names it (pushed with the index). */
export interface DeltaBlob {
  layer: string;
  digest: string;
  size: number;
}

/** The OCI manifest of a stack (bytes as pushed: its sha256 is the pushed digest); `deltas`: the frame deltas pushed with it. */
export function stackArtifact(m: Manifest, manifestText: Buffer, sig: Buffer | null, arch?: string, deltas: DeltaBlob[] = []): Buffer {
  const layers: Descriptor[] = [{ mediaType: MANIFEST_BLOB_TYPE, digest: sha256Digest(manifestText), size: manifestText.length, annotations: { [TITLE]: 'manifest' } }];
  if (sig) layers.push({ mediaType: SIGNATURE_BLOB_TYPE, digest: sha256Digest(sig), size: sig.length, annotations: { [TITLE]: 'manifest.sig' } });
  for (const l of m.layers) layers.push({ mediaType: LAYER_BLOB_TYPE, digest: `sha256:${l.digest}`, size: l.size, annotations: { [TITLE]: `${l.digest}.sqfs`, 'io.stackboot.layer.name': l.name } });
  for (const c of chunkIndexRefs(m).values()) layers.push({ mediaType: CHUNKS_BLOB_TYPE, digest: `sha256:${c.digest}`, size: c.size, annotations: { [TITLE]: chunkIndexName(c.layer) } });
  const frames = framesRefs(m);
  for (const d of deltas) {
    const f = frames.get(d.layer);
    if (!f) continue;
    layers.push({ mediaType: FRAMES_BLOB_TYPE, digest: `sha256:${f.digest}`, size: f.size, annotations: { [TITLE]: framesIndexName(d.layer) } });
    layers.push({ mediaType: DELTA_BLOB_TYPE, digest: `sha256:${d.digest}`, size: d.size, annotations: { [TITLE]: deltaFileName(d.layer) } });
  }
  const annotations: Record<string, string> = {
    'io.stackboot.name': m.name,
    'io.stackboot.version': m.version,
    'io.stackboot.compatible': m.compatible,
    ...(arch ? { 'io.stackboot.arch': arch } : {}),
    'org.opencontainers.image.version': m.version,
    'org.opencontainers.image.created': new Date(m.created * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z'),
  };
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST_TYPE, artifactType: ARTIFACT_TYPE, config: EMPTY_CONFIG, layers, annotations }, null, 2));
}

function descriptor(x: unknown, where: string): Descriptor {
  const d = x as Descriptor;
  if (!d || typeof d.mediaType !== 'string' || typeof d.digest !== 'string' || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw new StackbootError('MANIFEST', `${where}: not an OCI descriptor`);
  }
  if (!/^sha256:[0-9a-f]{64}$/.test(d.digest)) throw new StackbootError('MANIFEST', `${where}: digest ${JSON.stringify(d.digest)} is not sha256:<hex>`);
  return d;
}

/** Reads a fetched OCI manifest as a stack; refuses anything else, saying what it is. */
export function parseStackArtifact(body: Buffer, what: string): StackArtifact {
  let j: { schemaVersion?: number; mediaType?: string; artifactType?: string; config?: { mediaType?: string }; layers?: unknown[]; annotations?: Record<string, string>; manifests?: unknown };
  try {
    j = JSON.parse(body.toString('utf8'));
  } catch (e) {
    throw new StackbootError('MANIFEST', `${what}: the registry's manifest is not JSON`, { cause: e });
  }
  if (j.schemaVersion !== 2 || (j.mediaType !== undefined && j.mediaType !== OCI_MANIFEST_TYPE) || !Array.isArray(j.layers)) {
    throw new StackbootError('MANIFEST', `${what} is not a stackboot stack (a ${j.mediaType ?? (j.manifests ? 'manifest list' : `schema ${j.schemaVersion}`)} manifest, not ${OCI_MANIFEST_TYPE})`);
  }
  const layers = j.layers.map((l, i) => descriptor(l, `${what}: layer ${i}`));
  const isStack = j.artifactType === ARTIFACT_TYPE || j.config?.mediaType === ARTIFACT_TYPE || layers[0]?.mediaType === MANIFEST_BLOB_TYPE;
  if (!isStack) throw new StackbootError('MANIFEST', `${what} is not a stackboot stack (artifactType ${JSON.stringify(j.artifactType ?? null)}, config ${JSON.stringify(j.config?.mediaType ?? null)})`);
  const manifest = layers.find((l) => l.mediaType === MANIFEST_BLOB_TYPE);
  if (!manifest) throw new StackbootError('MANIFEST', `${what}: the stack names no ${MANIFEST_BLOB_TYPE} blob`);
  const sigs = layers.filter((l) => l.mediaType === SIGNATURE_BLOB_TYPE);
  if (sigs.length > 1) throw new StackbootError('MANIFEST', `${what}: the stack names ${sigs.length} signatures`);
  return {
    manifest,
    signature: sigs[0] ?? null,
    layers: layers.filter((l) => l.mediaType === LAYER_BLOB_TYPE),
    chunks: layers.filter((l) => l.mediaType === CHUNKS_BLOB_TYPE),
    frames: layers.filter((l) => l.mediaType === FRAMES_BLOB_TYPE),
    deltas: layers.filter((l) => l.mediaType === DELTA_BLOB_TYPE),
    annotations: j.annotations ?? {},
  };
}

/**
 * The artifact must say what the signed text manifest says: the same layers (digest and
 * size, in order) and the same name/version/compatible. A mismatch is a stack put
 * together from parts of others, refused before any layer is fetched.
 */
export function checkArtifactMatches(a: StackArtifact, m: Manifest, what: string): void {
  const want = m.layers.map((l) => `sha256:${l.digest}/${l.size}`).join(' ');
  const got = a.layers.map((l) => `${l.digest}/${l.size}`).join(' ');
  if (want !== got) throw new StackbootError('VERIFY', `${what}: the registry's layer list does not match the signed manifest of ${m.name} ${m.version}`);
  // a chunk index the signed manifest does not name is a part of another stack
  const refs = new Set([...chunkIndexRefs(m).values()].map((c) => `sha256:${c.digest}/${c.size}`));
  const stray = a.chunks.find((c) => !refs.has(`${c.digest}/${c.size}`));
  if (stray) throw new StackbootError('VERIFY', `${what}: the registry names a chunk index (${stray.digest.slice(0, 19)}) the signed manifest of ${m.name} ${m.version} does not`);
  const frames = new Set([...framesRefs(m).values()].map((c) => `sha256:${c.digest}/${c.size}`));
  const strayFrames = a.frames.find((c) => !frames.has(`${c.digest}/${c.size}`));
  if (strayFrames) throw new StackbootError('VERIFY', `${what}: the registry names a frames index (${strayFrames.digest.slice(0, 19)}) the signed manifest of ${m.name} ${m.version} does not`);
  for (const [k, v] of [['name', m.name], ['version', m.version], ['compatible', m.compatible]] as const) {
    const ann = a.annotations[`io.stackboot.${k}`];
    if (ann !== undefined && ann !== v) throw new StackbootError('VERIFY', `${what}: the registry says ${k} ${JSON.stringify(ann)}, the signed manifest says ${JSON.stringify(v)}`);
  }
}
