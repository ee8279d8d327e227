# stackboot boot core: logging.
# Messages go to the kernel log ($SB_KMSG, default /dev/kmsg, as "<N>stackboot: msg")
# when it is writable, and to stderr (the console in the initramfs). A missing
# /dev/kmsg is tolerated.

: "${SB_KMSG=/dev/kmsg}"
: "${SB_DEBUG=0}"
: "${SB_LOG_PREFIX=stackboot}"
# SB_LOG_STDERR=0 keeps info messages off stderr (the node tool uses it for
# machine-readable commands); warnings and errors always go to stderr.
: "${SB_LOG_STDERR=1}"

# sb__log LEVEL MSG...: the writer behind every log function.
sb__log() {
	local lvl="$1"
	shift
	if [ -n "$SB_KMSG" ] && [ -e "$SB_KMSG" ] && [ -w "$SB_KMSG" ]; then
		printf '<%s>%s: %s\n' "$lvl" "$SB_LOG_PREFIX" "$*" 2>/dev/null >>"$SB_KMSG"
	fi
	if [ "$lvl" -le 4 ] || [ "$SB_LOG_STDERR" = 1 ]; then
		printf '%s: %s\n' "$SB_LOG_PREFIX" "$*" >&2
	fi
	return 0
}

sb_log() { sb__log 6 "$@"; }
sb_warn() { sb__log 4 "warning: $*"; }
sb_err() { sb__log 3 "error: $*"; }
# sb_debug MSG: only with stackboot.debug on the kernel command line (SB_DEBUG=1).
sb_debug() {
	[ "$SB_DEBUG" = 1 ] || return 0
	sb__log 7 "debug: $*"
}
