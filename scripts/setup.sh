#!/usr/bin/env bash
# stackboot setup: host tools, test kernels, node modules.
#
# Idempotent and non-interactive. A second run with everything in place does no apt or
# npm work at all (no apt-get update) and takes well under a second.
#
#   - installs the Debian packages the builder, the tests and QEMU need (only missing ones);
#   - enables the arm64 dpkg architecture (needed to download arm64 packages);
#   - downloads (never installs) the Debian test kernels and busybox-static for amd64 and
#     arm64 and unpacks them under .cache/targets/<arch>/, with .cache/targets/<arch>/target.env;
#   - runs npm ci when node_modules is missing or older than package-lock.json.
#
# Environment:
#   STACKBOOT_SETUP_ARCHES   targets to prepare (default: "amd64 arm64")
#   STACKBOOT_SETUP_REFRESH=1  re-download the test kernels even when present
#   STACKBOOT_SETUP_SKIP_APT=1 do not install Debian packages (check only)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd -P)
CACHE="$ROOT/.cache"
export DEBIAN_FRONTEND=noninteractive

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install packages"
  SUDO=(sudo -n)
fi

# apt-get download as root warns that _apt cannot write the directory; downloading as
# root into our own cache is what we want.
APT_OPTS=(-q -o APT::Sandbox::User=root -o Dpkg::Use-Pty=0)

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    "${SUDO[@]}" apt-get "${APT_OPTS[@]}" update >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
}

# ---------------------------------------------------------------------------------------
# 1. Debian packages
PACKAGES=(
  squashfs-tools-ng squashfs-tools qemu-system-x86 qemu-system-arm busybox-static
  e2fsprogs mtools dosfstools fdisk cpio zstd xz-utils mmdebstrap kmod gdisk qemu-utils
  util-linux tar attr time
  # the tar and OCI conformance tests: writers of tars and images to read
  libarchive-tools umoci skopeo golang-go
  # the registry tests: Docker Distribution 2.8 (skopeo above reads and copies what is
  # pushed), htpasswd and openssl for the registry's basic auth and TLS
  docker-registry apache2-utils openssl
  # the boot core's signature check under busybox sh (the initrd's verifier, and openssl's)
  signify-openbsd
  # readelf: the library closure of kexec (and any program) put into the standalone initrd
  binutils
  # NVIDIA's L4TLauncher extlinux reader, compiled for the host (test/support/l4t/)
  gcc libc6-dev
  # verified boot: veritysetup checks the hash trees the build writes (issue 14)
  cryptsetup-bin
  # U-Boot for QEMU's aarch64 virt: the firmware e2e boots the SD image the way a board's
  # distro boot does (extlinux.conf from the vfat boot partition)
  u-boot-qemu
  # the real bmaptool: node.img.bmap is its format, tested both ways (test/media/bmap.int)
  bmap-tools
  # the real casync: issue 15's anchor, measured on the same layer pair (chunk tests, bench)
  casync
  # Python's http.server: a static server without Range (test/node/static-servers.int;
  # busybox-static's httpd is the one with Range)
  python3
  # libzstd from Python: the chunk deltas' frame deltas (issue 15) recompress squashfs blocks
  # with the system libzstd, and compress chunks against a raw-content prefix
  python3-zstandard
  # EDK2's UEFI for QEMU's aarch64 virt: the firmware e2e checks that UEFI starts the
  # program image --efi-boot puts on the ESP (JetPack 5/6 starts L4TLauncher so)
  qemu-efi-aarch64
  # installed with --no-install-recommends, so name what is really used from recommends:
  # mmdebstrap's unshare mode and foreign-arch checks.
  uidmap arch-test fakeroot gpg
)

is_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

missing=()
for p in "${PACKAGES[@]}"; do
  is_installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "${STACKBOOT_SETUP_SKIP_APT:-0}" = 1 ]; then
    die "missing Debian packages: ${missing[*]}"
  fi
  log "installing ${missing[*]}"
  apt_update_once
  "${SUDO[@]}" apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi

# ---------------------------------------------------------------------------------------
# 2. Test kernels and busybox for each target (downloaded, never installed)
ARCHES=${STACKBOOT_SETUP_ARCHES:-"amd64 arm64"}
HOST_ARCH=$(dpkg --print-architecture)


