/**
 * Tar conformance: archives written by the tools people use (GNU tar in its four formats
 * and three pax sparse versions, bsdtar, Python's tarfile, busybox tar, Go's archive/tar
 * as container tools write layers) from one tree with every kind of entry, built into a
 * layer by the real build code, loop-mounted, and compared entry by entry with the tree
 * and with what tar2sqfs makes of the same archive.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../../src/sys/exec.js';
import { mountSquashfs, umountAll } from '../../../src/sys/mount.js';
import { tmpdir } from './tarfixture.js';
import { buildLayers, differences, pictureTree, type EntryPicture } from './treesnap.js';

const LONG_DIR = `long/${'d'.repeat(120)}`;
const LONG_FILE = `${LONG_DIR}/${'n'.repeat(150)}`;
const SPARSE_SIZE = 8 << 20;

let work: string;
let tree: string;
let want: Map<string, EntryPicture>;
let goTar: string;
const mounted: string[] = [];

/** A tree with every entry kind a layer can hold. */
async function makeTree(t: string): Promise<void> {
  const at = (p: string) => path.join(t, p);
  for (const d of ['f', 'l', 'dev', 'p', 'sticky', 'setgid', LONG_DIR, 'ünï/日本']) await fs.mkdir(at(d), { recursive: true });
  await fs.writeFile(at('f/plain'), 'plain file\n');
  await fs.writeFile(at('f/empty'), '');
  await fs.writeFile(at('f/suid'), '#!/bin/sh\n');
  await fs.chmod(at('f/suid'), 0o4755);
  await fs.chmod(at('setgid'), 0o2750);
  await fs.chmod(at('sticky'), 0o1777);
  await fs.writeFile(at('f/owned'), 'owner above 65535\n');
  await fs.chown(at('f/owned'), 100000, 100001);
  await fs.writeFile(at('f/xattr'), 'with an xattr\n');
  await run('setfattr', ['-n', 'user.conformance', '-v', 'kept value', at('f/xattr')]);
  // data, a hole, data, and a hole to the end
  const fh = await fs.open(at('f/sparse'), 'w');
  await fh.write(Buffer.alloc(8192, 0x61), 0, 8192, 0);
  await fh.write(Buffer.alloc(4096, 0x62), 0, 4096, 3 << 20);
  await fh.truncate(SPARSE_SIZE);
  await fh.close();
  await fs.link(at('f/plain'), at('f/plain.hard'));
  await fs.symlink('../f/plain', at('l/relative'));
  await fs.symlink('/etc/passwd', at('l/absolute'));
  await fs.symlink('nowhere', at('l/dangling'));
  await run('mkfifo', [at('p/fifo')]);
  await run('mknod', [at('dev/null'), 'c', '1', '3']);
  await run('mknod', [at('dev/loop200'), 'b', '7', '200']);
  await fs.writeFile(at(LONG_FILE), 'long name\n');
  await fs.writeFile(at('ünï/日本/ñame.txt'), 'non-ASCII\n');
  // mtimes the archives carry (a layer sets them all to the epoch)
  await fs.utimes(at('f/plain'), 1e9, 1e9);
  await fs.utimes(at('f/owned'), 1.7e9, 1.7e9);
}

