# stackboot boot core: the stack's own kernel (docs/PROTOCOL.md "Stack kernels").
#
# A stack whose manifest names a kernel other than the running one is booted in two
# stages: this initrd (started by the firmware with the boot partition's kernel) chooses
# the stack as always, counts its try, mounts it, checks the kernel, initrd and device
# tree files against the manifest's digests, loads them with kexec and jumps; the
# stack's initrd then finds `stackboot.kexec=<store-id>:<slot>:<stack>` on its command
# line and mounts that slot again WITHOUT counting a second try. A kernel that panics
# (panic=N) or hangs (watchdog) resets the board into the firmware's kernel: the try was
# used, and after TRIES the stack is bad and the node falls back to the last good stack
# (and its kernel), all without a change to the bootloader.

# sb_manifest_bootfile MANIFEST KEY: for KEY kernel prints "<release> <path> <sha256>
# <bytes>", for initrd and fdt "<path> <sha256> <bytes>". 1 when the manifest has no
# such line; 2 (SB_MANIFEST_WHY set) when the line is malformed.
sb_manifest_bootfile() {
	local f="$1" key="$2" v rel= p d s
	SB_MANIFEST_WHY=
	v=$(sb_manifest_get "$f" "$key") || return 1
	sb_noglob
	# shellcheck disable=SC2086
	set -- $v
	sb_restore_glob
	if [ "$key" = kernel ]; then
		rel=$1
		shift
		case "$rel" in '' | *[!A-Za-z0-9._+~-]*)
			SB_MANIFEST_WHY="manifest $f: bad kernel release"
			return 2
			;;
		esac
	fi
	p=$1 d=${2#sha256:} s=$3
	if [ $# -ne 3 ] || [ "$d" = "${2-}" ] || ! sb_is_hex64 "$d" || ! sb_is_uint "$s" || [ "$s" = 0 ]; then
		SB_MANIFEST_WHY="manifest $f: malformed $key line"
		return 2
	fi
	case "$p" in /*) ;; *)
		SB_MANIFEST_WHY="manifest $f: $key path is not absolute"
		return 2
		;;
	esac
	case "$p" in *[!A-Za-z0-9._+@/-]* | */../* | */.. | *//*)
		SB_MANIFEST_WHY="manifest $f: bad $key path"
		return 2
		;;
	esac
	if [ -n "$rel" ]; then printf '%s %s %s %s\n' "$rel" "$p" "$d" "$s"; else printf '%s %s %s\n' "$p" "$d" "$s"; fi
	return 0
}

# sb_kexec_spec_parse: splits SB_KEXEC_FROM (<store-id>:<slot>:<stack>, from the command
# line) into SB_KX_STORE, SB_KX_SLOT, SB_KX_STACK. 1 when unset or malformed.
sb_kexec_spec_parse() {
	local s="${SB_KEXEC_FROM-}"
	SB_KX_STORE= SB_KX_SLOT= SB_KX_STACK=
	[ -n "$s" ] || return 1
	SB_KX_STORE=${s%%:*}
	s=${s#*:}
	SB_KX_SLOT=${s%%:*}
	SB_KX_STACK=${s#*:}
	case "$SB_KX_STORE" in '' | *[!0-9a-f]*) return 1 ;; esac
	sb_is_slot "$SB_KX_SLOT" || return 1
	sb_is_hex64 "$SB_KX_STACK" || return 1
	return 0
}

# sb_kexec_second_stage I SLOT: true when this boot is the kexec'ed second stage of SLOT
# of store I (its try was counted by the first stage).
sb_kexec_second_stage() {
	sb_kexec_spec_parse || return 1
	[ "$SB_KX_STORE" = "$(sb_store_get "$1" ID)" ] && [ "$SB_KX_SLOT" = "$2" ] &&
		[ "$SB_KX_STACK" = "$(sb_slot_stack "$2")" ]
}

# sb_kexec_check_file ROOT WHAT PATH SHA SIZE: the boot file is a regular file (not a
# link: its target would be read outside ROOT) of the manifest's size and sha256.
sb_kexec_check_file() {
	local f="$1$3" n h
	if [ -L "$f" ] || [ ! -f "$f" ]; then
		SB_FAIL_WHY="$2 $3 is missing from the stack (or is not a plain file)"
		return 1
	fi
	SB_FAIL_WHY="$2 $3 cannot be read (a read error: the layer that holds it is corrupt)"
	n=$(sb_file_size "$f") || return 1
	if [ "$n" != "$5" ]; then
		SB_FAIL_WHY="$2 $3 has $n bytes, the manifest says $5"
		return 1
	fi
	h=$(sb_sha256 "$f") || return 1
	if [ "$h" != "$4" ]; then
		SB_FAIL_WHY="$2 $3 is corrupt (sha256 $(sb_short "$h"), the manifest says $(sb_short "$4"))"
		return 1
	fi
	SB_FAIL_WHY=
	return 0
}

# sb_kexec_cmdline SPEC [WATCHDOG]: the running command line without BOOT_IMAGE= and an
# earlier stackboot.kexec=, plus stackboot.kexec=SPEC; with WATCHDOG (seconds: the
# watchdog this stage arms before the jump) stackboot.watchdog=WATCHDOG instead of an
# earlier one, so that the second stage takes the running watchdog over (watchdog.sh).
sb_kexec_cmdline() {
	local w out=
	sb_noglob
	for w in $SB_CMDLINE; do
		# the first stage carried out a factory reset already (reset.sh)
		case "$w" in BOOT_IMAGE=* | stackboot.kexec=* | stackboot.reset | stackboot.reset=*) continue ;; esac
		case "$w" in stackboot.watchdog=*) [ -n "${2-}" ] && continue ;; esac
		out="$out $w"
	done
	sb_restore_glob
	printf '%s\n' "${out# } stackboot.kexec=$1${2:+ stackboot.watchdog=$2}"
}

