# stackboot boot core: wiping uppers. A directory is wiped by renaming it away
# (atomic: a power cut never leaves a half-emptied upper in use), recreating it, then
# deleting the renamed tree whole. Never `rm -rf dir/*`, which misses dot-files.

# sb_wipe_dir DIR: recreate DIR empty.
sb_wipe_dir() {
	local d="$1" parent tmp
	parent=${d%/*}
	tmp="$parent/.wipe-${d##*/}-$$"
	if [ -e "$d" ]; then
		rm -rf "$tmp" 2>/dev/null
		mv "$d" "$tmp" || {
			sb_err "cannot move $d away"
			return 1
		}
	fi
	mkdir -p "$d" || return 1
	sb_sys_fsync "$parent"
	rm -rf "$tmp"
	return 0
}

# sb_wipe_upper STORE_DIR STACK [SLOT]: wipe the disk upper of STACK when there is one
# (recreating upper/<stack>/data and work) and append a `wipe` event.
sb_wipe_upper() {
	local store="$1" stack="$2" slot="${3:--}" up
	up="$store/upper/$stack"
	[ -d "$up" ] || return 0
	sb_store_rw "$store" || return 1
	sb_wipe_dir "$up" || return 1
	mkdir -p "$up/data" "$up/work"
	sb_log "wiped upper of $(sb_short "$stack")"
	sb_event "$store" wipe "$slot" "$stack" "" "upper wiped"
	return 0
}

# sb_wipe_stale STORE_DIR [BOOTED_STACK]: delete leftovers of interrupted wipes, and
# (UPPER=disk) the uppers of stacks that no slot names any more or whose slot is bad
# (e.g. marked bad by the node's health check while its upper was in use), except the
# upper of BOOTED_STACK.
sb_wipe_stale() {
	local store="$1" d id keep= s
	[ -d "$store/upper" ] || return 0
	for s in a b; do
		[ "$(sb_slot_status "$s")" = bad ] && continue
		keep="$keep $(sb_slot_stack "$s")"
	done
	keep="$keep ${2-} "
	for d in "$store/upper"/.wipe-* "$store/upper"/*; do
		[ -e "$d" ] || continue
		id=${d##*/}
		case "$id" in
		.wipe-*) ;;
		*) case "$keep" in *" $id "*) continue ;; esac ;;
		esac
		sb_store_rw "$store" || return 1
		sb_debug "removing stale upper $id"
		rm -rf "$d"
	done
	return 0
}
