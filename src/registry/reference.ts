/**
 * Registry references: the one form stackboot takes for a stack in an OCI registry,
 *
 *   oci://<host>[:<port>]/<repository>[:<tag>][@sha256:<hex>]
 *
 * The scheme is required so that `install` can tell a reference from a bundle file or
 * a build output folder. With both a tag and a digest, the digest is what is fetched and
 * the tag must still point to it (a moved tag is refused). Without either, `latest`.
 */
import { StackbootError } from '../sys/index.js';

export interface Reference {
  /** host[:port] as written */
  registry: string;
  repository: string;
  tag: string | null;
  /** `sha256:<hex>` */
  digest: string | null;
}

export const REF_SCHEME = 'oci://';
const REPO_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

export function isReference(s: string): boolean {
  return s.startsWith(REF_SCHEME);
}

export function parseReference(s: string): Reference {
  const bad = (why: string): never => {
    throw new StackbootError('USAGE', `${JSON.stringify(s)} is not a registry reference (${why}); the form is oci://host[:port]/repository[:tag][@sha256:<hex>]`);
  };
  if (!isReference(s)) bad('it must start with oci://');
  let rest = s.slice(REF_SCHEME.length);
  let digest: string | null = null;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!/^sha256:[0-9a-f]{64}$/.test(digest)) bad('the digest must be sha256:<64 lowercase hex>');
  }
  const slash = rest.indexOf('/');
  if (slash <= 0) bad('no host');
  const registry = rest.slice(0, slash);
  if (!HOST_RE.test(registry)) bad(`bad host ${JSON.stringify(registry)}`);
  let repository = rest.slice(slash + 1);
  let tag: string | null = null;
  const colon = repository.lastIndexOf(':');
  if (colon >= 0) {
    tag = repository.slice(colon + 1);
    repository = repository.slice(0, colon);
    if (!TAG_RE.test(tag)) bad(`bad tag ${JSON.stringify(tag)}`);
  }
  if (!REPO_RE.test(repository)) bad(`bad repository ${JSON.stringify(repository)} (lowercase, digits, . _ - and /)`);
  if (tag === null && digest === null) tag = 'latest';
  return { registry, repository, tag, digest };
}

/** The reference as text; `digest` replaces any digest it had. */
export function formatReference(r: Reference, digest = r.digest): string {
  return `${REF_SCHEME}${r.registry}/${r.repository}${r.tag ? `:${r.tag}` : ''}${digest ? `@${digest}` : ''}`;
}

/** What a manifest GET or PUT names: the digest when there is one, else the tag. */
export function manifestTarget(r: Reference): string {
  return r.digest ?? r.tag!;
}

/** The host without the port (for the loopback rule). */
export function hostOf(registry: string): string {
  return registry.startsWith('[') ? registry.slice(1, registry.indexOf(']')) : registry.replace(/:\d+$/, '');
}

export function isLoopback(registry: string): boolean {
  const h = hostOf(registry);
  return h === 'localhost' || h === '127.0.0.1' || h === '::1';
}
