# stackboot boot core: small pure helpers.

# sb_is_uint S: true when S is a non-negative decimal integer.
sb_is_uint() {
	case "$1" in '' | *[!0-9]*) return 1 ;; esac
	return 0
}

# sb_uint_norm S: prints the non-negative decimal S without leading zeros (shell
# arithmetic reads 010 as octal, and 08 is a fatal error there: the whole script stops).
# Fails when S is not a number or has more than MAX digits (default 9; at most 18 fit
# shell arithmetic, which is 64-bit).
sb_uint_norm() {
	sb_uint_set "$@" || return 1
	printf '%s' "$SB_UINT"
}

# sb_uint_set S [MAX]: as sb_uint_norm, into SB_UINT: no $(...) subshell, which is a fork
# (milliseconds each under TCG, on paths that run for every layer at every boot).
sb_uint_set() {
	local s="$1"
	SB_UINT=
	sb_is_uint "$s" || return 1
	while :; do case "$s" in 0?*) s=${s#0} ;; *) break ;; esac; done
	[ ${#s} -le "${2:-9}" ] || return 1
	SB_UINT=$s
}

# sb_is_hex64 S: true when S is 64 lowercase hex chars (a sha256).
sb_is_hex64() {
	case "$1" in *[!0-9a-f]*) return 1 ;; esac
	[ ${#1} -eq 64 ]
}

# sb_is_slot S: true for a or b.
sb_is_slot() { case "$1" in a | b) return 0 ;; esac; return 1; }

# sb_other_slot SLOT: prints the other slot.
sb_other_slot() { if [ "$1" = a ]; then echo b; else echo a; fi; }

# sb_trim S: prints S without leading and trailing blanks.
sb_trim() {
	local s="$1"
	while :; do case "$s" in ' '* | '	'*) s=${s#?} ;; *) break ;; esac; done
	while :; do case "$s" in *' ' | *'	') s=${s%?} ;; *) break ;; esac; done
	printf '%s' "$s"
}

# sb_oneline S: S with control characters (newlines, tabs) turned into spaces.
sb_oneline() { printf '%s' "$1" | tr '\000-\037' ' '; }

# sb_sha256 FILE: prints the lowercase sha256 of FILE (fails when unreadable).
sb_sha256() {
	local h rest
	[ -r "$1" ] || return 1
	h=$(sha256sum "$1" 2>/dev/null) || return 1
	h=${h%% *}
	sb_is_hex64 "$h" || return 1
	printf '%s\n' "$h"
}

# sb_file_size FILE: prints the size in bytes: stat (busybox's too) reads the inode, where
# `wc -c` reads the whole file (a 100 MB layer took seconds under TCG, at every boot).
sb_file_size() {
	local n
	[ -f "$1" ] || return 1
	n=$(stat -L -c %s "$1" 2>/dev/null) || n=$(wc -c <"$1" 2>/dev/null) || return 1
	n=$(sb_trim "$n")
	sb_is_uint "$n" || return 1
	printf '%s\n' "$n"
}

# sb_noglob / sb_restore_glob: word splitting without pathname expansion.
sb_noglob() {
	case $- in *f*) SB__GLOBOFF=1 ;; *) SB__GLOBOFF=0 ;; esac
	set -f
}
sb_restore_glob() { [ "${SB__GLOBOFF:-0}" = 1 ] || set +f; }

# sb_write_durable FILE CMD [ARG...]: replace FILE with what CMD prints, durably: FILE.new
# written and fsynced, renamed over FILE, the directory fsynced (a power cut leaves the old
# FILE or the new one, never a part). 1, with an error logged, when it cannot.
sb_write_durable() {
	local f="$1"
	shift
	if ! "$@" >"$f.new"; then
		sb_err "cannot write $f.new"
		rm -f "$f.new" 2>/dev/null
		return 1
	fi
	sb_sys_fsync "$f.new"
	if ! mv -f "$f.new" "$f"; then
		sb_err "cannot rename $f.new"
		return 1
	fi
	sb_sys_fsync "${f%/*}"
	return 0
}
