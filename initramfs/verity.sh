# stackboot boot core: verified boot (docs/PROTOCOL.md "Verity").
#
# Before a stack is trusted its manifest's ed25519 signature is checked against the keys
# built into this initrd ($SB_KEYS/*.pub, `stackboot initramfs --pub`): busybox cannot,
# so signify-openbsd does (the same keys in its form, *.signify), or openssl (pkeyutl
# -rawin) in a distribution initrd that has it and not signify. Then, with VERIFY=verity
# and a stack whose manifest has a `verity` line per layer, each layer file is opened read-only on a loop device
# through dm-verity (dmsetup, a `verity` table: the tree the build appended to the
# file) and the overlay's lower is the verity device: the kernel checks every block as
# it is read. A block that does not match fails its read with EIO (no
# restart_on_corruption): at mount that fails the stack and the node falls back on the
# same boot; later, the reading program gets the error and the health checks or the
# tries settle it.

: "${SB_KEYS=/etc/stackboot/keys}"

# sb_sys_has_verifier: true when this initrd can check an ed25519 signature: signify
# (signify-openbsd: the standalone initrd's, 0.3 MB with its libraries) or openssl (a
# distribution initrd may have it; 6 MB with libcrypto).
sb_sys_has_verifier() { command -v signify-openbsd >/dev/null 2>&1 || command -v openssl >/dev/null 2>&1; }
# sb_sys_sig_verify MANIFEST SIG KEY: true when the raw 64-byte SIG of MANIFEST verifies
# with the PEM KEY (<name>.pub): by signify with the key in its form (<name>.signify, from
# `stackboot initramfs`) and SIG in its form (SIG.signify, made by sb_manifest_trusted when
# signify is here), else by openssl.
sb_sys_sig_verify() {
	if [ -f "${3%.pub}.signify" ] && [ -f "$2.signify" ]; then
		signify-openbsd -V -q -p "${3%.pub}.signify" -x "$2.signify" -m "$1" >/dev/null 2>&1
	else
		openssl pkeyutl -verify -pubin -inkey "$3" -rawin -in "$1" -sigfile "$2" >/dev/null 2>&1
	fi
}
# sb_signify_sig SIG: writes SIG.signify, the raw 64-byte signature SIG in signify's form: a
# comment line, then the base64 of "Ed", the key number 0 and SIG (src/format/signature.ts).
sb_signify_sig() {
	{
		echo 'untrusted comment: stackboot signature'
		{
			printf 'Ed\000\000\000\000\000\000\000\000'
			cat "$1"
		} | base64 -w 0
		echo
	} >"$1.signify"
}
# sb_sys_has_dm_verity: true when dmsetup is here and the kernel has the verity target:
# the module's $SB_SYS_MODULE/dm_verity (a built-in dm-verity has it too: it has
# parameters), else dmsetup's list of targets (a dmsetup start costs ~0.1 s under TCG).
sb_sys_has_dm_verity() {
	command -v dmsetup >/dev/null 2>&1 || return 1
	[ -d "$SB_SYS_MODULE/dm_verity" ] && return 0
	sb_sys_modprobe dm-verity 2>/dev/null
	[ -d "$SB_SYS_MODULE/dm_verity" ] && return 0
	DM_DISABLE_UDEV=1 dmsetup targets 2>/dev/null | grep -q '^verity '
}
# sb_sys_hash_accel: loads the CPU's sha256 drivers when the initrd has them (x86
# SSSE3/AVX2/SHA-NI, arm64 crypto extensions and NEON), before the first dm-verity table:
# the crypto API gives dm-verity the best driver registered then, and a kernel with the
# generic sha256 built in (Debian's) would otherwise keep it for the whole boot. A CPU
# without the instructions refuses them: quietly, that is no fault.
sb_sys_hash_accel() {
	local m
	for m in sha256_ssse3 sha2_ce sha256_arm64; do
		sb_sys_modprobe "$m" >/dev/null 2>&1 && sb_debug "module $m loaded (sha256 for dm-verity)"
	done
	return 0
}
# sb_sys_loop_attach FILE: FILE read-only on a free loop device, whose path is left in
# SB_LOOP. The free device is found in sysfs (a bound one has a `loop` folder there), so
# a layer costs one losetup run (each is ~20 ms under TCG); `losetup -f`, which can also
# make a device, when every one there is bound or the one found cannot be.
sb_sys_loop_attach() {
	local d
	SB_LOOP=
	for d in "$SB_SYS_BLOCK"/loop[0-9]*; do
		[ -d "$d" ] && [ ! -d "$d/loop" ] || continue
		SB_LOOP="$SB_DEV/${d##*/}"
		break
	done
	[ -n "$SB_LOOP" ] && losetup -r "$SB_LOOP" "$1" 2>/dev/null && return 0
	SB_LOOP=$(losetup -f 2>/dev/null) && [ -n "$SB_LOOP" ] && losetup -r "$SB_LOOP" "$1"
}
# sb_sys_verity_open SPECS: opens the dm-verity devices of SPECS, lines "NAME FILE
# DATA_BYTES HASH_OFFSET ROOT SALT" (a string, not a file: busybox's read takes a syscall
# a byte, ~10 ms a layer under TCG): each FILE read-only on a loop device, then all
# the devices with one dmsetup (`create --concise`: a dmsetup start costs ~0.1 s under
# TCG, and one a layer was most of what verity added to a boot). 1 when a loop or a
# device cannot be made; what was made is closed again.
sb_sys_verity_open() {
	local rest="$1" line name file data off root salt loop spec= names=
	while [ -n "$rest" ]; do
		line=${rest%%"
"*}
		case "$rest" in *"
"*) rest=${rest#*"
"} ;; *) rest= ;; esac
		[ -n "$line" ] || continue
		set -f
		# shellcheck disable=SC2086
		set -- $line
		set +f
		name=$1 file=$2 data=$3 off=$4 root=$5 salt=$6
		if ! sb_sys_loop_attach "$file"; then
			for name in $names; do sb_sys_verity_close "$name"; done
			return 1
		fi
		loop=$SB_LOOP
		echo "$loop" >"$SB_RUN/sb/$name.loop"
		names="$names $name"
		spec="$spec${spec:+;}$name,,,ro,0 $((data / 512)) verity 1 $loop $loop 4096 4096 $((data / 4096)) $((off / 4096)) sha256 $root $salt"
	done
	sb_debug "loop devices bound:$names; dmsetup create"
	if ! DM_DISABLE_UDEV=1 dmsetup create --noudevsync --concise "$spec" >/dev/null 2>&1; then
		for name in $names; do sb_sys_verity_close "$name"; done
		return 1
	fi
	for name in $names; do
		[ -b "$SB_DEV/mapper/$name" ] || DM_DISABLE_UDEV=1 dmsetup mknodes "$name" >/dev/null 2>&1
	done
	return 0
}
# sb_sys_verity_mount NAME DIR: the squashfs of the open verity device NAME on DIR (the
# kernel reads and checks its superblock and tables: a block that does not match fails it).
sb_sys_verity_mount() { mount -t squashfs -o ro "$SB_DEV/mapper/$1" "$2"; }
# sb_sys_verity_release NAME...: the verity devices NAME… go away by themselves when their
# last user closes them (`dmsetup remove --deferred`): at shutdown, when the layers'
# mounts are freed, so the loop devices under them can be detached.
sb_sys_verity_release() { DM_DISABLE_UDEV=1 dmsetup remove --deferred --noudevsync "$@" >/dev/null 2>&1; }
# sb_sys_verity_close NAME: remove the verity device NAME and free its loop device.
sb_sys_verity_close() {
	DM_DISABLE_UDEV=1 dmsetup remove "$1" >/dev/null 2>&1
	[ -r "$SB_RUN/sb/$1.loop" ] && losetup -d "$(cat "$SB_RUN/sb/$1.loop")" 2>/dev/null
	rm -f "$SB_RUN/sb/$1.loop"
}

# sb_manifest_trusted MANIFEST: 0 when MANIFEST.sig verifies with a key of this initrd,
# when this initrd has no keys (said once: signatures are then checked at install only),
# or with ALLOW_UNSIGNED=1 (said in the log). Else 1 with SB_FAIL_WHY, and SB_FAIL_ENV=1
# when this initrd has keys but no verifier.
sb_manifest_trusted() {
	local man="$1" k keys= why= bin
	for k in "$SB_KEYS"/*.pub; do [ -f "$k" ] && keys="$keys $k"; done
	if [ -z "$keys" ]; then
		[ -n "${SB__NOKEYS_SAID-}" ] || sb_warn "no keys in this initrd ($SB_KEYS): manifest signatures are not checked at boot"
		SB__NOKEYS_SAID=1
		return 0
	fi
	bin="$SB_RUN/sb/manifest.sig.bin"
	mkdir -p "$SB_RUN/sb"
	if [ ! -s "$man.sig" ]; then
		why="manifest is not signed (no manifest.sig)"
	elif ! sb_sys_has_verifier; then
		why="this initrd has keys but no signature verifier (signify-openbsd or openssl)"
	elif ! base64 -d <"$man.sig" >"$bin" 2>/dev/null || [ "$(sb_file_size "$bin")" != 64 ]; then
		why="manifest.sig is not the base64 of a 64-byte ed25519 signature"
	else
		rm -f "$bin.signify"
		command -v signify-openbsd >/dev/null 2>&1 && sb_signify_sig "$bin"
		for k in $keys; do
			if sb_sys_sig_verify "$man" "$bin" "$k"; then
				sb_log "manifest signature verified with ${k##*/}"
				return 0
			fi
		done
		why="manifest signature does not verify with any key of this initrd"
	fi
	if [ "$SB_ALLOW_UNSIGNED" = 1 ]; then
		sb_warn "ALLOW_UNSIGNED=1 (development only): booting anyway: $why"
		return 0
	fi
	SB_FAIL_WHY=$why
	case "$why" in *'no signature verifier'*) SB_FAIL_ENV=1 ;; esac
	return 1
}

