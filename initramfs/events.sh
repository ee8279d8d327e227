# stackboot boot core: the store's append-only events file (docs/PROTOCOL.md "Events").

# sb_short ID: the first 12 chars of an id (all of a shorter one: the pattern below
# matches nothing then, and it printed an empty string, e.g. "stack=" in an event).
sb_short() {
	[ ${#1} -gt 12 ] || {
		printf '%s' "$1"
		return 0
	}
	printf '%s' "${1%"${1#????????????}"}"
}

# sb_event STORE_DIR EVENT SLOT STACK TRIES REASON...: append one event line and fsync.
# SLOT may be -, STACK may be empty (written as -), TRIES empty when not relevant.
sb_event() {
	local dir="$1" ev="$2" slot="${3:--}" stack="$4" tries="$5" now line
	shift 5
	now=$(sb_sys_now)
	sb_is_uint "$now" || now=0
	[ -n "$stack" ] && stack=$(sb_short "$stack") || stack=-
	line="$now $ev slot=$slot stack=$stack"
	[ -n "$tries" ] && line="$line tries=$tries"
	line="$line reason=$(sb_oneline "$*")"
	sb_store_rw "$dir" || return 1
	# a power cut can leave the last line unfinished: never glue a new event onto it
	if [ -s "$dir/events" ] && [ "$(tail -c 1 "$dir/events" 2>/dev/null | od -An -tx1 | tr -d ' \n')" != 0a ]; then
		line="
$line"
	fi
	if printf '%s\n' "$line" >>"$dir/events" 2>/dev/null; then
		sb_sys_fsync "$dir/events"
	else
		sb_warn "cannot append to $dir/events"
		return 1
	fi
	sb_debug "event: $line"
	return 0
}

# sb_events_valid: filter stdin to well-formed event lines (a power cut can
# truncate the last one).
sb_events_valid() {
	local t ev rest
	while IFS= read -r line; do
		t=${line%% *}
		rest=${line#* }
		ev=${rest%% *}
		sb_is_uint "$t" || continue
		case "$ev" in '' | *[!a-z]*) continue ;; esac
		case "$rest" in *' slot='*' stack='*' reason='*) printf '%s\n' "$line" ;; esac
	done
}
