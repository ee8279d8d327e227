#!/usr/bin/env bash
# images/debian/prepare.sh: the Debian 12 (bookworm) minbase root with systemd that the
# images/debian recipe stacks its layers on.
#
#   bash images/debian/prepare.sh [--arch amd64|arm64] [--force]
#
# Writes, under images/debian/.build/<arch>/:
#   base.tar     mmdebstrap's output (minbase + systemd-sysv + udev), reproducible for a
#                given package set: every mtime is clamped to SOURCE_DATE_EPOCH (default 0),
#                no /dev entries (the hook mounts devtmpfs there), /etc/resolv.conf removed,
#                /etc/hostname fixed, machine-id empty (systemd makes one at first boot).
#   base/        the same tree unpacked (for the benchmark and for looking around)
#   stamp        the inputs of this build; a second run with the same inputs does nothing
#
# Downloaded .debs are kept in .cache/debian-debs/<arch>/ (synced into the chroot's
# /var/cache/apt/archives before the download and back out after), so a rebuild fetches
# only what changed on the mirror. The package lists themselves are fetched each build.
#
# mmdebstrap mode: STACKBOOT_MMDEBSTRAP_MODE (default: root when run as root, else unshare).
# Both work on this machine; unshare is the rootless one for CI containers (it needs user
# namespaces and newuidmap/newgidmap from uidmap, which scripts/setup.sh installs).
#
# Exit codes: 0 ready, 1 failure, 3 the Debian mirror is unreachable (tests skip on it).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/../.." && pwd -P)
ARCH=$(dpkg --print-architecture)
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH=$2; shift 2 ;;
    --arch=*) ARCH=${1#--arch=}; shift ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "prepare: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$ARCH" in amd64|arm64) ;; *) echo "prepare: unknown arch $ARCH (amd64|arm64)" >&2; exit 2 ;; esac

SUITE=${STACKBOOT_DEBIAN_SUITE:-bookworm}
MIRROR=${STACKBOOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
EPOCH=${SOURCE_DATE_EPOCH:-0}
INCLUDE=systemd-sysv,udev
if [ "$(id -u)" -eq 0 ]; then MODE_DEFAULT=root; else MODE_DEFAULT=unshare; fi
MODE=${STACKBOOT_MMDEBSTRAP_MODE:-$MODE_DEFAULT}

OUT="$HERE/.build/$ARCH"
DEBS="$ROOT/.cache/debian-debs/$ARCH"
log() { printf 'prepare debian: %s\n' "$*" >&2; }

stamp_text() {
  printf 'suite=%s\nmirror=%s\narch=%s\nepoch=%s\ninclude=%s\nscript=%s\n' \
    "$SUITE" "$MIRROR" "$ARCH" "$EPOCH" "$INCLUDE" "$(sha256sum "$0" | cut -d' ' -f1)"
}

if [ "$FORCE" = 0 ] && [ -f "$OUT/base.tar" ] && [ -d "$OUT/base" ] && [ -f "$OUT/stamp" ] \
  && [ "$(cat "$OUT/stamp")" = "$(stamp_text)" ]; then
  log "$OUT/base.tar is up to date"
  exit 0
fi

# the mirror must answer (the e2e test skips on exit code 3, and only on it)
if ! curl -fsS -o /dev/null --max-time 20 "$MIRROR/dists/$SUITE/Release" 2>/dev/null \
  && ! wget -q -O /dev/null --timeout=20 "$MIRROR/dists/$SUITE/Release" 2>/dev/null \
  && ! (exec 3<>"/dev/tcp/$(echo "$MIRROR" | sed -E 's,^[a-z]+://([^/:]+).*,\1,')/80") 2>/dev/null; then
  log "the Debian mirror $MIRROR is unreachable"
  exit 3
fi

mkdir -p "$OUT" "$DEBS"
TMP=$(mktemp -d "$OUT/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
chmod 0755 "$TMP"

log "mmdebstrap $SUITE $ARCH (mode $MODE, SOURCE_DATE_EPOCH=$EPOCH, include $INCLUDE)"
SOURCE_DATE_EPOCH=$EPOCH mmdebstrap \
  --mode="$MODE" --variant=minbase --architectures="$ARCH" --include="$INCLUDE" \
  --format=tar --skip=output/dev --skip=download/empty --skip=essential/unlink \
  --aptopt='Acquire::Check-Valid-Until "false"' \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
  --setup-hook="sync-in '$DEBS' /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives '$DEBS'" \
  --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/archives/partial/*.deb' \
  --customize-hook='rm -f "$1"/etc/resolv.conf; echo stackboot-debian > "$1"/etc/hostname' \
  "$SUITE" "$TMP/base.tar" "$MIRROR"

# mmdebstrap packs no ./dev with --skip=output/dev: add the empty mount point (the hook
# moves the initramfs's devtmpfs there)
mkdir -p "$TMP/devroot/dev"
chmod 0755 "$TMP/devroot/dev"
tar -C "$TMP/devroot" --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -rf "$TMP/base.tar" ./dev

# keep only the newest .deb of each package in the cache
(cd "$DEBS" && ls -1 *.deb 2>/dev/null | sort -V | awk -F_ '{k=$1"_"$3; if (k in last) print last[k]; last[k]=$0}' | xargs -r rm -f)

log "unpacking $OUT/base"
mkdir "$TMP/base"
if [ "$(id -u)" -eq 0 ]; then
  # POSIX ACLs (systemd puts them on /var/log/journal) are left out: squashfs cannot
  # store system.* xattrs (the tar source drops them too), and gensquashfs -x and
  # tar2sqfs refuse a tree that has them
  tar -C "$TMP/base" --xattrs --xattrs-include='*' --xattrs-exclude='system.*' --numeric-owner -xpf "$TMP/base.tar"
else
  # rootless: owners cannot be kept on disk; the tar is the layer source anyway
  tar -C "$TMP/base" --no-same-owner -xf "$TMP/base.tar"
fi

rm -rf "$OUT/base.old"
[ -e "$OUT/base" ] && mv "$OUT/base" "$OUT/base.old"
mv "$TMP/base" "$OUT/base"
mv -f "$TMP/base.tar" "$OUT/base.tar"
rm -rf "$OUT/base.old"
stamp_text >"$OUT/stamp"
log "ready: $OUT/base.tar ($(du -m "$OUT/base.tar" | cut -f1) MiB), sha256 $(sha256sum "$OUT/base.tar" | cut -c1-16)…"
