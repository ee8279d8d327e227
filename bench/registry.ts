/**
 * Registry benchmark, against the real registry of the registry tests (Debian's
 * docker-registry, Distribution 2.8, TLS with a test CA, on 127.0.0.1):
 *
 * - bytes over the wire for an app-layer change: an old and a new stack are pushed; a
 *   pull of the new one into a folder that holds the old one's layers (what a node or a
 *   mirror that has the old stack does) is counted by the harness's proxy, against a
 *   pull of the whole new stack. Goal: the change costs exactly the layers the old stack
 *   lacks plus the manifests and the signature (judged, `ok`).
 * - time of `stackboot pull` of the new stack into an empty folder against `skopeo copy`
 *   of the same artifact to an OCI layout, both straight from the TLS registry (median
 *   of 3 runs each; pull writes every file durably, fsync included).
 *
 * The stacks: SB_BENCH_DELTA_OLD / SB_BENCH_DELTA_NEW when set, else the images/debian
 * builds of the delta benchmark (.cache/bench/debian-{old,new}) when they exist, else
 * the demo-node stacks of the e2e tests (Node.js and the CLI inside; version 2 adds the
 * app layer to version 1).
 */
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseManifest, type LayerRef } from '../src/format/manifest.js';
import { writeKeyPair } from '../src/format/signature.js';
import { RegistryClient, parseReference, pullStack, pushStack } from '../src/registry/index.js';
import { run } from '../src/sys/exec.js';
import { makePki, startProxy, startRegistry } from '../test/registry/harness.js';

export interface Row {
  metric: string;
  value: string;
  goal?: string;
  ok?: boolean;
}

export interface RegistryBench {
  /** body bytes of every GET a pull of the new stack into a folder with the old layers made */
  deltaBytes: number;
  /** the same for a pull of the whole new stack */
  fullBytes: number;
  /** the layers the old stack lacks, the text manifest and the signature: what deltaBytes must hold besides the OCI manifest */
  expectedBlobBytes: number;
  /** blob bytes the delta pull fetched */
  deltaBlobBytes: number;
  newLayers: LayerRef[];
  pullMs: number;
  skopeoMs: number;
}

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

/** Bytes, time and interoperability of a stack's trip through a registry: oldBuild, then newBuild. */
export async function benchRegistry(oldBuild: string, newBuild: string, o: { runs?: number; tmpDir?: string } = {}): Promise<RegistryBench> {
  const work = await fs.mkdtemp(path.join(o.tmpDir ?? os.tmpdir(), 'sb-bench-registry-'));
  const pki = await makePki(path.join(work, 'pki'));
  const reg = await startRegistry({ dir: path.join(work, 'registry'), pki });
  const proxy = await startProxy(reg.port, pki);
  try {
    const direct = new RegistryClient(reg.host, { caFile: pki.caCert });
    // signed as CI signs at push (--key): the bench's builds (.cache/bench) are not signed
    const { privateKey: key } = await writeKeyPair(path.join(work, 'keys', 'bench'));
    await pushStack({ client: direct, ref: parseReference(`oci://${reg.host}/bench/node:old`), buildDir: oldBuild, key });
    const pushed = await pushStack({ client: direct, ref: parseReference(`oci://${reg.host}/bench/node:new`), buildDir: newBuild, key });
    const digest = pushed.reference.slice(pushed.reference.lastIndexOf('@'));
    // through the counting proxy (plain HTTP on loopback: the client falls back to it)
    const counted = new RegistryClient(proxy.host, { onNote: () => {} });
    const viaProxy = parseReference(`oci://${proxy.host}/bench/node:new${digest}`);

    // a folder that holds the old stack's layers (hard links: nothing copied)
    const delta = path.join(work, 'delta');
    await fs.mkdir(path.join(delta, 'layers'), { recursive: true });
    for (const f of await fs.readdir(path.join(oldBuild, 'layers'))) await fs.link(path.join(oldBuild, 'layers', f), path.join(delta, 'layers', f));
    proxy.reset();
    const d = await pullStack(counted, viaProxy, delta);
    const deltaBytes = proxy.bytes();
    const deltaBlobBytes = proxy.bytes((r) => r.path.includes('/blobs/'));
    proxy.reset();
    await pullStack(counted, viaProxy, path.join(work, 'full'));
    const fullBytes = proxy.bytes();
    const small = (what: string) => pushed.blobs.find((b) => b.what === what)?.size ?? 0;
    const expectedBlobBytes = d.bytes + small('manifest') + small('manifest.sig');

    // time: the whole new stack straight from the TLS registry, stackboot pull vs skopeo copy
    const runs = o.runs ?? 3;
    const pulls: number[] = [];
    const copies: number[] = [];
    for (let i = 0; i < runs; i++) {
      const out = path.join(work, `pull-${i}`);
      pulls.push(await timed(() => pullStack(direct, parseReference(`oci://${reg.host}/bench/node:new${digest}`), out)));
      await fs.rm(out, { recursive: true, force: true });
      const layout = path.join(work, `skopeo-${i}`);
      copies.push(await timed(() => run('skopeo', ['copy', '--quiet', '--src-cert-dir', pki.certDir, `docker://${reg.host}/bench/node:new`, `oci:${layout}:new`])));
      await fs.rm(layout, { recursive: true, force: true });
    }
    return { deltaBytes, fullBytes, expectedBlobBytes, deltaBlobBytes, newLayers: d.fetched, pullMs: median(pulls), skopeoMs: median(copies) };
  } finally {
    await proxy.stop();
    await reg.stop();
    await fs.rm(work, { recursive: true, force: true });
  }
}

/** The old and new build folders, and what they are. */
async function stacks(): Promise<{ oldB: string; newB: string; what: string }> {
  const { SB_BENCH_DELTA_OLD: oldB, SB_BENCH_DELTA_NEW: newB } = process.env;
  if (oldB && newB) return { oldB, newB, what: 'given builds' };
  const d = path.join(REPO, '.cache', 'bench');
  if (existsSync(path.join(d, 'debian-old', 'manifest')) && existsSync(path.join(d, 'debian-new', 'manifest'))) {
    return { oldB: path.join(d, 'debian-old'), newB: path.join(d, 'debian-new'), what: 'images/debian' };
  }
  const { nodeStack } = await import('../test/e2e/node-fixtures.js');
  const [v1, v2] = await Promise.all([nodeStack('recipe'), nodeStack('update')]);
  return { oldB: v1.outDir, newB: v2.outDir, what: 'images/demo-node 1 -> 2' };
}

export async function benchRegistryRows(): Promise<Row[]> {
  const { oldB, newB, what } = await stacks();
  const r = await benchRegistry(oldB, newB);
  const full = parseManifest(await fs.readFile(path.join(newB, 'manifest'), 'utf8')).layers.reduce((n, l) => n + l.size, 0);
  const pct = (a: number, b: number) => `${((a / b) * 100).toFixed(2)} %`;
  const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
  return [
    {
      metric: `registry: bytes over the wire for an app-layer change vs the full stack (${what})`,
      value: `${r.deltaBytes} B vs ${r.fullBytes} B (${pct(r.deltaBytes, r.fullBytes)}; fetched ${r.newLayers.map((l) => l.name).join(', ') || 'no layer'})`,
      goal: 'new layers + manifests only',
      ok: r.deltaBlobBytes === r.expectedBlobBytes,
    },
    { metric: `registry: pull of the full stack (${mb(full)}), stackboot pull vs skopeo copy`, value: `${r.pullMs.toFixed(0)} ms vs ${r.skopeoMs.toFixed(0)} ms` },
  ];
}
