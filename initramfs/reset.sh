# stackboot boot core: factory reset (docs/PROTOCOL.md "Factory reset").
#
# A request, the store's `reset` file (written by `stackboot factory-reset` or
# `stackboot-node factory-reset`) or `stackboot.reset` on the kernel command line, makes
# the hook wipe the node's writable state before it mounts any stack of that store: every
# disk upper on the store (UPPER=disk) and everything on the data partition (label
# $SB_DATA_LABEL, the one on the store's disk first) but lost+found. The stacks, the
# state and the events stay; PERSIST paths are seeded again from the stack that boots.
# The request file goes only once all of it is done, so a power cut in the middle of a
# reset redoes it at the next boot.

SB_RESET_MAGIC="stackboot-reset 1"

# sb_reset_request STORE_DIR: 0 when STORE_DIR has a reset request (a `reset` file whose
# first line is the magic) or the command line asked for one (SB_RESET=1); SB_RESET_BY
# says who asked. A `reset` file without the magic is not a request (logged).
sb_reset_request() {
	local f="$1/reset" l1= l2=
	SB_RESET_BY=
	if [ "${SB_RESET-0}" = 1 ]; then
		SB_RESET_BY="stackboot.reset on the kernel command line"
		return 0
	fi
	[ -e "$f" ] || return 1
	{
		IFS= read -r l1
		IFS= read -r l2
	} <"$f"
	if [ "$l1" != "$SB_RESET_MAGIC" ]; then
		sb_warn "$f is not a reset request (no \"$SB_RESET_MAGIC\" line): ignored"
		return 1
	fi
	# "requested <epoch> <who>"
	case "$l2" in
	"requested "*) SB_RESET_BY=$(sb_oneline "${l2#requested }") ;;
	*) SB_RESET_BY="a request without a date" ;;
	esac
	return 0
}

# sb_reset_empty DIR: empty DIR but lost+found: every entry is renamed into DIR/.sb-reset
# (one rename each, on the same filesystem), then that folder is deleted whole.
# SB_RESET_N = the entries removed.
sb_reset_empty() {
	local d="$1" trash="$1/.sb-reset" e
	SB_RESET_N=0
	# what an interrupted reset left
	rm -rf "$trash" 2>/dev/null
	mkdir -p "$trash" || return 1
	for e in "$d"/* "$d"/.[!.]* "$d"/..?*; do
		[ -e "$e" ] || [ -L "$e" ] || continue
		case "${e##*/}" in lost+found | .sb-reset) continue ;; esac
		mv -f "$e" "$trash/" || {
			sb_err "factory reset: cannot move $e away"
			return 1
		}
		SB_RESET_N=$((SB_RESET_N + 1))
	done
	sb_sys_fsync "$d"
	rm -rf "$trash" || return 1
	sb_sys_fsync "$d"
	return 0
}

# sb_reset I: carry out a reset request for store I (see the top of this file). 0 when
# there was none or it is done; 1 when it could not be finished (the request stays, the
# boot goes on).
sb_reset() {
	local i="$1" store part mnt="$SB_RUN/sb/reset" data
	store=$(sb_store_get "$i" MNT)
	sb_reset_request "$store" || return 0
	sb_log "factory reset ($SB_RESET_BY): wiping the disk uppers and the data partition"
	sb_store_rw "$store" || return 1
	# what a reset cut in the middle of its upper wipe left (sb_wipe_dir's renamed tree)
	rm -rf "$store"/.wipe-upper-* 2>/dev/null
	if [ -d "$store/upper" ] && ! sb_wipe_dir "$store/upper"; then
		sb_err "factory reset: cannot wipe $store/upper; the request stays for the next boot"
		return 1
	fi
	part=$(sb_data_part "$i")
	if [ -z "$part" ]; then
		data="no data partition (label $SB_DATA_LABEL)"
	else
		mkdir -p "$mnt"
		if ! sb_sys_mount -t ext4 -o rw "$SB_DEV/$part" "$mnt"; then
			sb_err "factory reset: cannot mount the data partition $SB_DEV/$part; the request stays for the next boot"
			sb_event "$store" reset - "" "" "factory reset ($SB_RESET_BY) not finished: cannot mount the data partition $SB_DEV/$part; again at the next boot"
			return 1
		fi
		if ! sb_reset_empty "$mnt"; then
			sb_sys_umount "$mnt"
			sb_event "$store" reset - "" "" "factory reset ($SB_RESET_BY) not finished: cannot empty the data partition $SB_DEV/$part; again at the next boot"
			return 1
		fi
		sb_sys_umount "$mnt"
		data="the data partition $SB_DEV/$part emptied ($SB_RESET_N entries)"
	fi
	sb_log "factory reset done: disk uppers wiped, $data"
	# the event before the request goes: a power cut between them redoes a reset that
	# finds nothing left to wipe (two events), never leaves one without its event
	sb_event "$store" reset - "" "" "factory reset ($SB_RESET_BY): disk uppers wiped, $data"
	if [ -e "$store/reset" ]; then
		rm -f "$store/reset"
		sb_sys_fsync "$store"
	fi
	# once a boot: the command line's request is not carried out again on another store
	SB_RESET=0
	return 0
}