target_ready() {
  local dir="$CACHE/targets/$1"
  [ "${STACKBOOT_SETUP_REFRESH:-0}" != 1 ] && [ -f "$dir/.stamp" ] && [ -f "$dir/target.env" ] || return 1
  # the stamp is only trusted while the files it describes are there
  local KERNEL='' MODULES='' BUSYBOX=''
  # shellcheck disable=SC1091
  . "$dir/target.env"
  [ -f "$KERNEL" ] && [ -f "$MODULES/modules.dep" ] && [ -x "$BUSYBOX" ]
}

# unpack_kernel <deb> <dest> <package name>: dpkg -x a kernel package, check it has its
# vmlinuz and modules, and make modules.dep (the .deb carries none: its postinst runs
# depmod). Sets UNPACKED_KVER.
unpack_kernel() {
  local kdir
  dpkg -x "$1" "$2"
  kdir=$(ls -d "$2/lib/modules"/*/ 2>/dev/null | head -n 1)
  [ -n "$kdir" ] || die "no lib/modules in $3"
  UNPACKED_KVER=$(basename "$kdir")
  [ -f "$2/boot/vmlinuz-$UNPACKED_KVER" ] || die "no boot/vmlinuz-$UNPACKED_KVER in $3"
  depmod -b "$2" "$UNPACKED_KVER" || die "depmod failed for $UNPACKED_KVER"
}

todo=()
for a in $ARCHES; do
  case "$a" in amd64|arm64) ;; *) die "unknown target arch $a (amd64|arm64)";; esac
  target_ready "$a" || todo+=("$a")
done

if [ "${#todo[@]}" -gt 0 ]; then
  for a in "${todo[@]}"; do
    if [ "$a" != "$HOST_ARCH" ] && ! dpkg --print-foreign-architectures | grep -qx "$a"; then
      log "adding dpkg architecture $a"
      "${SUDO[@]}" dpkg --add-architecture "$a"
      APT_UPDATED=0
      apt_update_once
    fi
  done
  # no package lists at all (a fresh container): update once
  if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then apt_update_once; fi

  mkdir -p "$CACHE/tmp"
  TMP=$(mktemp -d "$CACHE/tmp/download.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT

  # apt-get download, retrying once after an apt-get update (stale lists give 404s)
  download() { # <dir> <pkg>
    if ! (cd "$1" && apt-get "${APT_OPTS[@]}" download "$2" >/dev/null 2>"$1/.err"); then
      if [ "$APT_UPDATED" -eq 0 ]; then
        apt_update_once
        (cd "$1" && apt-get "${APT_OPTS[@]}" download "$2" >/dev/null 2>"$1/.err") \
          || die "apt-get download $2 failed: $(tail -n 3 "$1/.err")"
      else
        die "apt-get download $2 failed: $(tail -n 3 "$1/.err")"
      fi
    fi
    rm -f "$1/.err"
  }

  for a in "${todo[@]}"; do
    if [ "$a" = "$HOST_ARCH" ]; then q=""; else q=":$a"; fi
    d="$TMP/$a"
    mkdir -p "$d/meta" "$d/kernel" "$d/busybox"

    log "downloading kernel $a"
    download "$d/meta" "linux-image-$a$q"
    meta=$(ls "$d/meta"/*.deb)
    # the metapackage depends on the real image, e.g. linux-image-6.1.0-41-amd64 (= 6.1.158-1)
    real=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n 1)
    [ -n "$real" ] || die "cannot find the kernel package that linux-image-$a depends on"
    download "$d/kernel" "$real$q"

    log "downloading busybox-static $a"
    download "$d/busybox" "busybox-static$q"

    # unpack beside the final place, then swap it in (tests may be reading the old one)
    out="$CACHE/targets/$a"
    new="$d/out"
    mkdir -p "$new"
    unpack_kernel "$d/kernel"/*.deb "$new/kernel" "$real"
    kver=$UNPACKED_KVER
    dpkg -x "$d/busybox"/*.deb "$new/busybox"
    [ -x "$new/busybox/bin/busybox" ] || die "no bin/busybox in busybox-static$q"
    kernel="$out/kernel/boot/vmlinuz-$kver"
    bb="$out/busybox/bin/busybox"

    case "$a" in
      amd64) qemu=qemu-system-x86_64;;
      arm64) qemu=qemu-system-aarch64;;
    esac
    {
      echo "KERNEL=$kernel"
      echo "MODULES=$out/kernel/lib/modules/$kver"
      echo "KVER=$kver"
      echo "BUSYBOX=$bb"
      echo "ARCH=$a"
      echo "QEMU=$qemu"
    } >"$new/target.env"
    kpkg=$(basename "$d/kernel"/*.deb)
    bpkg=$(basename "$d/busybox"/*.deb)
    printf '%s\n%s\n' "$kpkg" "$bpkg" >"$new/.stamp"
    mkdir -p "$CACHE/targets"
    if [ -e "$out" ]; then mv "$out" "$d/old"; fi
    mv "$new" "$out"
    rm -rf "$d/old"
    log "kernel $a $kver ready"
  done
  rm -rf "$TMP"
  trap - EXIT
fi

# amd64: also unpack the bzImage's XZ payload into an ELF vmlinux. QEMU boots that
# through PVH without running the XZ decompressor under TCG, which saves ~3.5 s per boot
# (kernel starts 0.7 s after QEMU instead of 4.3 s). target.env gets VMLINUX=; the
# harness prefers it on amd64. arm64 needs nothing: Debian's arm64 vmlinuz is a plain Image.
ensure_vmlinux() { # <arch dir>
  local dir=$1 env=$1/target.env KERNEL='' KVER='' VMLINUX=''
  # shellcheck disable=SC1090
  . "$env"
  [ -n "$VMLINUX" ] && [ -f "$VMLINUX" ] && return 0
  local out="$dir/kernel/vmlinux-$KVER" off
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$KERNEL" | head -n 1 | cut -d: -f1 || true)
  # (xz stops at the end of the stream; tail then dies of SIGPIPE: judge by the output)
  if [ -n "$off" ]; then
    { tail -c +"$((off + 1))" "$KERNEL" | xz -dc --single-stream >"$out.tmp" 2>/dev/null; } || true
  fi
  if [ -s "$out.tmp" ] && [ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
    mv "$out.tmp" "$out"
    grep -v '^VMLINUX=' "$env" >"$env.new" || true
    echo "VMLINUX=$out" >>"$env.new"
    mv "$env.new" "$env"
  else
    rm -f "$out.tmp"
    log "warning: could not unpack vmlinux from $KERNEL (amd64 boots use the bzImage, ~3.5 s slower)"
  fi
}
case " $ARCHES " in *" amd64 "*) ensure_vmlinux "$CACHE/targets/amd64";; esac

# 2b. Stack-kernel fixtures (issue "Kernel updates"), per target, each with its own stamp:
#   - a second kernel, Debian 12's 6.12 (linux-image-6.12-<arch>'s dependency), under
#     targets/<arch>/kernel2/ with modules.dep: a stack carries it, the node kexecs into it.
#     target.env gets KERNEL2=, MODULES2=, KVER2=.
#   - kexec-tools with the shared libraries its kexec binary needs, unpacked under
#     targets/<arch>/kexec-root/ (a sysroot: sbin/kexec, lib/…): the standalone initrd
#     takes kexec and its library closure from there. target.env gets KEXEC_ROOT=.
#   - dmsetup and signify-openbsd with their libraries under targets/<arch>/verity-root/
#     (verified boot: the standalone initrd opens layers through dm-verity and checks the
#     manifest's ed25519 signature with them). target.env gets VERITY_ROOT=.
# Downloaded with apt-get download and unpacked with dpkg -x: never installed here.
VERITY_PKGS="dmsetup libdevmapper1.02.1 libselinux1 libpcre2-8-0 libudev1 libcap2 signify-openbsd libbsd0 libmd0 libc6"
KEXEC_PKGS="kexec-tools libc6 zlib1g libxenmisc4.17 libxentoollog1 libxencall1 libxenevtchn1 libxengnttab1 libxenforeignmemory1 libxendevicemodel1 libxentoolcore1"
env_set() { # <env file> <KEY> <value>
  grep -v "^$2=" "$1" >"$1.new" || true
  echo "$2=$3" >>"$1.new"
  mv "$1.new" "$1"
}
apt_fetch() { # <dir> <pkg>: apt-get download, after one apt-get update if the lists are stale
  (cd "$1" && apt-get "${APT_OPTS[@]}" download "$2" >/dev/null 2>"$1/.err") && return 0
  apt_update_once
  (cd "$1" && apt-get "${APT_OPTS[@]}" download "$2" >/dev/null 2>"$1/.err") || die "apt-get download $2 failed: $(tail -n 3 "$1/.err")"
}
ensure_sysroot() { # <arch> <dir name> <env key> <program> <packages>: packages unpacked into targets/<arch>/<dir>
  local a=$1 dir="$CACHE/targets/$1" q='' tmp cur
  [ "$a" = "$HOST_ARCH" ] || q=":$a"
  cur=$(sed -n "s/^$3=//p" "$dir/target.env")
  if [ "${STACKBOOT_SETUP_REFRESH:-0}" = 1 ] || [ ! -x "$cur/$4" ] || [ "$(cat "$cur/.pkgs" 2>/dev/null)" != "$5" ]; then
    log "downloading $5 ($a)"
    tmp=$(mktemp -d "$CACHE/tmp/root.XXXXXX")
    mkdir -p "$tmp/debs"
    for p in $5; do apt_fetch "$tmp/debs" "$p$q"; done
    for d in "$tmp/debs"/*.deb; do dpkg -x "$d" "$tmp/root"; done
    [ -x "$tmp/root/$4" ] || die "no $4 in $5 ($a)"
    echo "$5" >"$tmp/root/.pkgs"
    rm -rf "${dir:?}/$2"
    mv "$tmp/root" "$dir/$2"
    rm -rf "$tmp"
    env_set "$dir/target.env" "$3" "$dir/$2"
    log "$2 $a ready"
  fi
}
ensure_stack_fixtures() { # <arch>
  local a=$1 dir="$CACHE/targets/$1" q='' tmp meta real kver
  local env="$dir/target.env" KERNEL2='' MODULES2=''
  [ "$a" = "$HOST_ARCH" ] || q=":$a"
  # shellcheck disable=SC1090
  . "$env"
  if [ "${STACKBOOT_SETUP_REFRESH:-0}" = 1 ] || [ ! -f "$KERNEL2" ] || [ ! -f "$MODULES2/modules.dep" ]; then
    log "downloading the second kernel (6.12) $a"
    tmp=$(mktemp -d "$CACHE/tmp/k2.XXXXXX")
    mkdir -p "$tmp/meta" "$tmp/kernel"
    apt_fetch "$tmp/meta" "linux-image-6.12-$a$q"
    meta=$(ls "$tmp/meta"/*.deb)
    real=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-6\.12[^ ]*\).*/\1/p' | head -n 1)
    [ -n "$real" ] || die "cannot find the kernel package that linux-image-6.12-$a depends on"
    apt_fetch "$tmp/kernel" "$real$q"
    unpack_kernel "$tmp/kernel"/*.deb "$tmp/out" "$real"
    kver=$UNPACKED_KVER
    rm -rf "$dir/kernel2"
    mv "$tmp/out" "$dir/kernel2"
    rm -rf "$tmp"
    env_set "$env" KERNEL2 "$dir/kernel2/boot/vmlinuz-$kver"
    env_set "$env" MODULES2 "$dir/kernel2/lib/modules/$kver"
    env_set "$env" KVER2 "$kver"
    log "second kernel $a $kver ready"
  fi
  ensure_sysroot "$a" kexec-root KEXEC_ROOT sbin/kexec "$KEXEC_PKGS"
  ensure_sysroot "$a" verity-root VERITY_ROOT sbin/dmsetup "$VERITY_PKGS"
}
mkdir -p "$CACHE/tmp"
for a in $ARCHES; do ensure_stack_fixtures "$a"; done

for a in $ARCHES; do
  if [[ " ${todo[*]-} " != *" $a "* ]]; then
    kv=$(sed -n 's/^KVER=//p' "$CACHE/targets/$a/target.env")
    log "kernel $a $kv ready (cached)"
  fi
done

# ---------------------------------------------------------------------------------------
# 3. node modules
if [ -f package-lock.json ]; then
  if [ ! -d node_modules ] || [ node_modules -ot package-lock.json ]; then
    log "npm ci"
    if ! CI=true npm ci --no-audit --no-fund --loglevel=error </dev/null; then
      # The lock names packages this registry cannot serve (a mirror that lags the public
      # registry, as rollup's platform packages did once). Resolve again rather than fail
      # the whole set-up; the log above says which packages.
      log "npm ci failed; falling back to npm install (package-lock.json may be refreshed)"
      CI=true npm install --no-audit --no-fund --loglevel=error </dev/null
    fi
    touch node_modules
  fi
elif [ ! -d node_modules ] || [ node_modules -ot package.json ]; then
  log "npm install"
  CI=true npm install --no-audit --no-fund --loglevel=error </dev/null
  touch node_modules
fi

log "done"
