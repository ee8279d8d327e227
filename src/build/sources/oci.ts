/**
 * OCI image layouts (a directory or a tar of one) and `docker save` archives. Each image
 * layer becomes one stackboot layer, bottom first, with its `.wh.` whiteouts converted.
 * A layout or archive of several images (tags) needs a choice: `ref`, a tag
 * (org.opencontainers.image.ref.name, or a docker RepoTag) or a manifest digest;
 * without one it is refused, listing them.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StackbootError } from '../../sys/index.js';
import { extractTar } from '../../format/index.js';

export interface OciLayerBlob {
  /** path of the (possibly compressed) layer tar */
  file: string;
  /** its content digest, when the format gives one */
  digest?: string;
}

export interface OpenedImage {
  layers: OciLayerBlob[];
  cleanup(): Promise<void>;
}

async function readJson(file: string): Promise<any> {
  const t = await fs.readFile(file, 'utf8').catch((e) => {
    throw new StackbootError('SOURCE', `cannot read ${file}`, { cause: e });
  });
  try {
    return JSON.parse(t);
  } catch (e) {
    throw new StackbootError('SOURCE', `${file} is not valid JSON`, { cause: e });
  }
}

function blobPath(root: string, digest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(String(digest));
  if (!m) throw new StackbootError('SOURCE', `unsupported blob digest ${JSON.stringify(digest)}`);
  return path.join(root, 'blobs', 'sha256', m[1]);
}

const INDEX_TYPES = ['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json'];

const isObject = (v: unknown): v is Record<string, any> => typeof v === 'object' && v !== null && !Array.isArray(v);

const REF_NAME = 'org.opencontainers.image.ref.name';
const refOf = (m: Record<string, any>): string | undefined => (isObject(m.annotations) && typeof m.annotations[REF_NAME] === 'string' ? m.annotations[REF_NAME] : undefined);
const listed = (ms: Record<string, any>[]): string => ms.map((m) => (refOf(m) ? `${refOf(m)} (${m.digest})` : m.digest)).join(', ');

/**
 * The images of the layout's index.json that `ref` names (all of them without a ref);
 * several different images named by tags need a choice.
 */
function chooseImage(root: string, ms: Record<string, any>[], ref: string | undefined): Record<string, any>[] {
  if (ref !== undefined) {
    const hit = ms.filter((m) => refOf(m) === ref || m.digest === ref);
    if (hit.length === 0) throw new StackbootError('SOURCE', `${root}: no image ${JSON.stringify(ref)} in the layout (it has ${listed(ms)})`);
    return hit;
  }
  const digests = new Set(ms.map((m) => m.digest));
  if (digests.size > 1 && ms.some((m) => refOf(m) !== undefined)) {
    throw new StackbootError('SOURCE', `${root}: the layout holds ${digests.size} images: ${listed(ms)}; choose one with "ref" (a tag or a digest) in the layer's source`);
  }
  // several tags of one image: any of them
  return digests.size === 1 ? [ms[0]] : ms;
}

async function ociLayers(root: string, arch: string, ref: string | undefined): Promise<OciLayerBlob[]> {
  let file = path.join(root, 'index.json');
  let doc = await readJson(file);
  for (let depth = 0; depth < 4; depth++) {
    if (!isObject(doc)) throw new StackbootError('SOURCE', `${file}: not a JSON object`);
    if (Array.isArray(doc.layers)) {
      return doc.layers.map((l: unknown, i: number) => {
        if (!isObject(l) || typeof l.digest !== 'string') throw new StackbootError('SOURCE', `${file}: layers[${i}] has no digest`);
        return { file: blobPath(root, l.digest), digest: l.digest };
      });
    }
    const manifests: unknown[] = Array.isArray(doc.manifests) ? doc.manifests : [];
    if (manifests.length === 0) throw new StackbootError('SOURCE', `${root}: OCI index lists no manifests`);
    manifests.forEach((m, i) => {
      if (!isObject(m) || typeof m.digest !== 'string') throw new StackbootError('SOURCE', `${file}: manifests[${i}] has no digest`);
    });
    const ms = depth === 0 ? chooseImage(root, manifests as Record<string, any>[], ref) : (manifests as Record<string, any>[]);
    const archOf = (m: Record<string, any>): string | undefined => (isObject(m.platform) && typeof m.platform.architecture === 'string' ? m.platform.architecture : undefined);
    // a manifest for another architecture is refused even when it is the only one; one
    // without a platform is taken (single-image layouts often leave it out)
    const pick = ms.find((m) => archOf(m) === arch && m.platform?.os !== 'unknown') ?? (ms.length === 1 && archOf(ms[0]) === undefined ? ms[0] : undefined);
    if (!pick && ms.every((m) => archOf(m) === undefined)) throw new StackbootError('SOURCE', `${root}: the layout holds ${ms.length} images and none names its platform: ${listed(ms)}; choose one with "ref" (a tag or a digest) in the layer's source`);
    if (!pick) throw new StackbootError('SOURCE', `${root}: no image for architecture ${arch} (has ${ms.map((m) => archOf(m) ?? '?').join(', ')})`);
    file = blobPath(root, pick.digest);
    doc = await readJson(file);
    if (!INDEX_TYPES.includes(doc.mediaType) && !Array.isArray(doc.layers) && !Array.isArray(doc.manifests)) break;
  }
  throw new StackbootError('SOURCE', `${root}: cannot find the image manifest`);
}

