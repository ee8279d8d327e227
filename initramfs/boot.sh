# stackboot boot core: choosing and booting a candidate (docs/PROTOCOL.md "Boot protocol").

# sb_booted_file: path of the booted record.
sb_booted_file() { printf '%s' "$SB_RUN/stackboot/booted"; }

# sb_booted_write I SLOT: write $SB_RUN/stackboot/booted for store I, SLOT.
sb_booted_write() {
	local i="$1" slot="$2" f
	f=$(sb_booted_file)
	mkdir -p "${f%/*}"
	# the boot config this initramfs was built with, for `stackboot doctor`
	cp -f "${SB_CONF:-/etc/stackboot/boot.conf}" "${f%/*}/boot.conf" 2>/dev/null
	{
		echo "store_dev=$(sb_store_get "$i" DEV)"
		echo "store_id=$(sb_store_get "$i" ID)"
		echo "store_mnt=$(sb_store_get "$i" MNT)"
		echo "slot=$slot"
		echo "stack=$(sb_slot_stack "$slot")"
		echo "status=$(sb_slot_status "$slot")"
		echo "tries=$(sb_slot_tries "$slot")"
		echo "fallback=$(sb_oneline "$SB_FALLBACK")"
		echo "upper=$SB_UPPER"
		echo "data_dev=${SB_DATA_DEV-}"
		echo "watchdog=${SB_WATCHDOG_ARMED-}"
	} >"$f.new" && mv -f "$f.new" "$f"
}

# sb_candidate_failed STORE_DIR SLOT WHY: mark the slot bad (current moves), persist,
# wipe its upper, append `fail`, remember the fallback reason. With SB_FAIL_ENV=1 (the
# machine failed, not the stack) only the `fail` event: the slot stays as it was.
sb_candidate_failed() {
	local store="$1" slot="$2" why="$3" stack
	stack=$(sb_slot_stack "$slot")
	sb_warn "slot $slot ($(sb_short "$stack")) failed: $why"
	SB_FALLBACK="slot $slot $(sb_short "$stack"): $why"
	if [ -n "${SB_FAIL_ENV-}" ]; then
		sb_warn "not the stack's fault: slot $slot is not marked bad"
		sb_event "$store" fail "$slot" "$stack" "" "$why (not marked bad)"
		return 0
	fi
	if [ "$(sb_slot_status "$slot")" != bad ]; then
		sb_slot_mark_bad "$slot"
		sb_state_write "$store"
	fi
	sb_wipe_upper "$store" "$stack" "$slot"
	sb_event "$store" fail "$slot" "$stack" "" "$why"
}

# sb_try_slot I SLOT NEWROOT: check and mount SLOT of store I. 0 when booted.
sb_try_slot() {
	local i="$1" slot="$2" root="$3" store
	store=$(sb_store_get "$i" MNT)
	case " $SB_TRIED " in *" $i:$slot "*) return 1 ;; esac
	SB_TRIED="$SB_TRIED $i:$slot"
	sb_log "trying slot $slot ($(sb_slot_status "$slot") $(sb_short "$(sb_slot_stack "$slot")")) of $(sb_store_get "$i" DEV)"
	# mounted, then its own kernel when it has one (sb_kexec_step jumps, or fails)
	if sb_mount_stack "$store" "$slot" "$(sb_slot_stack "$slot")" "$root" &&
		sb_kexec_step "$i" "$slot" "$root"; then
		return 0
	fi
	sb_candidate_failed "$store" "$slot" "$SB_FAIL_WHY"
	return 1
}

