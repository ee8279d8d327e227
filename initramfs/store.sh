# stackboot boot core: finding and mounting stores (docs/PROTOCOL.md "Store").
#
# After sb_stores_find: SB_STORE_COUNT, and for i in 0..count-1:
#   SB_STORE_<i>_DEV   /dev/vda2        SB_STORE_<i>_NAME  vda2
#   SB_STORE_<i>_DISK  vda              SB_STORE_<i>_MNT   $SB_RUN/sb/s<i>
#   SB_STORE_<i>_ID    store-id         SB_STORE_<i>_RW    0|1 (mounted read-write)
# in the configured order (a stackboot.store= match first).
# SB_DATA_CANDIDATES: "disk:partition" words of partitions labelled $SB_DATA_LABEL.

: "${SB_MNT_ROOT:=}"

sb_store_get() { eval "printf '%s' \"\$SB_STORE_${1}_$2\""; }

# sb__disk_parts DISK: print the partitions of DISK (names), or DISK itself when
# it has no partitions (a filesystem on the whole disk).
sb__disk_parts() {
	local d="$1" p found=0
	set +f
	for p in "$SB_SYS_BLOCK/$d/$d"*; do
		[ -f "$p/partition" ] || continue
		printf '%s\n' "${p##*/}"
		found=1
	done
	[ "$found" = 1 ] || printf '%s\n' "$d"
}

# sb__is_label NAME LABEL: true when the partition NAME carries LABEL as its
# filesystem label or GPT partition name.
sb__is_label() {
	local l
	[ -e "$SB_DEV/$1" ] || return 1
	l=$(sb_sys_fslabel "$SB_DEV/$1" 2>/dev/null)
	[ "$l" = "$2" ] && return 0
	l=$(sb_sys_partname "$1")
	[ -n "$l" ] && [ "$l" = "$2" ]
}

# sb_store_scan: one pass over the configured disks. Sets SB_SCAN_STORES
# ("disk:part" words in order), SB_DATA_CANDIDATES, SB_SCAN_MISSING (patterns
# with no disk yet, or with a partition whose /dev node is not there yet).
sb_store_scan() {
	local pat d p seen
	SB_SCAN_STORES= SB_DATA_CANDIDATES= SB_SCAN_MISSING= seen=' '
	sb_noglob
	for pat in $SB_STORES; do
		set +f
		set -- "$SB_SYS_BLOCK"/$pat
		set -f
		[ -e "$1" ] || {
			SB_SCAN_MISSING="$SB_SCAN_MISSING $pat"
			continue
		}
		for d in "$@"; do
			[ -e "$d" ] || continue
			d=${d##*/}
			[ -f "$SB_SYS_BLOCK/$d/partition" ] && continue
			case "$seen" in *" $d "*) continue ;; esac
			seen="$seen$d "
			for p in $(sb__disk_parts "$d"); do
				# in sysfs, but devtmpfs has not made its node yet: wait for it
				if [ ! -e "$SB_DEV/$p" ]; then
					case " $SB_SCAN_MISSING " in *" $pat "*) ;; *) SB_SCAN_MISSING="$SB_SCAN_MISSING $pat" ;; esac
				elif sb__is_label "$p" "$SB_STORE_LABEL"; then
					SB_SCAN_STORES="$SB_SCAN_STORES $d:$p"
				elif sb__is_label "$p" "$SB_DATA_LABEL"; then
					SB_DATA_CANDIDATES="$SB_DATA_CANDIDATES $d:$p"
				fi
			done
		done
	done
	sb_restore_glob
	return 0
}

# sb_store_wait: scan until every configured disk is there and a store was found, or a
# store was found and SB_DEVICE_SETTLE passed, or SB_DEVICE_TIMEOUT passed. Logs what it
# waits for. (Every disk there but no store yet: a disk whose partitions the kernel is
# still reading shows no partition for a moment; keep looking.)
sb_store_wait() {
	local ticks=0 per=4 tick=0.25 max settle logged=0
	# fractional sleep (busybox FANCY_SLEEP, coreutils)? else whole seconds
	if ! sleep 0.0 2>/dev/null; then per=1 tick=1; fi
	max=$((SB_DEVICE_TIMEOUT * per))
	settle=$((SB_DEVICE_SETTLE * per))
	while :; do
		sb_store_scan
		[ -z "$SB_SCAN_MISSING" ] && [ -n "$SB_SCAN_STORES" ] && break
		if [ -n "$SB_SCAN_STORES" ] && [ "$ticks" -ge "$settle" ]; then
			sb_log "stores found; not waiting longer for:$SB_SCAN_MISSING"
			break
		fi
		if [ "$ticks" -ge "$max" ]; then
			sb_warn "gave up after ${SB_DEVICE_TIMEOUT}s waiting for:${SB_SCAN_MISSING:- a store (label $SB_STORE_LABEL)}"
			break
		fi
		if [ "$logged" = 0 ]; then
			sb_log "waiting up to ${SB_DEVICE_TIMEOUT}s for disks:${SB_SCAN_MISSING:- a store (label $SB_STORE_LABEL)}"
			logged=1
		fi
		sb_sys_sleep "$tick"
		ticks=$((ticks + 1))
	done
	sb_debug "stores:$SB_SCAN_STORES data:$SB_DATA_CANDIDATES"
	return 0
}