/** Go's archive/tar, as umoci, skopeo and containerd write layers: argv format (default|gnu|pax), tree, output. */
const GO_SOURCE = `package main

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

func main() {
	format, root, outPath := os.Args[1], os.Args[2], os.Args[3]
	out, err := os.Create(outPath)
	if err != nil {
		panic(err)
	}
	w := tar.NewWriter(out)
	var paths []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			panic(err)
		}
		paths = append(paths, p)
		return nil
	})
	sort.Strings(paths)
	seen := map[uint64]string{}
	for _, p := range paths {
		fi, _ := os.Lstat(p)
		link := ""
		if fi.Mode()&os.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			panic(err)
		}
		rel, _ := filepath.Rel(root, p)
		h.Name = "./" + rel
		if fi.IsDir() && !strings.HasSuffix(h.Name, "/") {
			h.Name += "/"
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			if first, ok := seen[st.Ino]; ok {
				h.Typeflag = tar.TypeLink
				h.Linkname = first
				h.Size = 0
			} else {
				seen[st.Ino] = h.Name
			}
		}
		switch format {
		case "gnu":
			h.Format = tar.FormatGNU
		case "pax":
			h.Format = tar.FormatPAX
			buf := make([]byte, 4096)
			if n, err := syscall.Getxattr(p, "user.conformance", buf); err == nil {
				h.PAXRecords = map[string]string{"SCHILY.xattr.user.conformance": string(buf[:n])}
			}
		}
		h.Uname, h.Gname = "", ""
		if err := w.WriteHeader(h); err != nil {
			panic(err)
		}
		if h.Typeflag == tar.TypeReg {
			f, _ := os.Open(p)
			io.Copy(w, f)
			f.Close()
		}
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
	out.Close()
}
`;

interface Writer {
  name: string;
  /** writes the archive of `t` to `out` */
  make(t: string, out: string): Promise<unknown>;
  /** what the format cannot hold (left out of the tree it is compared with) */
  lacks?: ('xattrs' | 'long')[];
  /** the archive stores the sparse file as a sparse entry (it must be smaller than the file) */
  sparse?: boolean;
}

const gnu = (format: string, extra: string[] = []) => (t: string, out: string) => run('tar', ['--numeric-owner', `--format=${format}`, ...extra, '-C', t, '-cf', out, '.']);
const py = (format: string) => (t: string, out: string) =>
  run('python3', ['-c', `import tarfile,sys\nwith tarfile.open(sys.argv[2], 'w', format=tarfile.${format}) as a: a.add(sys.argv[1], arcname='.')`, t, out]);

const WRITERS: Writer[] = [
  { name: 'GNU tar --format=gnu --sparse', make: gnu('gnu', ['--sparse']), lacks: ['xattrs'], sparse: true },
  { name: 'GNU tar --format=oldgnu --sparse', make: gnu('oldgnu', ['--sparse']), lacks: ['xattrs'], sparse: true },
  { name: 'GNU tar --format=posix --sparse-version=0.0 --xattrs', make: gnu('posix', ['--sparse', '--sparse-version=0.0', '--xattrs', '--xattrs-include=user.*']), sparse: true },
  { name: 'GNU tar --format=posix --sparse-version=0.1 --xattrs', make: gnu('posix', ['--sparse', '--sparse-version=0.1', '--xattrs', '--xattrs-include=user.*']), sparse: true },
  { name: 'GNU tar --format=posix --sparse-version=1.0 --xattrs', make: gnu('posix', ['--sparse', '--sparse-version=1.0', '--xattrs', '--xattrs-include=user.*']), sparse: true },
  { name: 'GNU tar --format=ustar', make: gnu('ustar', ['--exclude=./long']), lacks: ['xattrs', 'long'] },
  { name: 'bsdtar (pax)', make: (t, out) => run('bsdtar', ['--numeric-owner', '--xattrs', '-cf', out, '-C', t, '.']), sparse: true },
  { name: 'bsdtar --format=gnutar', make: (t, out) => run('bsdtar', ['--numeric-owner', '--format=gnutar', '-cf', out, '-C', t, '.']), lacks: ['xattrs'] },
  { name: 'Python tarfile GNU_FORMAT', make: py('GNU_FORMAT'), lacks: ['xattrs'] },
  { name: 'Python tarfile PAX_FORMAT', make: py('PAX_FORMAT'), lacks: ['xattrs'] },
  { name: 'busybox tar', make: (t, out) => run('busybox', ['tar', '-cf', out, '-C', t, '.']), lacks: ['xattrs'] },
  { name: "Go archive/tar (default: ustar, pax when needed)", make: (t, out) => run(goTar, ['default', t, out]), lacks: ['xattrs'] },
  { name: 'Go archive/tar FormatGNU', make: (t, out) => run(goTar, ['gnu', t, out]), lacks: ['xattrs'] },
  { name: 'Go archive/tar FormatPAX with xattrs', make: (t, out) => run(goTar, ['pax', t, out]) },
];

