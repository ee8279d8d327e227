# stackboot boot core: mounting a stack (layers, upper, overlay) and the persistent binds.
# Every mount is under $SB_RUN/sb (except the overlay on NEWROOT and the binds inside
# it), so they move with /run into the new root.

# sb_root_has ROOT PATH: true when PATH exists inside ROOT, following symlinks as the
# new root would (an absolute link target is taken inside ROOT).
sb_root_has() {
	local root="$1" p="$2" hops=0 t
	while [ "$hops" -lt 10 ]; do
		[ -e "$root$p" ] && return 0
		[ -L "$root$p" ] || return 1
		t=$(readlink "$root$p") || return 1
		case "$t" in /*) p=$t ;; *) p="${p%/*}/$t" ;; esac
		hops=$((hops + 1))
	done
	return 1
}

# sb_unmount_stack: unmount what sb_mount_stack mounted, in reverse order.
sb_unmount_stack() {
	local m
	for m in $SB_MOUNTED; do
		case "$m" in
		L:*) sb_sys_umount_layer "${m#L:}" || sb_warn "cannot unmount ${m#L:}" ;;
		D:*) sb_sys_verity_close "${m#D:}" ;;
		M:*) sb_sys_umount "${m#M:}" || sb_warn "cannot unmount ${m#M:}" ;;
		esac
	done
	SB_MOUNTED=
}

# sb__pushed KIND:DIR: remember a mount (newest first).
sb__pushed() { SB_MOUNTED="$1 $SB_MOUNTED"; }

# sb_mount_stack STORE_DIR SLOT STACK NEWROOT: check and mount the stack of SLOT on
# NEWROOT. On failure unmounts everything it mounted and sets SB_FAIL_WHY, and SB_FAIL_ENV=1
# when the machine failed, not the stack (no squashfs or overlay in this kernel, no upper).
sb_mount_stack() {
	local store="$1" slot="$2" stack="$3" root="$4" list n=0 h sz name lower= dir up work opts
	SB_MOUNTED= SB_FAIL_WHY= SB_FAIL_ENV=
	list="$SB_RUN/sb/layers-$slot"
	mkdir -p "$SB_RUN/sb"
	# its signature before anything of it is trusted (verity.sh)
	sb_manifest_trusted "$store/slots/$slot/manifest" || return 1
	if ! sb_manifest_layers "$store/slots/$slot/manifest" >"$list"; then
		SB_FAIL_WHY=${SB_MANIFEST_WHY:-bad manifest}
		return 1
	fi
	SB_VERIFY_MANIFEST="$store/slots/$slot/manifest"
	sb_verity_plan "$SB_VERIFY_MANIFEST"
	sb_verify_layers "$store" "$list" || return 1
	if [ "$SB_STACK_VERITY" = 1 ] && ! sb_verity_open_layers "$SB_VERIFY_MANIFEST" "$list" "$slot" "$store"; then
		sb_unmount_stack
		return 1
	fi
	while read -r h sz name; do
		dir="$SB_RUN/sb/l$n"
		mkdir -p "$dir"
		if [ "$SB_STACK_VERITY" = 1 ]; then
			sb_verity_dm_name "$slot" "$n" "$h"
			if ! sb_verity_mount_layer "$h" "$name" "$dir" "$SB_DM"; then
				sb_unmount_stack
				return 1
			fi
			sb__pushed "M:$dir"
		elif sb_sys_mount_layer "$store/layers/$h.sqfs" "$dir"; then
			sb__pushed "L:$dir"
		else
			SB_FAIL_WHY="cannot mount layer $name ($(sb_short "$h"))"
			sb_sys_fs_known squashfs || SB_FAIL_ENV=1 SB_FAIL_WHY="$SB_FAIL_WHY: this kernel has no squashfs"
			[ -e "$SB_DEV/loop-control" ] || [ -e "$SB_DEV/loop0" ] || SB_FAIL_ENV=1 SB_FAIL_WHY="$SB_FAIL_WHY: no loop devices"
			sb_unmount_stack
			return 1
		fi
		if [ -z "$lower" ]; then lower=$dir; else lower="$dir:$lower"; fi
		n=$((n + 1))
	done <"$list"
	if [ "$SB_UPPER" = disk ]; then
		up="$store/upper/$stack"
		sb_store_rw "$store" || {
			SB_FAIL_WHY="store is not writable for the disk upper" SB_FAIL_ENV=1
			sb_unmount_stack
			return 1
		}
		[ "$SB_WIPE" = 1 ] && [ -d "$up" ] && sb_wipe_upper "$store" "$stack" "$slot"
		mkdir -p "$up/data" "$up/work"
		# the workdir must be empty: recreate it
		rm -rf "$up/work" && mkdir -p "$up/work"
		work="$up/work" up="$up/data"
	else
		dir="$SB_RUN/sb/up"
		mkdir -p "$dir"
		if ! sb_sys_mount -t tmpfs -o "size=$SB_UPPER_SIZE,mode=0755" sb-upper "$dir"; then
			SB_FAIL_WHY="cannot mount the tmpfs upper (size=$SB_UPPER_SIZE)" SB_FAIL_ENV=1
			sb_unmount_stack
			return 1
		fi
		sb__pushed "M:$dir"
		mkdir -p "$dir/data" "$dir/work"
		up="$dir/data" work="$dir/work"
	fi
	opts="lowerdir=$lower,upperdir=$up,workdir=$work"
	if [ ${#opts} -ge 4000 ]; then
		SB_FAIL_WHY="overlay options too long (${#opts} bytes)"
		sb_unmount_stack
		return 1
	fi
	mkdir -p "$root" 2>/dev/null
	if ! sb_sys_mount -t overlay -o "$opts" overlay "$root"; then
		SB_FAIL_WHY="cannot mount the overlay"
		sb_sys_fs_known overlay || SB_FAIL_ENV=1 SB_FAIL_WHY="$SB_FAIL_WHY: this kernel has no overlay"
		sb_unmount_stack
		return 1
	fi
	sb__pushed "M:$root"
	if ! sb_root_has "$root" "$SB_INIT"; then
		SB_FAIL_WHY="no $SB_INIT in the stack"
		sb_unmount_stack
		return 1
	fi
	if ! sb_root_has "$root" /etc/os-release; then
		SB_FAIL_WHY="no /etc/os-release in the stack"
		sb_unmount_stack
		return 1
	fi
	sb_debug "overlay $opts on $root"
	return 0
}

# sb_data_part STORE_INDEX: prints the data partition of store STORE_INDEX (label
# $SB_DATA_LABEL; the one on the store's disk first, else the first found), or nothing.
sb_data_part() {
	local disk w pick=
	disk=$(sb_store_get "$1" DISK)
	for w in $SB_DATA_CANDIDATES; do
		[ -z "$pick" ] && pick=${w#*:}
		[ "${w%%:*}" = "$disk" ] && {
			pick=${w#*:}
			break
		}
	done
	printf '%s' "$pick"
}

# sb_data_mount STORE_INDEX: mount the data partition (sb_data_part) at $SB_RUN/sb/data.
# Prints nothing; returns 1 if none.
sb_data_mount() {
	local pick mnt="$SB_RUN/sb/data"
	pick=$(sb_data_part "$1")
	[ -n "$pick" ] || return 1
	mkdir -p "$mnt"
	if sb_sys_mount -t ext4 -o rw "$SB_DEV/$pick" "$mnt"; then
		SB_DATA_DEV="$SB_DEV/$pick"
		sb_log "data partition $SB_DEV/$pick on $mnt"
		return 0
	fi
	sb_warn "cannot mount data partition $SB_DEV/$pick"
	return 1
}

# sb_persist_seed FROM DIR: create DIR on the data partition with a copy of FROM (when
# FROM is a directory). The copy is made in DIR.sb-seed, flushed, then renamed to DIR: a
# power cut or a full partition never leaves DIR half seeded (it is seeded on a later boot).
sb_persist_seed() {
	local from="$1" d="$2" tmp="$2.sb-seed"
	rm -rf "$tmp" 2>/dev/null
	mkdir -p "$tmp" || return 1
	if [ -d "$from" ] && ! cp -a "$from/." "$tmp/"; then
		rm -rf "$tmp"
		return 1
	fi
	sync
	if ! mv "$tmp" "$d"; then
		rm -rf "$tmp"
		return 1
	fi
	sb_sys_fsync "${d%/*}"
	return 0
}

# sb_persist_binds STORE_INDEX NEWROOT: bind each SB_PERSIST path from the data
# partition into NEWROOT. A path new on the data partition is seeded from the stack.
# Failures are logged; the boot goes on.
sb_persist_binds() {
	local root="$2" p rel src mnt="$SB_RUN/sb/data"
	[ -n "$SB_PERSIST" ] || return 0
	if ! sb_data_mount "$1"; then
		sb_warn "no data partition (label $SB_DATA_LABEL): persistent paths not bound:$(printf ' %s' $SB_PERSIST)"
		return 0
	fi
	sb_noglob
	for p in $SB_PERSIST; do
		case "$p" in /*) ;; *) p="/$p" ;; esac
		rel=${p#/}
		while :; do case "$rel" in /*) rel=${rel#/} ;; *) break ;; esac; done
		# never the whole root (PERSIST=/ would bind the data partition over it)
		case "/$p/:$rel" in */../* | */./* | *:)
			sb_warn "persistent path $p refused"
			continue
			;;
		esac
		src="$mnt/$rel"
		if [ ! -d "$src" ] && ! sb_persist_seed "$root$p" "$src"; then
			sb_warn "cannot create $src (seeded from the stack): $p not bound on this boot"
			continue
		fi
		mkdir -p "$root$p" 2>/dev/null
		if sb_sys_mount -o bind "$src" "$root$p"; then
			sb_log "persistent $p bound from the data partition"
		else
			sb_warn "cannot bind $p"
		fi
	done
	sb_restore_glob
	return 0
}
