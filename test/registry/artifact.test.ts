/** The OCI artifact of a stack: what push writes, what pull accepts, and what must agree. */
import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { serializeManifest, type Manifest } from '../../src/format/manifest.js';
import { ARTIFACT_TYPE, CHUNKS_BLOB_TYPE, DELTA_BLOB_TYPE, FRAMES_BLOB_TYPE, EMPTY_CONFIG, EMPTY_CONFIG_BYTES, LAYER_BLOB_TYPE, checkArtifactMatches, parseStackArtifact, stackArtifact } from '../../src/registry/artifact.js';
import { chunkIndexLine } from '../../src/format/chunks.js';
import { framesLine } from '../../src/format/frames.js';

const hex = (s: string) => createHash('sha256').update(s).digest('hex');
const m: Manifest = { name: 'node', version: '2', compatible: 'fleet', created: 1700000000, layers: [{ digest: hex('base'), size: 10, name: 'base' }, { digest: hex('app'), size: 5, name: 'app' }] };
const text = Buffer.from(serializeManifest(m));
const sig = Buffer.from('c2ln\n');

describe('stack artifact', () => {
  it('is an OCI manifest with the artifact type, the empty config, the manifest and signature first, then the layers by their own sha256', () => {
    expect(`sha256:${createHash('sha256').update(EMPTY_CONFIG_BYTES).digest('hex')}`).toBe(EMPTY_CONFIG.digest);
    const j = JSON.parse(stackArtifact(m, text, sig, 'arm64').toString());
    expect(j.artifactType).toBe(ARTIFACT_TYPE);
    expect(j.config).toEqual(EMPTY_CONFIG);
    expect(j.layers.map((l: { annotations: Record<string, string> }) => l.annotations['org.opencontainers.image.title'])).toEqual(['manifest', 'manifest.sig', `${hex('base')}.sqfs`, `${hex('app')}.sqfs`]);
    expect(j.layers[0].digest).toBe(`sha256:${createHash('sha256').update(text).digest('hex')}`);
    expect(j.layers[2]).toMatchObject({ mediaType: LAYER_BLOB_TYPE, digest: `sha256:${hex('base')}`, size: 10 });
    expect(j.annotations).toMatchObject({ 'io.stackboot.name': 'node', 'io.stackboot.version': '2', 'io.stackboot.compatible': 'fleet', 'io.stackboot.arch': 'arm64', 'org.opencontainers.image.created': '2023-11-14T22:13:20Z' });
  });

  it('reads back what it wrote, and an unsigned one', () => {
    const a = parseStackArtifact(stackArtifact(m, text, sig), 'r');
    expect(a.signature?.size).toBe(sig.length);
    expect(a.layers.map((l) => l.digest)).toEqual(m.layers.map((l) => `sha256:${l.digest}`));
    expect(() => checkArtifactMatches(a, m, 'r')).not.toThrow();
    expect(parseStackArtifact(stackArtifact(m, text, null), 'r').signature).toBeNull();
  });

  it('refuses what is not a stack, saying what it is', () => {
    expect(() => parseStackArtifact(Buffer.from('{'), 'r')).toThrow(/not JSON/);
    expect(() => parseStackArtifact(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] })), 'r')).toThrow(/not a stackboot stack \(a application\/vnd.oci.image.index.v1\+json manifest/);
    const image = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${hex('c')}`, size: 1 }, layers: [] };
    expect(() => parseStackArtifact(Buffer.from(JSON.stringify(image)), 'r')).toThrow(/not a stackboot stack \(artifactType null, config "application\/vnd.oci.image.config.v1\+json"\)/);
    const badDigest = JSON.parse(stackArtifact(m, text, sig).toString());
    badDigest.layers[2].digest = 'sha256:xyz';
    expect(() => parseStackArtifact(Buffer.from(JSON.stringify(badDigest)), 'r')).toThrow(/layer 2: digest "sha256:xyz" is not sha256/);
  });

  it('refuses an artifact that does not say what the signed manifest says', () => {
    const swapped = JSON.parse(stackArtifact(m, text, sig).toString());
    [swapped.layers[2], swapped.layers[3]] = [swapped.layers[3], swapped.layers[2]];
    expect(() => checkArtifactMatches(parseStackArtifact(Buffer.from(JSON.stringify(swapped)), 'r'), m, 'r')).toThrow(/layer list does not match the signed manifest/);
    const renamed = JSON.parse(stackArtifact(m, text, sig).toString());
    renamed.annotations['io.stackboot.version'] = '3';
    expect(() => checkArtifactMatches(parseStackArtifact(Buffer.from(JSON.stringify(renamed)), 'r'), m, 'r')).toThrow(/says version "3", the signed manifest says "2"/);
  });

  it('carries the chunk index of each layer the manifest names one for, after the layers; one the manifest does not name is refused', () => {
    const ix = { layer: hex('base'), digest: hex('index'), size: 72 };
    const mc: Manifest = { ...m, extra: [chunkIndexLine(ix)] };
    const tc = Buffer.from(serializeManifest(mc));
    const j = JSON.parse(stackArtifact(mc, tc, sig).toString());
    expect(j.layers.at(-1)).toMatchObject({ mediaType: CHUNKS_BLOB_TYPE, digest: `sha256:${hex('index')}`, size: 72, annotations: { 'org.opencontainers.image.title': `${hex('base')}.chunks` } });
    const a = parseStackArtifact(Buffer.from(JSON.stringify(j)), 'r');
    expect(a.layers.map((l) => l.digest)).toEqual(m.layers.map((l) => `sha256:${l.digest}`));
    expect(a.chunks.map((c) => c.digest)).toEqual([`sha256:${hex('index')}`]);
    expect(() => checkArtifactMatches(a, mc, 'r')).not.toThrow();
    // the same artifact against the manifest without the chunks line: a stray index
    expect(() => checkArtifactMatches(a, m, 'r')).toThrow(/names a chunk index \(sha256:[0-9a-f]{12}\) the signed manifest of node 2 does not/);
    // an artifact without the indexes (pushed by an older stackboot) is still the stack
    expect(() => checkArtifactMatches(parseStackArtifact(stackArtifact(m, text, sig), 'r'), mc, 'r')).not.toThrow();
  });

  it('carries a layer\'s frames index and delta file when pushed with them; a frames index the manifest does not name is refused', () => {
    const fr = { layer: hex('base'), digest: hex('frames'), size: 104 };
    const mf: Manifest = { ...m, extra: [framesLine(fr)] };
    const tf = Buffer.from(serializeManifest(mf));
    const j = JSON.parse(stackArtifact(mf, tf, sig, undefined, [{ layer: hex('base'), digest: hex('delta'), size: 5000 }]).toString());
    expect(j.layers.slice(-2)).toMatchObject([
      { mediaType: FRAMES_BLOB_TYPE, digest: `sha256:${hex('frames')}`, size: 104, annotations: { 'org.opencontainers.image.title': `${hex('base')}.frames` } },
      { mediaType: DELTA_BLOB_TYPE, digest: `sha256:${hex('delta')}`, size: 5000, annotations: { 'org.opencontainers.image.title': `${hex('base')}.delta` } },
    ]);
    const a = parseStackArtifact(Buffer.from(JSON.stringify(j)), 'r');
    expect(a.frames.map((c) => c.digest)).toEqual([`sha256:${hex('frames')}`]);
    expect(a.deltas.map((c) => c.size)).toEqual([5000]);
    expect(() => checkArtifactMatches(a, mf, 'r')).not.toThrow();
    expect(() => checkArtifactMatches(a, m, 'r')).toThrow(/names a frames index \(sha256:[0-9a-f]{12}\) the signed manifest of node 2 does not/);
    // pushed without them (from a bundle): the stack, with no frame deltas
    const bare = parseStackArtifact(stackArtifact(mf, tf, sig), 'r');
    expect(bare.frames).toEqual([]);
    expect(() => checkArtifactMatches(bare, mf, 'r')).not.toThrow();
  });
});