function expected(w: Writer): Map<string, EntryPicture> {
  const out = new Map<string, EntryPicture>();
  for (const [k, v] of want) {
    if (w.lacks?.includes('long') && (k === 'long' || k.startsWith('long/'))) continue;
    const p = { ...v };
    if (w.lacks?.includes('xattrs')) delete p.xattrs;
    out.set(k, p);
  }
  return out;
}

async function mountLayer(file: string, dir: string): Promise<string> {
  await mountSquashfs(file, dir);
  mounted.push(dir);
  return dir;
}

beforeAll(async () => {
  work = await tmpdir('sb-conformance-');
  tree = path.join(work, 'tree');
  await makeTree(tree);
  want = await pictureTree(tree);
  const goDir = path.join(work, 'go');
  await fs.mkdir(goDir);
  await fs.writeFile(path.join(goDir, 'main.go'), GO_SOURCE);
  goTar = path.join(goDir, 'gotar');
  await run('go', ['build', '-o', goTar, 'main.go'], { cwd: goDir, env: { ...process.env, GOCACHE: path.join(work, 'gocache'), GOPATH: path.join(work, 'gopath'), GO111MODULE: 'off', CGO_ENABLED: '0' } });
});

afterAll(async () => {
  await umountAll(mounted);
  if (work) await fs.rm(work, { recursive: true, force: true });
});

describe('tar conformance: every writer, every entry kind, built into a layer', () => {
  it('the tree has what the writers must carry', () => {
    expect(want.get('dev/null')).toMatchObject({ type: 'char', rdev: '1:3' });
    expect(want.get('dev/loop200')).toMatchObject({ type: 'block', rdev: '7:200' });
    expect(want.get('f/plain.hard')?.linkedTo).toBe('f/plain');
    expect(want.get('f/xattr')?.xattrs).toMatch(/user\.conformance=0x/);
    expect(want.get('f/sparse')).toMatchObject({ size: SPARSE_SIZE });
    expect(want.get('f/owned')?.owner).toBe('100000:100001');
  });

  it.each(WRITERS.map((w) => [w.name, w] as const))('%s', async (_name, w) => {
    const d = await tmpdir('sb-conf-');
    try {
      const tar = path.join(d, 'layer.tar');
      await w.make(tree, tar);
      if (w.sparse) expect((await fs.stat(tar)).size).toBeLessThan(SPARSE_SIZE / 2);
      const r = await buildLayers(d, [{ name: 'layer', source: { type: 'tar', path: tar }, devices: true }]);
      const layer = await mountLayer(r.layers[0].file, path.join(d, 'layer'));
      const got = await pictureTree(layer);
      expect(differences(expected(w), got)).toEqual([]);
      // every mtime is the epoch
      for (const k of ['f/plain', 'f/owned', 'dev/null']) expect((await fs.lstat(path.join(layer, k))).mtimeMs).toBe(0);
      // tar2sqfs reads the same archive into the same entries
      const ref = path.join(d, 'ref.sqfs');
      await run('sh', ['-c', 'tar2sqfs -q -f "$1" < "$2"', 'sh', ref, tar]);
      const viaTool = await pictureTree(await mountLayer(ref, path.join(d, 'ref')));
      expect(differences(viaTool, got)).toEqual([]);
    } finally {
      await umountAll(mounted.splice(0));
      await fs.rm(d, { recursive: true, force: true });
    }
  });
});

