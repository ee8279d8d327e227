#!/bin/sh
# Fills .cache/demo-tools/<arch> with the host's sfdisk, mkfs.ext4 (mke2fs), mkfs.vfat and
# the shared libraries they need (found by ldd), for the `tools` layer of this recipe.
# The host must run the same Debian release as the target (bookworm here) and the same
# arch: the test suite runs it on amd64 only.
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
arch=${1:-amd64}
out=$repo/.cache/demo-tools/$arch
rm -rf "$out.new"
mkdir -p "$out.new/usr/sbin" "$out.new/etc"
copy_with_libs() { # SRC DEST-NAME
	cp -L "$1" "$out.new/usr/sbin/$2"
	ldd "$1" | while read -r a b c d; do
		case "$a" in /*) lib=$a ;; *) [ "$b" = "=>" ] && lib=$c || continue ;; esac
		[ -f "$lib" ] || continue
		mkdir -p "$out.new$(dirname "$lib")"
		cp -L "$lib" "$out.new$lib"
	done
}
copy_with_libs "$(command -v sfdisk)" sfdisk
copy_with_libs "$(command -v mke2fs)" mkfs.ext4
copy_with_libs "$(command -v mkfs.fat)" mkfs.vfat
[ -r /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$out.new/etc/mke2fs.conf"
rm -rf "$out"
mv "$out.new" "$out"
echo "$out"