# sb_verity_available: true when this machine can open dm-verity devices (asked once).
sb_verity_available() {
	if [ -z "${SB__DMV-}" ]; then
		if sb_sys_has_dm_verity; then
			SB__DMV=yes
			sb_sys_hash_accel
		else
			SB__DMV=no
		fi
	fi
	[ "$SB__DMV" = yes ]
}

# sb_verity_plan MANIFEST: SB_STACK_VERITY=1 when the layers are to be opened through
# dm-verity: VERIFY=verity, the manifest has verity lines and the machine can. Else 0,
# and the layers are checked by size (logged).
sb_verity_plan() {
	SB_STACK_VERITY=0
	[ "$SB_VERIFY" = verity ] || return 0
	sb_verity_lines_load "$1"
	if [ -z "$SB__VLINES" ]; then
		sb_log "the stack has no verity data: checking its layers by size"
		return 0
	fi
	if ! sb_verity_available; then
		sb_warn "VERIFY=verity but this kernel or initrd has no dm-verity (dmsetup, dm-verity module): checking layers by size"
		return 0
	fi
	SB_STACK_VERITY=1
}

# sb__salt_ok S: true when S is 2 to 256 lowercase hex characters, an even number.
sb__salt_ok() {
	case "$1" in '' | *[!0-9a-f]*) return 1 ;; esac
	[ $((${#1} % 2)) = 0 ] && [ ${#1} -le 256 ]
}

# sb_verity_tree_set DATA_BYTES: SB_V_TREE = the bytes of the hash tree over DATA_BYTES
# (the kernel's levels: 128 sha256 digests a 4096-byte block, none for one data block).
sb_verity_tree_set() {
	local n=$(($1 / 4096)) t=0
	while [ "$n" -gt 1 ]; do
		n=$(((n + 127) / 128))
		t=$((t + n))
	done
	SB_V_TREE=$((t * 4096))
}
# sb_verity_tree_bytes DATA_BYTES: prints it.
sb_verity_tree_bytes() {
	sb_verity_tree_set "$1"
	echo "$SB_V_TREE"
}

# sb_verity_lines_load MANIFEST: SB__VLINES = the manifest's verity lines without their
# key, each after a newline, its fields split as `read` splits them and a space after
# each, so that a layer's line is found by "<newline><sha256> " (SB__VMAN = MANIFEST). One
# pass over the file: busybox's `read` takes a byte a syscall, and a pass a layer cost
# ~20 ms under TCG for a 1.6 kB manifest.
sb_verity_lines_load() {
	local k h r s d o x
	SB__VLINES= SB__VMAN=$1
	[ -r "$1" ] || return 0
	while read -r k h r s d o x || [ -n "$k" ]; do
		[ "$k" = verity ] && SB__VLINES="$SB__VLINES
$h $r $s $d $o $x "
	done <"$1"
}

# sb_manifest_verity MANIFEST SHA256: sets SB_V_ROOT, SB_V_SALT, SB_V_DATA, SB_V_OFF from
# the layer's first verity line, checked (sizes normalised). 1 when there is none; 2 with
# SB_MANIFEST_WHY when it is malformed. (Variables, not output: a $(...) subshell would
# lose SB_MANIFEST_WHY.) The lines come from sb_verity_lines_load, read again only for
# another manifest; no here-document (busybox ash forks for one that expands).
sb_manifest_verity() {
	local h="$2" t r s d o x
	SB_MANIFEST_WHY= SB_V_ROOT= SB_V_SALT= SB_V_DATA= SB_V_OFF=
	[ "${SB__VMAN-}" = "$1" ] || sb_verity_lines_load "$1"
	case "$SB__VLINES" in *"
$h "*) ;; *) return 1 ;; esac
	t=${SB__VLINES#*"
$h "}
	t=${t%%"
"*}
	# the fields, unglobbed (a manifest is input; the boot core never runs with -f)
	set -f
	# shellcheck disable=SC2086
	set -- $t
	set +f
	r=${1-} s=${2-} d=${3-} o=${4-} x=${5-}
	if [ -z "$o" ] || [ -n "$x" ]; then
		SB_MANIFEST_WHY="manifest: malformed verity line for layer $(sb_short "$h")"
	elif ! sb_is_hex64 "$r"; then
		SB_MANIFEST_WHY="manifest: verity root hash of layer $(sb_short "$h") is not 64 hex characters (${#r})"
	elif ! sb__salt_ok "$s"; then
		SB_MANIFEST_WHY="manifest: verity salt of layer $(sb_short "$h") is not 2 to 256 hex characters"
	elif ! sb_uint_set "$d" 15 || [ "$SB_UINT" = 0 ] || [ $((SB_UINT % 4096)) != 0 ]; then
		SB_MANIFEST_WHY="manifest: verity data size of layer $(sb_short "$h") is not a positive multiple of 4096"
	elif d=$SB_UINT; ! sb_uint_set "$o" 15 || [ $((SB_UINT % 4096)) != 0 ] || [ "$SB_UINT" -lt "$d" ]; then
		SB_MANIFEST_WHY="manifest: verity hash offset of layer $(sb_short "$h") is not a multiple of 4096 at or past its data"
	else
		SB_V_ROOT=$r SB_V_SALT=$s SB_V_DATA=$d SB_V_OFF=$SB_UINT
		return 0
	fi
	return 2
}

# sb_verity_check_layer MANIFEST SHA256 NAME FILE [SIZE]: the layer's verity line is well
# formed and its hash tree lies inside FILE (of SIZE bytes, when the caller knows).
# Sets SB_FAIL_WHY on failure.
sb_verity_check_layer() {
	local size="${5-}" end
	sb_manifest_verity "$1" "$2"
	case $? in
	0) ;;
	1)
		SB_FAIL_WHY="layer $3 ($(sb_short "$2")) has no verity line"
		return 1
		;;
	*)
		SB_FAIL_WHY=$SB_MANIFEST_WHY
		return 1
		;;
	esac
	[ -n "$size" ] || size=$(sb_file_size "$4")
	sb_verity_tree_set "$SB_V_DATA"
	end=$((SB_V_OFF + SB_V_TREE))
	if [ "$end" -gt "$size" ]; then
		SB_FAIL_WHY="layer $3 ($(sb_short "$2")): its verity hash tree (offset $SB_V_OFF, ending at $end) is past the end of the $size-byte file"
		return 1
	fi
	return 0
}

# sb_verity_dm_name SLOT N SHA256: SB_DM = the verity device of layer N of SLOT's stack.
sb_verity_dm_name() { SB_DM="sbv-$1$2-${3%"${3#????????????}"}"; }

# sb_verity_open_layers MANIFEST LIST SLOT STORE_DIR: opens every layer of LIST (lines
# "<sha256> <bytes> <name>") through dm-verity with its manifest values, and remembers
# each device for sb_unmount_stack (D:NAME). Sets SB_FAIL_WHY (SB_FAIL_ENV when the
# machine, not the stack, failed) on failure.
sb_verity_open_layers() {
	local man="$1" list="$2" slot="$3" store="$4" specs= h sz name n=0 names=
	while read -r h sz name; do
		if ! sb_manifest_verity "$man" "$h"; then
			SB_FAIL_WHY=${SB_MANIFEST_WHY:-layer $name has no verity line}
			return 1
		fi
		sb_verity_dm_name "$slot" "$n" "$h"
		specs="$specs$SB_DM $store/layers/$h.sqfs $SB_V_DATA $SB_V_OFF $SB_V_ROOT $SB_V_SALT
"
		names="$names $SB_DM"
		n=$((n + 1))
	done <"$list"
	if ! sb_sys_verity_open "$specs"; then
		SB_FAIL_WHY="cannot open the layers through dm-verity" SB_FAIL_ENV=1
		return 1
	fi
	for name in $names; do sb__pushed "D:$name"; done
	sb_log "layers opened through dm-verity:$names"
	return 0
}

# sb_verity_mount_layer SHA256 NAME DIR DMNAME: mount the open verity device of a layer on
# DIR. Sets SB_FAIL_WHY on failure (SB_FAIL_ENV when this kernel has no squashfs).
sb_verity_mount_layer() {
	sb_sys_verity_mount "$4" "$3" && return 0
	SB_FAIL_WHY="layer $2 ($(sb_short "$1")) fails dm-verity at mount: a block does not match the signed root hash"
	sb_sys_fs_known squashfs || SB_FAIL_ENV=1 SB_FAIL_WHY="cannot mount layer $2 ($(sb_short "$1")): this kernel has no squashfs"
	return 1
}

# sb_verity_release_on_close: the verity devices of the mounted stack (D: in SB_MOUNTED)
# are removed by the kernel once nothing uses them (the systemd shutdown hand-back needs
# it: it has no dmsetup, and a device left would hold its loop device and the store).
# One dmsetup for all; only after every layer is mounted (a device nobody has open would
# go at once).
sb_verity_release_on_close() {
	local m names=
	for m in $SB_MOUNTED; do
		case "$m" in D:*) names="$names ${m#D:}" ;; esac
	done
	[ -n "$names" ] || return 0
	# shellcheck disable=SC2086
	if sb_sys_verity_release $names; then
		sb_debug "verity devices go when the layers are unmounted:$names"
	else
		sb_warn "cannot mark the verity devices for removal at shutdown:$names"
	fi
	return 0
}