# sb_kexec_step I SLOT NEWROOT: after SLOT of store I is mounted on NEWROOT. 0 when the
# stack runs on this kernel (no kernel in its manifest, or it is the running one); does
# not return when it jumps into the stack's kernel; 1 with SB_FAIL_WHY (the stack
# unmounted) when its kernel cannot be booted: a missing or corrupt file, a malformed
# line, or a kexec'ed second stage that still runs another kernel. SB_FAIL_ENV=1 when the
# machine is at fault (no kexec in this initrd, a kernel that refuses the load).
sb_kexec_step() {
	local i="$1" slot="$2" root="$3" store man k rel kp ksha ksz ip isha isz fp= fsha fsz running spec rc wd
	store=$(sb_store_get "$i" MNT)
	man="$store/slots/$slot/manifest"
	SB_FAIL_WHY= SB_FAIL_ENV=
	k=$(sb_manifest_bootfile "$man" kernel)
	rc=$?
	[ "$rc" = 1 ] && return 0
	if [ "$rc" != 0 ]; then
		SB_FAIL_WHY=$SB_MANIFEST_WHY
		sb_unmount_stack
		return 1
	fi
	read -r rel kp ksha ksz <<EOT
$k
EOT
	running=$(sb_sys_kernel_release)
	if [ "$rel" = "$running" ]; then
		sb_debug "slot $slot: its kernel $rel is the running one"
		return 0
	fi
	if sb_kexec_second_stage "$i" "$slot"; then
		SB_FAIL_WHY="kexec'ed for kernel $rel but $running runs"
		sb_unmount_stack
		return 1
	fi
	if ! k=$(sb_manifest_bootfile "$man" initrd); then
		SB_FAIL_WHY=${SB_MANIFEST_WHY:-the manifest has a kernel but no initrd}
		sb_unmount_stack
		return 1
	fi
	read -r ip isha isz <<EOT
$k
EOT
	k=$(sb_manifest_bootfile "$man" fdt)
	rc=$?
	if [ "$rc" = 2 ]; then
		SB_FAIL_WHY=$SB_MANIFEST_WHY
		sb_unmount_stack
		return 1
	fi
	[ "$rc" = 0 ] && read -r fp fsha fsz <<EOT
$k
EOT
	if ! sb_kexec_check_file "$root" kernel "$kp" "$ksha" "$ksz" ||
		! sb_kexec_check_file "$root" initrd "$ip" "$isha" "$isz" ||
		{ [ -n "$fp" ] && ! sb_kexec_check_file "$root" fdt "$fp" "$fsha" "$fsz"; }; then
		sb_unmount_stack
		return 1
	fi
	spec="$(sb_store_get "$i" ID):$slot:$(sb_slot_stack "$slot")"
	# the watchdog armed before the jump (below) is the second stage's to take over
	wd=
	sb_watchdog_wanted "$slot" && wd=$SB_WATCHDOG
	sb_log "slot $slot runs kernel $rel, not $running: loading it for kexec"
	if ! sb_sys_kexec_load "$root$kp" "$root$ip" "${fp:+$root$fp}" "$(sb_kexec_cmdline "$spec" "$wd")"; then
		SB_FAIL_WHY="kexec could not load kernel $rel"
		sb_sys_has_kexec || SB_FAIL_WHY="$SB_FAIL_WHY: no kexec in this initrd" SB_FAIL_ENV=1
		sb_unmount_stack
		return 1
	fi
	sb_event "$store" kexec "$slot" "$(sb_slot_stack "$slot")" "$(sb_slot_tries "$slot")" "kernel $running -> $rel"
	# a pending stack's kernel that hangs: the board resets it (WATCHDOG=)
	sb_watchdog_arm "$slot" kexec
	# the kernel is loaded: leave nothing unwritten on the stores, then jump
	sb_unmount_stack
	sb_kexec_stores_quiesce
	sb_sys_kexec_exec
	# only a failed jump gets here: the loaded kernel is unusable, and the candidate that
	# boots instead must not be reset by the watchdog armed for this one
	[ -n "$SB_WATCHDOG_ARMED" ] && sb_watchdog_disarm "$SB_WATCHDOG_ARMED"
	SB_WATCHDOG_ARMED=
	sb_err "kexec into $rel failed"
	SB_FAIL_WHY="kexec into kernel $rel failed" SB_FAIL_ENV=1
	return 1
}

# sb_kexec_stores_quiesce: every store read-only (what was written is on the disk).
sb_kexec_stores_quiesce() {
	local j
	for j in $SB_STORE_ORDER; do
		sb_store_ro "$(sb_store_get "$j" MNT)"
	done
	sync
}