# sb__store_forced DISK PART ID: true when stackboot.store= names this store.
sb__store_forced() {
	[ -n "$SB_FORCE_STORE" ] || return 1
	case "$SB_FORCE_STORE" in "$3" | "$2" | "$SB_DEV/$2" | /dev/"$2") return 0 ;; esac
	return 1
}

# sb_stores_find: wait for the disks, mount every store read-only, read its store-id,
# order them (forced store first) and warn about duplicate store-ids.
# Returns 1 when no store was found.
sb_stores_find() {
	local w d p i=0 n mnt id j k forced= rest=
	SB_STORE_COUNT=0
	sb_store_wait
	mkdir -p "$SB_RUN/sb"
	for w in $SB_SCAN_STORES; do
		d=${w%%:*} p=${w#*:}
		mnt="$SB_RUN/sb/s$i"
		mkdir -p "$mnt"
		if ! sb_sys_mount -t ext4 -o ro "$SB_DEV/$p" "$mnt"; then
			sb_warn "cannot mount store $SB_DEV/$p"
			continue
		fi
		id=
		[ -r "$mnt/store-id" ] && read -r id <"$mnt/store-id"
		case "$id" in *[!0-9a-f]*) id= ;; esac
		if [ ${#id} -ne 32 ]; then
			sb_warn "$SB_DEV/$p is labelled $SB_STORE_LABEL but has no valid store-id, skipped"
			sb_sys_umount "$mnt"
			continue
		fi
		eval "SB_STORE_${i}_DEV=\$SB_DEV/\$p SB_STORE_${i}_NAME=\$p SB_STORE_${i}_DISK=\$d SB_STORE_${i}_MNT=\$mnt SB_STORE_${i}_ID=\$id SB_STORE_${i}_RW=0"
		sb_log "store $id on $SB_DEV/$p"
		if sb__store_forced "$d" "$p" "$id"; then forced="$forced $i"; else rest="$rest $i"; fi
		i=$((i + 1))
	done
	SB_STORE_COUNT=$i
	[ -n "$SB_FORCE_STORE" ] && [ -z "$forced" ] && sb_warn "stackboot.store=$SB_FORCE_STORE matches no store, using all"
	[ -n "$forced" ] && [ -n "$SB_FORCE_STORE" ] && sb_log "stackboot.store=$SB_FORCE_STORE: trying that store first"
	SB_STORE_ORDER=$(echo $forced $rest)
	# duplicate store-ids (a cloned medium): both are still tried, by device
	j=0
	while [ "$j" -lt "$i" ]; do
		k=$((j + 1))
		while [ "$k" -lt "$i" ]; do
			if [ "$(sb_store_get $j ID)" = "$(sb_store_get $k ID)" ]; then
				sb_warn "store-id $(sb_store_get $j ID) is on both $(sb_store_get $j DEV) and $(sb_store_get $k DEV) (a cloned medium?); telling them apart by device"
			fi
			k=$((k + 1))
		done
		j=$((j + 1))
	done
	if [ "$i" = 0 ]; then
		sb_err "no store (label $SB_STORE_LABEL) found on:$(printf ' %s' $SB_STORES)"
		return 1
	fi
	return 0
}

# sb__store_index MNT: prints the index of the tracked store mounted at MNT.
sb__store_index() {
	local i=0
	while [ "$i" -lt "${SB_STORE_COUNT:-0}" ]; do
		[ "$(sb_store_get $i MNT)" = "$1" ] && {
			echo "$i"
			return 0
		}
		i=$((i + 1))
	done
	return 1
}

# sb_store_rw MNT: remount a tracked store read-write (once). Untracked dirs: no-op.
sb_store_rw() {
	local i
	i=$(sb__store_index "$1") || return 0
	[ "$(sb_store_get "$i" RW)" = 1 ] && return 0
	if sb_sys_mount -o remount,rw "$1"; then
		eval "SB_STORE_${i}_RW=1"
		sb_debug "store $1 read-write"
		return 0
	fi
	sb_err "cannot remount $1 read-write"
	return 1
}

# sb_store_ro MNT: flush and remount a tracked store read-only.
sb_store_ro() {
	local i
	i=$(sb__store_index "$1") || return 0
	[ "$(sb_store_get "$i" RW)" = 1 ] || return 0
	sync
	if sb_sys_mount -o remount,ro "$1"; then
		eval "SB_STORE_${i}_RW=0"
		sb_debug "store $1 read-only"
		return 0
	fi
	sb_warn "cannot remount $1 read-only"
	return 1
}
