# stackboot boot core: the store's boot state file (see docs/PROTOCOL.md "State").
#
# In memory (after sb_state_read): SB_ST_CURRENT (a, b or -), and per slot S in a b:
# SB_ST_S (good|pending|bad, empty when the slot has no line), SB_ST_S_STACK, SB_ST_S_TRIES.

# sb_state_reset: an empty state.
sb_state_reset() {
	SB_ST_CURRENT=-
	SB_ST_a= SB_ST_a_STACK= SB_ST_a_TRIES=
	SB_ST_b= SB_ST_b_STACK= SB_ST_b_TRIES=
}

# sb_state_read STORE_DIR: load STORE_DIR/state. Returns 1 when it is missing or
# has no magic line (the state is then empty). Blank and # lines are skipped anywhere, a
# CR before the newline is ignored, and a malformed line is skipped with a warning (the
# TypeScript reader reads the file the same way: test/protocol/vectors/state).
sb_state_read() {
	local f="$1/state" first=1 a b c d e cr
	cr=$(printf '\r')
	sb_state_reset
	[ -r "$f" ] || {
		sb_debug "no state in $1"
		return 1
	}
	# a last line without a newline still counts
	while read -r a b c d e || [ -n "$a" ]; do
		# a CR before the newline ends the line's last word (or is a word of its own)
		a=${a%"$cr"} b=${b%"$cr"} c=${c%"$cr"} d=${d%"$cr"} e=${e%"$cr"}
		case "$a" in '' | '#'*) continue ;; esac
		if [ "$first" = 1 ]; then
			first=0
			if [ "$a $b" != "stackboot-state 1" ] || [ -n "$c" ]; then
				sb_warn "$f: bad magic, state ignored"
				return 1
			fi
			continue
		fi
		case "$a" in
		current)
			case "$b" in a | b | -) SB_ST_CURRENT=$b ;; *) sb_warn "$f: bad current '$b'" ;; esac ;;
		a | b)
			sb_is_hex64 "$c" || {
				sb_warn "$f: bad stack id for slot $a"
				continue
			}
			case "$b" in
			good | bad) eval "SB_ST_$a=\$b SB_ST_${a}_STACK=\$c SB_ST_${a}_TRIES=" ;;
			pending)
				d=$(sb_uint_norm "$d") || d=0
				eval "SB_ST_$a=\$b SB_ST_${a}_STACK=\$c SB_ST_${a}_TRIES=\$d" ;;
			*) sb_warn "$f: bad status '$b' for slot $a" ;;
			esac ;;
		esac
	done <"$f"
	[ "$first" = 0 ] || return 1
	return 0
}

# sb_state_format: print the in-memory state in the file format.
sb_state_format() {
	local s st
	echo "stackboot-state 1"
	echo "current $SB_ST_CURRENT"
	for s in a b; do
		st=$(sb_slot_status "$s")
		case "$st" in
		good | bad) echo "$s $st $(sb_slot_stack "$s")" ;;
		pending) echo "$s pending $(sb_slot_stack "$s") $(sb_slot_tries "$s")" ;;
		esac
	done
}

# sb_state_write STORE_DIR: atomically replace STORE_DIR/state with the in-memory
# state: write state.new, fsync it, rename it over state, fsync the directory.
sb_state_write() {
	local dir="$1"
	sb_store_rw "$dir" || return 1
	sb_write_durable "$dir/state" sb_state_format || return 1
	sb_debug "state of $dir: current=$SB_ST_CURRENT a=$SB_ST_a${SB_ST_a_TRIES:+/$SB_ST_a_TRIES} b=$SB_ST_b${SB_ST_b_TRIES:+/$SB_ST_b_TRIES}"
	return 0
}

sb_slot_status() { eval "printf '%s' \"\$SB_ST_$1\""; }
sb_slot_stack() { eval "printf '%s' \"\$SB_ST_${1}_STACK\""; }
sb_slot_tries() { eval "printf '%s' \"\$SB_ST_${1}_TRIES\""; }
sb_state_current() { printf '%s' "$SB_ST_CURRENT"; }

# sb_slot_set SLOT STATUS STACK [TRIES] (in memory; SLOT must be a or b).
sb_slot_set() {
	sb_is_slot "$1" || return 1
	eval "SB_ST_$1=\$2 SB_ST_${1}_STACK=\$3 SB_ST_${1}_TRIES=\${4-}"
}

# sb_slot_set_tries SLOT N (in memory).
sb_slot_set_tries() {
	sb_is_slot "$1" || return 1
	eval "SB_ST_${1}_TRIES=\$2"
}

# sb_state_set_current SLOT|- (in memory).
sb_state_set_current() { SB_ST_CURRENT=$1; }

# sb_slot_mark_bad SLOT (in memory): status bad; when it was current, current moves
# to the other slot if that is good, else to -.
sb_slot_mark_bad() {
	local o
	sb_slot_set "$1" bad "$(sb_slot_stack "$1")"
	if [ "$SB_ST_CURRENT" = "$1" ]; then
		o=$(sb_other_slot "$1")
		if [ "$(sb_slot_status "$o")" = good ]; then SB_ST_CURRENT=$o; else SB_ST_CURRENT=-; fi
	fi
}

# sb_slot_mark_good SLOT (in memory): status good, no tries, current=SLOT.
sb_slot_mark_good() {
	sb_slot_set "$1" good "$(sb_slot_stack "$1")"
	SB_ST_CURRENT=$1
}

# sb_slot_matches STORE_DIR SLOT: true when the slot has a state line and its manifest
# still hashes to the recorded stack id. Sets SB_MATCH_WHY when it does not.
sb_slot_matches() {
	local want got
	SB_MATCH_WHY=
	want=$(sb_slot_stack "$2")
	[ -n "$want" ] || {
		SB_MATCH_WHY="slot $2 is empty"
		return 1
	}
	got=$(sb_stack_id "$1/slots/$2/manifest") || {
		SB_MATCH_WHY="slot $2 has no readable manifest"
		return 1
	}
	[ "$got" = "$want" ] || {
		SB_MATCH_WHY="slot $2 manifest is ${got%${got#????????????}}, state says ${want%${want#????????????}}"
		return 1
	}
	return 0
}
