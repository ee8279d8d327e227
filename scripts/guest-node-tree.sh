#!/bin/bash
# Builds the tree of a guest layer that runs the real `stackboot` CLI: the host's Node.js
# binary with its shared libraries (from ldd), the compiled CLI (dist/, compiled here into
# the tree, not the repo's dist/) with its production dependencies, and /usr/bin/stackboot.
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

# the CLI, compiled into the tree
cli="$tmp/usr/lib/stackboot-cli"
(cd "$repo" && ./node_modules/.bin/tsc -p tsconfig.json --outDir "$cli/dist" --sourceMap false) || echo "guest-node-tree: tsc reported errors (emitted anyway)" >&2
cp "$repo/package.json" "$cli/package.json"
# production dependencies only (execa, tar, yargs, handlebars and theirs)
(cd "$repo" && npm ls --omit=dev --all --parseable 2>/dev/null) | sed -n "s#^$repo/node_modules/##p" | sort | while read -r rel; do
	[ -e "$cli/node_modules/$rel" ] && continue
	mkdir -p "$cli/node_modules/$(dirname "$rel")"
	cp -a "$repo/node_modules/$rel" "$cli/node_modules/$rel"
done
# the boot core and templates are found next to dist/ (initramfs.ts imports them lazily)
cp -a "$repo/initramfs" "$cli/initramfs"

cat >"$tmp/usr/bin/stackboot" <<'SH'
#!/bin/sh
exec /usr/bin/node /usr/lib/stackboot-cli/dist/cli/main.js "$@"
SH
chmod 0755 "$tmp/usr/bin/stackboot"
find "$tmp" -name '*.map' -delete
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