# sb_try_pending I SLOT NEWROOT: a pending slot: decrement and persist its tries, then
# try it; or, with 0 tries left, mark it bad (`exhausted`).
sb_try_pending() {
	local i="$1" slot="$2" root="$3" store tries stack
	store=$(sb_store_get "$i" MNT)
	stack=$(sb_slot_stack "$slot")
	tries=$(sb_slot_tries "$slot")
	sb_is_uint "$tries" || tries=0
	if [ "$tries" -le 0 ]; then
		sb_warn "slot $slot ($(sb_short "$stack")) ran out of tries: bad"
		sb_slot_mark_bad "$slot"
		sb_state_write "$store"
		# like any failed candidate: its (disk) upper must not outlive it
		sb_wipe_upper "$store" "$stack" "$slot"
		sb_event "$store" exhausted "$slot" "$stack" 0 "no tries left${SB_WATCHDOG_NOTE-}"
		SB_FALLBACK="slot $slot $(sb_short "$stack"): no tries left"
		return 1
	fi
	tries=$((tries - 1))
	sb_slot_set_tries "$slot" "$tries"
	if ! sb_state_write "$store"; then
		sb_err "cannot persist the try of slot $slot; not trying it"
		return 1
	fi
	sb_event "$store" try "$slot" "$stack" "$tries" "pending, $tries tries left after this one${SB_WATCHDOG_NOTE-}"
	sb_try_slot "$i" "$slot" "$root"
}

# sb_boot_store I NEWROOT: the candidate loop for one store. Sets SB_BOOT_SLOT.
sb_boot_store() {
	local i="$1" root="$2" store s st c list
	store=$(sb_store_get "$i" MNT)
	if ! sb_state_read "$store"; then
		sb_warn "store $(sb_store_get "$i" DEV): no usable state, nothing to boot there"
		return 1
	fi
	sb_debug "state: current=$SB_ST_CURRENT a=$SB_ST_a/$SB_ST_a_TRIES b=$SB_ST_b/$SB_ST_b_TRIES"
	# a factory reset asked for this store: before anything of it is mounted
	sb_reset "$i"
	# the kexec'ed second stage: the slot the first stage chose, its try already counted
	if sb_kexec_spec_parse && sb_kexec_second_stage "$i" "$SB_KX_SLOT"; then
		s=$SB_KX_SLOT
		case "$(sb_slot_status "$s")" in
		pending | good)
			sb_log "second stage of slot $s (kexec): not counting another try"
			sb_try_slot "$i" "$s" "$root" && { SB_BOOT_SLOT=$s; return 0; }
			;;
		*) sb_warn "stackboot.kexec: slot $s is $(sb_slot_status "$s") now; the protocol chooses" ;;
		esac
	fi
	# stackboot.slot= first
	if [ -n "$SB_FORCE_SLOT" ]; then
		s=$SB_FORCE_SLOT
		st=$(sb_slot_status "$s")
		if [ -z "$st" ]; then
			sb_warn "stackboot.slot=$s: slot is empty on this store"
		elif ! sb_slot_matches "$store" "$s"; then
			sb_warn "stackboot.slot=$s: $SB_MATCH_WHY, ignored"
		else
			sb_log "stackboot.slot=$s: trying it first ($st)"
			if [ "$st" = pending ]; then
				sb_try_pending "$i" "$s" "$root" && { SB_BOOT_SLOT=$s; return 0; }
			else
				sb_try_slot "$i" "$s" "$root" && { SB_BOOT_SLOT=$s; return 0; }
			fi
		fi
	fi
	# 1. pending with tries
	for s in a b; do
		[ "$(sb_slot_status "$s")" = pending ] || continue
		if ! sb_slot_matches "$store" "$s"; then
			sb_warn "pending slot $s ignored: $SB_MATCH_WHY"
			continue
		fi
		sb_try_pending "$i" "$s" "$root" && { SB_BOOT_SLOT=$s; return 0; }
	done
	# 2. current good, then the other good
	c=$SB_ST_CURRENT
	case "$c" in a | b) list="$c $(sb_other_slot "$c")" ;; *) list="a b" ;; esac
	for s in $list; do
		[ "$(sb_slot_status "$s")" = good ] || continue
		if ! sb_slot_matches "$store" "$s"; then
			sb_warn "good slot $s ignored: $SB_MATCH_WHY"
			continue
		fi
		sb_try_slot "$i" "$s" "$root" && { SB_BOOT_SLOT=$s; return 0; }
	done
	sb_warn "no bootable slot left on $(sb_store_get "$i" DEV)"
	return 1
}