describe('tar conformance: a 2 GiB sparse file', () => {
  it.each([['gnu'], ['posix']])('GNU tar --format=%s --sparse: the layer has the whole file, its data where it was', async (format) => {
    const d = await tmpdir('sb-conf-');
    try {
      await fs.mkdir(path.join(d, 't'));
      const fh = await fs.open(path.join(d, 't/big'), 'w');
      await fh.write(Buffer.from('start'), 0, 5, 4096);
      await fh.write(Buffer.from('end'), 0, 3, 2 ** 31 - 3);
      await fh.close();
      const tar = path.join(d, 'big.tar');
      await run('tar', [`--format=${format}`, '--sparse', '-C', path.join(d, 't'), '-cf', tar, '.']);
      expect((await fs.stat(tar)).size).toBeLessThan(1 << 20);
      const r = await buildLayers(d, [{ name: 'big', source: { type: 'tar', path: tar } }]);
      const layer = await mountLayer(r.layers[0].file, path.join(d, 'layer'));
      const big = await fs.open(path.join(layer, 'big'));
      const at = async (pos: number, n: number) => {
        const b = Buffer.alloc(n);
        await big.read(b, 0, n, pos);
        return b.toString('latin1');
      };
      expect((await big.stat()).size).toBe(2 ** 31);
      expect(await at(4090, 12)).toBe('\0\0\0\0\0\0start\0');
      expect(await at(2 ** 31 - 5, 5)).toBe('\0\0end');
      await big.close();
    } finally {
      await umountAll(mounted.splice(0));
      await fs.rm(d, { recursive: true, force: true });
    }
  });
});

describe('tar conformance: what is refused', () => {
  it('a GNU-format tar of a device in a layer without devices (the device was read as 0:0, a whiteout, and passed)', async () => {
    const d = await tmpdir('sb-conf-');
    const tar = path.join(d, 'gnu.tar');
    await run('tar', ['--format=gnu', '-C', tree, '-cf', tar, './dev/null']);
    await expect(buildLayers(d, [{ name: 'layer', source: { type: 'tar', path: tar } }])).rejects.toMatchObject({ code: 'UNSAFE_ENTRY', message: expect.stringMatching(/entry "\.\/dev\/null": device node \(char 1:3\) in a layer that does not allow devices/) });
    await fs.rm(d, { recursive: true, force: true });
  });

  it('a GNU incremental archive (its D entries), naming the entry', async () => {
    const d = await tmpdir('sb-conf-');
    const tar = path.join(d, 'incremental.tar');
    await run('tar', ['--format=gnu', `--listed-incremental=${path.join(d, 'snar')}`, '-C', tree, '-cf', tar, './f']);
    await expect(buildLayers(d, [{ name: 'layer', source: { type: 'tar', path: tar } }])).rejects.toMatchObject({ code: 'UNSAFE_ENTRY', message: expect.stringMatching(/entry "\.\/f\/": unsupported entry type GNU incremental dump directory \(D\)/) });
    await fs.rm(d, { recursive: true, force: true });
  });

  it('a GNU multi-volume archive (its M and V entries)', async () => {
    const d = await tmpdir('sb-conf-');
    const vols = [path.join(d, 'v1.tar'), path.join(d, 'v2.tar'), path.join(d, 'v3.tar'), path.join(d, 'v4.tar')];
    // 8 MiB of sparse data stored in full, in volumes of 3 MiB: the second starts inside it
    await run('tar', ['--format=gnu', '-M', '-L', '3072', '-V', 'vol', ...vols.flatMap((v) => ['-f', v]), '-C', tree, '-c', './f/sparse']);
    await expect(buildLayers(d, [{ name: 'layer', source: { type: 'tar', path: vols[0] } }])).rejects.toThrow(/GNU volume label \(V\)/);
    await expect(buildLayers(d, [{ name: 'layer', source: { type: 'tar', path: vols[1] } }], path.join(d, 'out2'))).rejects.toThrow(/GNU volume label \(V\)|GNU multi-volume continuation \(M\)/);
    await fs.rm(d, { recursive: true, force: true });
  });
});