/** Opens an OCI layout dir, an OCI layout tar or a docker-save tar. */
export async function openImage(source: string, arch: string, ref?: string): Promise<OpenedImage> {
  const st = await fs.stat(source).catch((e) => {
    throw new StackbootError('SOURCE', `OCI source ${source} does not exist`, { cause: e });
  });
  let root = source;
  let tmp: string | null = null;
  const cleanup = async () => {
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  };
  try {
    if (!st.isDirectory()) {
      tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'stackboot-oci-'));
      await extractTar(source, tmp);
      root = tmp;
    }
    const hasIndex = await fs.stat(path.join(root, 'index.json')).then(() => true, () => false);
    const hasDocker = await fs.stat(path.join(root, 'manifest.json')).then(() => true, () => false);
    let layers: OciLayerBlob[];
    if (hasIndex) layers = await ociLayers(root, arch, ref);
    else if (hasDocker) {
      const all = await readJson(path.join(root, 'manifest.json'));
      if (!Array.isArray(all) || !all.every(isObject)) throw new StackbootError('SOURCE', `${source}: manifest.json is not a list of images`);
      const tags = (x: Record<string, any>): string[] => (Array.isArray(x.RepoTags) ? x.RepoTags.filter((t: unknown) => typeof t === 'string') : []);
      const named = (x: Record<string, any>) => tags(x).join(' ') || String(x.Config);
      const chosen = ref === undefined ? all : all.filter((x) => tags(x).some((t) => t === ref || t.slice(t.lastIndexOf(':') + 1) === ref) || x.Config === ref || `sha256:${path.basename(String(x.Config)).replace(/\.json$/, '')}` === ref);
      if (chosen.length === 0) throw new StackbootError('SOURCE', `${source}: no image ${JSON.stringify(ref)} in the archive (it has ${all.map(named).join(', ')})`);
      if (chosen.length > 1) throw new StackbootError('SOURCE', `${source}: the archive holds ${chosen.length} images: ${chosen.map(named).join(', ')}; choose one with "ref" (a tag) in the layer's source`);
      const m = chosen;
      if (!Array.isArray(m[0].Layers)) throw new StackbootError('SOURCE', `${source}: manifest.json has no Layers`);
      // the image config names its architecture: another one is refused
      if (typeof m[0].Config === 'string') {
        const cfgFile = path.resolve(root, m[0].Config);
        const cfg = cfgFile.startsWith(path.resolve(root) + path.sep) ? await readJson(cfgFile).catch(() => null) : null;
        if (isObject(cfg) && typeof cfg.architecture === 'string' && cfg.architecture !== arch) {
          throw new StackbootError('SOURCE', `${source}: the image is for ${cfg.architecture}, not ${arch}`);
        }
      }
      layers = m[0].Layers.map((l: unknown, i: number) => {
        if (typeof l !== 'string') throw new StackbootError('SOURCE', `${source}: manifest.json Layers[${i}] is not a path`);
        const p = path.resolve(root, l);
        if (!p.startsWith(path.resolve(root) + path.sep)) throw new StackbootError('UNSAFE_ENTRY', `${source}: layer path ${l} escapes the archive`);
        return { file: p };
      });
    } else throw new StackbootError('SOURCE', `${source} is neither an OCI layout (index.json) nor a docker save archive (manifest.json)`);
    if (layers.length === 0) throw new StackbootError('SOURCE', `${source}: the image has no layers`);
    return { layers, cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