# sb_boot_finish I SLOT NEWROOT: binds, booted record, `boot` event, stores read-only.
sb_boot_finish() {
	local i="$1" slot="$2" root="$3" store j stack
	store=$(sb_store_get "$i" MNT)
	stack=$(sb_slot_stack "$slot")
	sb_persist_binds "$i" "$root"
	[ "$SB_UPPER" = disk ] && sb_wipe_stale "$store" "$stack"
	sb_event "$store" boot "$slot" "$stack" "$(sb_slot_tries "$slot")" \
		"$(sb_slot_status "$slot") on $(sb_store_get "$i" DEV)${SB_FALLBACK:+ after fallback: $SB_FALLBACK}"
	# a pending stack: the board resets it if it hangs before mark-good (WATCHDOG=)
	sb_watchdog_arm "$slot"
	sb_booted_write "$i" "$slot"
	sb_stores_record "$i"
	# other stores: unmount (flushing what we wrote there)
	for j in $SB_STORE_ORDER; do
		[ "$j" = "$i" ] && continue
		sb_store_ro "$(sb_store_get "$j" MNT)"
		sb_sys_umount "$(sb_store_get "$j" MNT)" || sb_warn "cannot unmount $(sb_store_get "$j" MNT)"
	done
	if [ "$SB_UPPER" != disk ]; then
		sb_store_ro "$store"
	fi
	sb_log "booting slot $slot ($(sb_short "$stack"), $(sb_slot_status "$slot")) from $(sb_store_get "$i" DEV)"
	return 0
}

# sb_stores_record BOOTED: $SB_RUN/stackboot/stores, one line per store found at boot
# (in boot order), so status can name the fallback stores after they are unmounted:
#   dev=/dev/mmcblk0p2 id=<store-id> booted=0 current=a a=good:<id12> b=-:-
sb_stores_record() {
	local f j mnt
	f="$SB_RUN/stackboot/stores"
	mkdir -p "$SB_RUN/stackboot" 2>/dev/null
	: >"$f.new" || return 1
	for j in $SB_STORE_ORDER; do
		mnt=$(sb_store_get "$j" MNT)
		(
			sb_state_read "$mnt" >/dev/null 2>&1
			ida=- idb=-
			[ -n "$SB_ST_a_STACK" ] && ida=$(sb_short "$SB_ST_a_STACK")
			[ -n "$SB_ST_b_STACK" ] && idb=$(sb_short "$SB_ST_b_STACK")
			printf 'dev=%s id=%s booted=%s current=%s a=%s:%s b=%s:%s\n' "$(sb_store_get "$j" DEV)" "$(sb_store_get "$j" ID)" \
				"$([ "$j" = "$1" ] && echo 1 || echo 0)" "$SB_ST_CURRENT" "${SB_ST_a:--}" "$ida" "${SB_ST_b:--}" "$idb"
		) >>"$f.new"
	done
	mv -f "$f.new" "$f"
}

# sb_boot NEWROOT: find the stores, choose a candidate per the protocol, mount it on
# NEWROOT. 0 when NEWROOT holds the overlay root (already so on a second call), non-zero
# when every candidate failed (the stores stay mounted for sb_all_failed).
sb_boot() {
	local root="$1" i fs
	[ -n "$root" ] || {
		sb_err "sb_boot: no new root given"
		return 2
	}
	[ -n "${SB_STORE_LABEL-}" ] || sb_config_defaults
	fs=$(sb_sys_mounted "$root") && [ "$fs" = overlay ] && [ -r "$(sb_booted_file)" ] && {
		sb_log "$root is already the stackboot overlay"
		return 0
	}
	SB_FALLBACK= SB_TRIED= SB_BOOT_SLOT= SB_DATA_DEV=
	sb_watchdog_reset_check
	sb_stores_find || return 1
	for i in $SB_STORE_ORDER; do
		if sb_boot_store "$i" "$root"; then
			sb_boot_finish "$i" "$SB_BOOT_SLOT" "$root"
			return 0
		fi
	done
	return 1
}
