#!/bin/bash
# Builds the tree of a guest layer that runs the real `stackboot` CLI: the host's Node.js
# binary with its shared libraries (from ldd), the CLI bundled from src/ into one module
# (bundled here into the tree, not the repo's dist/), bin/stackboot, and /usr/bin/stackboot.
#
#   scripts/guest-node-tree.sh OUT_DIR
#
# Only for a guest of the host's architecture (the e2e tests use amd64 on an amd64 host).
# Reproducible enough: same node, same sources, same lockfile -> same files; mtimes are
# normalised by the layer builder anyway.
set -euo pipefail
out=${1:?usage: guest-node-tree.sh OUT_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
node=$(readlink -f "$(command -v node)")
tmp="$out.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/usr/bin" "$tmp/usr/lib/stackboot-cli"
trap 'rm -rf "$tmp"' EXIT

# node and its libraries, at the paths ldd names (so the loader finds them)
install -m 0755 "$node" "$tmp/usr/bin/node"
ldd "$node" | awk '/=> \//{print $3} /^[ \t]*\/.*ld-linux/{print $1}' | sort -u | while read -r lib; do
	real=$(readlink -f "$lib")
	mkdir -p "$tmp$(dirname "$lib")"
	install -m 0755 "$real" "$tmp$lib"
done

# the CLI: one bundled module (execa, yargs inside; tar and handlebars in two parts
# beside it), no node_modules; it starts several times faster than ~400 module files,
# which counts under QEMU TCG. It starts through bin/stackboot, as on a host (its V8 and
# malloc settings).
cli="$tmp/usr/lib/stackboot-cli"
(cd "$repo" && node scripts/bundle-cli.mjs src/cli/main.ts "$cli/dist/stackboot.cjs")
# the boot core is found next to dist/ (initramfs.ts reads it lazily)
cp -a "$repo/initramfs" "$cli/initramfs"
install -D -m 0755 "$repo/bin/stackboot" "$cli/bin/stackboot"
ln -s ../lib/stackboot-cli/bin/stackboot "$tmp/usr/bin/stackboot"
find "$tmp" -name '*.map' -delete
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
